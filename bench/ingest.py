"""Event ingestion throughput: the full API path against a bare bulk insert of the same rows.

Usage (any configured database; PostgreSQL is what the goal is about)::

    DEBUG=true python bench/ingest.py [--batches 30] [--batch-size 1000]

* ``api``: ``POST /api/v1/communities/{slug}/events/`` through Django's test client, in process:
  bearer authentication, JSON parsing, strict per-row validation, member and item lookups, the
  duplicate check and the bulk insert, in one transaction per batch. No network or HTTP server.
* ``bare``: ``Interaction.objects.bulk_create`` of the same number of rows with the ids already
  resolved; the floor for any ORM-based ingestion.

Batches alternate between the two so both see the same machine state. Reports events/s (median
over batches) and the ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

import django

django.setup()

from django.conf import settings  # noqa: E402
from django.test import Client  # noqa: E402
from django.utils import timezone  # noqa: E402

from feeds.ingest import creators_upsert, items_upsert, members_upsert  # noqa: E402
from feeds.models import Interaction, Item  # noqa: E402
from feeds.services import app_credential_create  # noqa: E402
from governance.models import Membership  # noqa: E402
from governance.services import community_get_or_create  # noqa: E402

MEMBERS = 5_000
ITEMS = 5_000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=1000)
    args = parser.parse_args()
    settings.ALLOWED_HOSTS = ["testserver"]

    slug = f"bench-ingest-{uuid.uuid4().hex[:6]}"
    community, _ = community_get_or_create(slug=slug)
    members_upsert(community=community, rows=[{"id": f"m{i}"} for i in range(MEMBERS)])
    creators_upsert(community=community, rows=[{"id": "c", "name": "C"}])
    for start in range(0, ITEMS, 1000):
        items_upsert(
            community=community,
            rows=[
                {"id": f"i{i}", "title": f"Item {i}", "creators": ["c"]}
                for i in range(start, start + 1000)
            ],
        )
    member_pks = list(Membership.objects.filter(community=community).values_list("pk", flat=True))
    item_pks = list(Item.objects.filter(community=community).values_list("pk", flat=True))
    _, token = app_credential_create(community=community, name="bench", scopes=["events:write"])
    client = Client()
    url = f"/api/v1/communities/{slug}/events/"

    api_rates: list[float] = []
    bare_rates: list[float] = []
    n = args.batch_size
    counter = 0
    for batch in range(args.batches):
        events = []
        for _ in range(n):
            counter += 1
            events.append(
                {
                    "id": f"api-{counter}",
                    "member": f"m{counter % MEMBERS}",
                    "item": f"i{(counter * 7) % ITEMS}",
                    "kind": "view",
                }
            )
        body = json.dumps({"events": events})
        started = time.perf_counter()
        response = client.post(
            url, data=body, content_type="application/json", HTTP_AUTHORIZATION=f"Bearer {token}"
        )
        elapsed = time.perf_counter() - started
        assert response.status_code == 200, response.content[:500]
        assert response.json()["accepted"] == n
        api_rates.append(n / elapsed)

        now = timezone.now()
        rows = [
            Interaction(
                community=community,
                member_id=member_pks[(batch * n + i) % MEMBERS],
                item_id=item_pks[((batch * n + i) * 7) % ITEMS],
                kind="view",
                weight=1.0,
                occurred_at=now,
                idempotency_key=f"bare-{batch}-{i}",
            )
            for i in range(n)
        ]
        started = time.perf_counter()
        Interaction.objects.bulk_create(rows)
        bare_rates.append(n / (time.perf_counter() - started))

    api, bare = statistics.median(api_rates), statistics.median(bare_rates)
    print(f"database: {settings.DATABASES['default']['ENGINE']}  batches: {args.batches} x {n}")
    print(f"API events/s (median):  {api:,.0f}")
    print(f"bare bulk_create rows/s: {bare:,.0f}")
    print(f"ratio api/bare: {api / bare:.2f}")


if __name__ == "__main__":
    main()
