"""Write a 100,000-entry audit chain for timing ``audit_verify`` (docs/audit.md).

    DEBUG=true DATABASE_URL=postgres://.../scratch python manage.py migrate
    DEBUG=true DATABASE_URL=postgres://.../scratch python -m tests.governance.bench_audit_verify
    time DEBUG=true DATABASE_URL=postgres://.../scratch \
        python manage.py audit_verify --community bench-audit

Use a scratch database: the entries cannot be deleted afterwards (on PostgreSQL the triggers
refuse it). The chain is built with the same hash functions as ``audit_append`` but inserted in
bulk, since one append per transaction would make the setup, not the verification, the slow part.
"""

from __future__ import annotations

import os
import sys
import time
from datetime import timedelta

import django

ENTRIES = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
SLUG = "bench-audit"


def main() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    django.setup()
    from django.db import transaction
    from django.utils import timezone

    from governance import audit_chain
    from governance.models import AuditEntry, Community
    from governance.services import community_create

    if Community.objects.filter(slug=SLUG).exists():
        sys.exit(f"community {SLUG} exists already; use a fresh database")
    started = time.perf_counter()
    with transaction.atomic():
        community = community_create(slug=SLUG, name="Audit benchmark")
        head = AuditEntry.objects.filter(community=community).order_by("-seq").first()
        assert head is not None
        seq, prev, moment = head.seq, head.entry_hash, timezone.now()
        batch: list[AuditEntry] = []
        for n in range(ENTRIES - seq):
            seq += 1
            moment += timedelta(milliseconds=1)
            payload_json = audit_chain.canonical_json(
                {"external_id": f"member-{n}", "role": "member", "user_id": None}
            )
            fields = {
                "community": community.pk,
                "seq": seq,
                "created_at": moment,
                "actor_id": None,
                "actor_label": "bench",
                "action": "membership.created",
                "object_type": "governance.membership",
                "object_id": str(n + 1),
                "payload_json": payload_json,
            }
            entry_hash = audit_chain.entry_hash(prev, audit_chain.entry_body(**fields))
            fields["community"] = community
            fields["actor"] = fields.pop("actor_id")
            batch.append(AuditEntry(**fields, prev_hash=prev, entry_hash=entry_hash))
            prev = entry_hash
            if len(batch) == 5_000:
                AuditEntry.objects.bulk_create(batch)
                batch = []
        AuditEntry.objects.bulk_create(batch)
    print(f"wrote {seq} entries for {SLUG} in {time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    main()
