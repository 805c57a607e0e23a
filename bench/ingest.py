"""Event ingestion throughput: the full API path against bare bulk inserts of the same rows.

Usage (any configured database; PostgreSQL is what the goal is about)::

    DEBUG=true python bench/ingest.py [--batches 30] [--batch-size 1000]

* ``api``: ``POST /api/v1/communities/{slug}/events/`` through Django's test client, in process:
  bearer authentication, JSON parsing, strict validation of the batch, member and item lookups
  and the idempotent insert, in one transaction per batch. No network or HTTP server.
* ``bulk_create``: ``Interaction.objects.bulk_create`` of the same number of rows with the ids
  already resolved; the floor for any ORM-based ingestion.
* ``COPY`` (PostgreSQL only): the same rows through ``COPY ... FROM STDIN`` in a transaction; the
  floor for any ingestion at all (indexes, foreign-key checks at commit, no duplicate handling).

Every timing includes the commit (where PostgreSQL runs the deferred foreign-key checks). Batches
rotate between the three so all see the same machine state. Reports rows/s (median over
batches), the ratios, and the load average (other processes share the CPU). On a busy machine
wall-clock rates mostly measure the wait for a core, so it also reports the CPU each path spends
per 1,000 rows: this process plus, with a local PostgreSQL, the database backend serving it
(from /proc; clock-tick resolution, summed over all batches).
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
from django.db import connection, transaction  # noqa: E402
from django.test import Client  # noqa: E402
from django.utils import timezone  # noqa: E402

from feeds.credentials.services import app_credential_create  # noqa: E402
from feeds.ingest.services import creators_upsert, items_upsert, members_upsert  # noqa: E402
from feeds.models import Interaction, Item  # noqa: E402
from governance.models import Membership  # noqa: E402
from governance.services import community_get_or_create  # noqa: E402

MEMBERS = 5_000
ITEMS = 5_000


class CpuMeter:
    """CPU seconds used by this process and by the database backend of its connection."""

    def __init__(self) -> None:
        self.backend_stat: Path | None = None
        if connection.vendor == "postgresql":
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_backend_pid()")
                stat = Path(f"/proc/{cursor.fetchone()[0]}/stat")
            self.backend_stat = stat if stat.exists() else None  # a remote server: client only
        self.tick = os.sysconf("SC_CLK_TCK")
        self.totals: dict[str, tuple[float, float]] = {}

    def now(self) -> tuple[float, float]:
        backend = 0.0
        if self.backend_stat is not None:
            fields = self.backend_stat.read_text().rsplit(")", 1)[1].split()
            backend = (int(fields[11]) + int(fields[12])) / self.tick  # utime, stime
        return time.process_time(), backend

    def add(self, what: str, since: tuple[float, float]) -> None:
        client, backend = self.totals.get(what, (0.0, 0.0))
        now = self.now()
        self.totals[what] = (client + now[0] - since[0], backend + now[1] - since[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=1000)
    args = parser.parse_args()
    settings.ALLOWED_HOSTS = ["testserver"]
    # DEBUG=true in the environment only supplies a SECRET_KEY; run as production does, without
    # Django's debug cursor (it formats and keeps every statement, 100 kB for a batch insert).
    settings.DEBUG = False

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

    columns = "community_id, member_id, item_id, kind, weight, occurred_at, idempotency_key"
    copy_sql = f"COPY {Interaction._meta.db_table} ({columns}, received_at) FROM STDIN"
    use_copy = connection.vendor == "postgresql"
    api_rates: list[float] = []
    bare_rates: list[float] = []
    copy_rates: list[float] = []
    load_before = os.getloadavg()
    cpu = CpuMeter()
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
        cpu_started, started = cpu.now(), time.perf_counter()
        response = client.post(
            url, data=body, content_type="application/json", HTTP_AUTHORIZATION=f"Bearer {token}"
        )
        elapsed = time.perf_counter() - started
        assert response.status_code == 200, response.content[:500]
        assert response.json()["accepted"] == n
        cpu.add("API", cpu_started)
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
        cpu_started, started = cpu.now(), time.perf_counter()
        Interaction.objects.bulk_create(rows)
        bare_rates.append(n / (time.perf_counter() - started))
        cpu.add("bulk_create", cpu_started)

        if use_copy:
            now = timezone.now()
            cpu_started, started = cpu.now(), time.perf_counter()
            with transaction.atomic(), connection.cursor() as cursor, cursor.copy(copy_sql) as copy:
                for i in range(n):
                    copy.write_row(
                        (
                            community.pk,
                            member_pks[(batch * n + i) % MEMBERS],
                            item_pks[((batch * n + i) * 7) % ITEMS],
                            "view",
                            1.0,
                            now,
                            f"copy-{batch}-{i}",
                            now,
                        )
                    )
            copy_rates.append(n / (time.perf_counter() - started))
            cpu.add("COPY", cpu_started)

    load_after = os.getloadavg()
    api, bare = statistics.median(api_rates), statistics.median(bare_rates)
    print(f"database: {settings.DATABASES['default']['ENGINE']}  batches: {args.batches} x {n}")
    print(f"load average (1 min) before/after: {load_before[0]:.2f} / {load_after[0]:.2f}")
    print(f"API events/s (median):        {api:,.0f}")
    print(f"bare bulk_create rows/s:      {bare:,.0f}   ratio api/bulk_create: {api / bare:.2f}")
    if copy_rates:
        bare_copy = statistics.median(copy_rates)
        ratio = api / bare_copy
        print(f"bare COPY rows/s:             {bare_copy:,.0f}   ratio api/COPY: {ratio:.2f}")

    if cpu.backend_stat is not None and cpu.backend_stat != CpuMeter().backend_stat:
        print("(the database connection changed during the run: backend CPU is incomplete)")
    per = 1000 / (args.batches * n / 1000)
    if cpu.backend_stat is None:
        print(
            "CPU ms per 1,000 rows: this process only (SQLite runs in it; a remote server not seen)"
        )
    print("CPU ms per 1,000 rows:     this process  database backend  total")
    for what, (client, backend) in cpu.totals.items():
        total = client + backend
        print(f"  {what:24s} {client * per:12.1f} {backend * per:17.1f} {total * per:6.1f}")


if __name__ == "__main__":
    main()
