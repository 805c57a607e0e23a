"""Fresh feeds between runs (fold-in): from an event's 2xx to the member's feed GET showing it.

Usage (PostgreSQL + Redis; ml-100k under ../shared/data is imported on first use)::

    DEBUG=true DATABASE_URL=postgres://postgres@127.0.0.1:5432/h_foldin_bench \\
    REDIS_URL=redis://127.0.0.1:6379/7 COMMONFEED_VAR_DIR=/tmp/h_foldin_bench_var \\
    python bench/foldin.py [--seconds 30]

Sets up (once) the MovieLens 100K community and one feed run, then starts a real Celery worker
(``feeds.worker``, solo pool, as in production) and gunicorn (``config.wsgi``) on 127.0.0.1, and
drives them over HTTP in two phases:

* ``single``: one-event batches (``POST .../events/``), each for a random member, at
  ``--single-rate`` batches per second;
* ``batch100``: 100-event batches, one event for each of 100 random members, at
  ``--batch-rate`` batches per second.

Before each POST the script notes each member's stored ``MemberFeed`` row of the served run
and, for the first ``--verify`` members of the batch (all of them for one-event batches), GETs
their feed over HTTP (which also warms the Redis fast path, as a reading member would) and
notes its ETag. After the POST's 2xx it polls every ``--poll`` seconds: the rows of every
outstanding member (one query), and, once a sampled member's row was replaced, that member's
feed GET until its ETag differs. Two latencies per event, from the POST's 2xx:

* ``row_replaced``: the refresh committed (the task drops the member's cached pages right after
  the commit), seen by the poller: queueing, the worker's refresh, the commit;
* ``get_shows_refresh``: a feed GET over HTTP answered with the refreshed feed: the above plus
  the cache invalidation and one database-path GET (the sampled members' GETs go out together).

Reports p50/p95/p99/max per phase (and events never seen refreshed within ``--timeout``), the
worker's time per refresh (its ``fold-in:`` log lines: artifact load, read and rank, write) and
per drain task (Celery's "succeeded in"), and the load average.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import random
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

import django  # noqa: E402

django.setup()

from django.conf import settings  # noqa: E402
from django.core.management import call_command  # noqa: E402
from django.db import connection  # noqa: E402

from feeds.credentials.services import app_credential_create  # noqa: E402
from feeds.models import FeedRun, Item, MemberFeed  # noqa: E402
from feeds.runs.artifacts import artifact_storage  # noqa: E402
from feeds.runs.services import feed_run_execute, feed_run_request  # noqa: E402
from feeds.worker import worker_start, worker_stop  # noqa: E402
from governance.models import Community, Membership  # noqa: E402

ML_100K = ROOT.parent / "shared" / "data" / "ml-100k"
REFRESH_LINE = re.compile(r"fold-in: (\d+) members of \S+ refreshed in run \d+ \((\{.*\})\)")
TASK_LINE = re.compile(r"feeds\.tasks\.refresh_member_feeds\[[^\]]+\] succeeded in ([\d.]+)s")


def setup(slug: str) -> tuple[Community, FeedRun, str]:
    call_command("migrate", verbosity=0)
    if not Community.objects.filter(slug=slug).exists():
        call_command("import_movielens", str(ML_100K), community=slug, no_progress=True)
    community = Community.objects.get(slug=slug)
    run = FeedRun.objects.filter(pointed_by__community=community).first()
    if run is None or not artifact_storage().exists(run.artifact):
        run = feed_run_execute(run_id=feed_run_request(community=community).pk)
    _, token = app_credential_create(
        community=community,
        name=f"bench-foldin-{uuid.uuid4().hex[:8]}",
        scopes=["feeds:read", "events:write"],
    )
    return community, run, token


class Http:
    def __init__(self, base: str, token: str) -> None:
        self.base, self.token = base, token

    def get_etag(self, path: str) -> str:
        request = urllib.request.Request(
            self.base + path, headers={"Authorization": f"Bearer {self.token}"}
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            response.read()
            return str(response.headers["ETag"])

    def post(self, path: str, body: dict[str, object]) -> dict[str, object]:
        request = urllib.request.Request(
            self.base + path,
            data=json.dumps(body).encode(),
            method="POST",
            headers={"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read())  # type: ignore[no-any-return]


class Tracker:
    """Outstanding members: polled until their feed GET shows a new ETag."""

    def __init__(self, http: Http, slug: str, run_id: int, poll: float, timeout: float) -> None:
        self.http, self.slug, self.run_id = http, slug, run_id
        self.poll, self.timeout = poll, timeout
        self.lock = threading.Lock()
        # member pk -> (external id, accepted at, old etag, old row pk)
        self.outstanding: dict[int, tuple[str, float, str, int]] = {}
        self.latencies: list[float] = []
        self.row_latencies: list[float] = []
        self.row_seen: set[int] = set()
        self.lost = 0
        self.pool = ThreadPoolExecutor(8)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)

    def _get(self, value: tuple[str, float, str, int]) -> tuple[str, float]:
        etag = self.http.get_etag(f"/api/v1/communities/{self.slug}/feeds/{value[0]}/")
        return etag, time.monotonic()

    def busy(self) -> set[int]:
        with self.lock:
            return set(self.outstanding)

    def add(self, entries: dict[int, tuple[str, float, str, int]]) -> None:
        with self.lock:
            self.outstanding.update(entries)

    def _loop(self) -> None:
        while not self.stop.is_set() or self.outstanding:
            with self.lock:
                pending = dict(self.outstanding)
            if pending:
                rows = dict(
                    MemberFeed.objects.filter(
                        run_id=self.run_id, member_id__in=list(pending)
                    ).values_list("member_id", "id")
                )
                now = time.monotonic()
                changed = {m: v for m, v in pending.items() if rows.get(m, v[3]) != v[3]}
                for member in changed.keys() - self.row_seen:
                    self.row_seen.add(member)  # the GET may lag the commit by a sweep
                    self.row_latencies.append(now - pending[member][1])
                finished = [m for m, v in changed.items() if not v[2]]  # rows only
                verify = {m: v for m, v in changed.items() if v[2]}
                # The sampled members' GETs go out together, as that many readers would.
                fetched = list(self.pool.map(self._get, verify.values()))
                for (member, value), (etag, arrived) in zip(verify.items(), fetched, strict=True):
                    if etag != value[2]:
                        self.latencies.append(arrived - value[1])
                        finished.append(member)
                for member, value in pending.items():
                    if member not in finished and now - value[1] > self.timeout:
                        self.lost += 1
                        finished.append(member)
                with self.lock:
                    for member in finished:
                        self.outstanding.pop(member, None)
                        self.row_seen.discard(member)
            time.sleep(self.poll)  # autocommit: every query sees the latest commits
        connection.close()


def phase(
    name: str,
    *,
    http: Http,
    tracker: Tracker,
    slug: str,
    members: list[tuple[int, str]],
    items: list[str],
    per_batch: int,
    rate: float,
    seconds: float,
    run_id: int,
    verify: int,
) -> dict[str, object]:
    tracker.latencies, tracker.row_latencies, tracker.lost = [], [], 0
    rng = random.Random(name)
    interval = 1.0 / rate
    started = time.monotonic()
    posted = behind = 0
    next_at = started
    while time.monotonic() - started < seconds:
        time.sleep(max(0.0, next_at - time.monotonic()))
        next_at += interval
        idle = [m for m in members if m[0] not in tracker.busy()]
        if len(idle) < per_batch:  # refreshes are far behind: wait rather than overlap
            behind += 1
            continue
        chosen = rng.sample(idle, per_batch)
        before = {}
        rows = dict(
            MemberFeed.objects.filter(
                run_id=run_id, member_id__in=[m for m, _ in chosen]
            ).values_list("member_id", "id")
        )
        for index, (member, external) in enumerate(chosen):
            etag = ""  # only the row is watched
            if index < verify:
                etag = http.get_etag(f"/api/v1/communities/{slug}/feeds/{external}/")
            before[member] = (external, etag, rows.get(member, 0))
        events = [
            {
                "id": f"bench-{uuid.uuid4().hex}",
                "member": external,
                "item": rng.choice(items),
                "kind": "like",
            }
            for _, external in chosen
        ]
        answer = http.post(f"/api/v1/communities/{slug}/events/", {"events": events})
        accepted = time.monotonic()
        assert answer["accepted"] == per_batch, answer
        posted += per_batch
        tracker.add({m: (e, accepted, etag, row) for m, (e, etag, row) in before.items()})
    deadline = time.monotonic() + tracker.timeout + 5
    while tracker.busy() and time.monotonic() < deadline:
        time.sleep(0.1)
    return {
        "phase": name,
        "events": posted,
        "rows_replaced": len(tracker.row_latencies),
        "gets_verified": len(tracker.latencies),
        "lost": tracker.lost,
        "rate_batches_per_s": rate,
        "batches_skipped_members_busy": behind,
        "get_shows_refresh": percentiles(tracker.latencies),
        "row_replaced": percentiles(tracker.row_latencies),
    }


def percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    values = sorted(values)

    def pct(p: float) -> float:
        return round(values[min(len(values) - 1, int(p * len(values)))] * 1000, 1)

    return {
        "p50_ms": pct(0.50),
        "p95_ms": pct(0.95),
        "p99_ms": pct(0.99),
        "max_ms": round(values[-1] * 1000, 1),
    }


def worker_stats(log: str, since: int) -> dict[str, object]:
    text = log[since:]
    per_refresh = []
    for members, seconds in REFRESH_LINE.findall(text):
        parts = ast.literal_eval(seconds)
        per_refresh.append((int(members), sum(parts.values()), parts))
    tasks = [float(s) for s in TASK_LINE.findall(text)]

    def summary(values: list[float]) -> dict[str, float]:
        if not values:
            return {}
        values = sorted(values)
        return {
            "n": len(values),
            "p50_ms": round(statistics.median(values) * 1000, 1),
            "p95_ms": round(values[min(len(values) - 1, int(0.95 * len(values)))] * 1000, 1),
            "max_ms": round(values[-1] * 1000, 1),
        }

    return {
        "refresh_total": summary([t for _, t, _ in per_refresh]),
        "refresh_read_and_rank": summary([p["read_and_rank"] for _, _, p in per_refresh]),
        "refresh_write": summary([p["write"] for _, _, p in per_refresh]),
        "members_per_refresh": {
            "median": statistics.median([m for m, _, _ in per_refresh]) if per_refresh else 0,
            "max": max([m for m, _, _ in per_refresh], default=0),
        },
        "task": summary(tasks),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--slug", default="ml-100k")
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--single-rate", type=float, default=4.0)
    parser.add_argument("--batch-rate", type=float, default=0.5)
    parser.add_argument("--poll", type=float, default=0.01)
    parser.add_argument("--timeout", type=float, default=30.0)
    parser.add_argument(
        "--verify", type=int, default=10, help="members per batch whose feed GET is polled"
    )
    parser.add_argument("--port", type=int, default=8767)
    parser.add_argument("--gunicorn-workers", type=int, default=2)
    args = parser.parse_args()
    if connection.vendor != "postgresql" or not settings.REDIS_URL:
        sys.exit("needs DATABASE_URL (PostgreSQL) and REDIS_URL")
    if not settings.COMMONFEED_FOLD_IN:
        sys.exit("COMMONFEED_FOLD_IN is off")

    community, run, token = setup(args.slug)
    members = list(Membership.objects.filter(community=community).values_list("id", "external_id"))
    items = list(Item.objects.filter(community=community).values_list("external_id", flat=True))
    env = {**os.environ, "COMMONFEED_APP_RATE": "1000000/min"}
    workdir = Path(tempfile.mkdtemp(prefix="bench-foldin-"))
    log_path = workdir / "worker.log"
    worker = worker_start(env=env, log_path=log_path, loglevel="INFO")
    server = subprocess.Popen(
        [
            sys.executable, "-m", "gunicorn", "-c", "config/gunicorn.py", "config.wsgi",
            "-b", f"127.0.0.1:{args.port}", "-w", str(args.gunicorn_workers),
            "--log-level", "warning",
        ],
        cwd=ROOT,
        env=env,
    )  # fmt: skip
    http = Http(f"http://127.0.0.1:{args.port}", token)
    try:
        deadline = time.monotonic() + 60
        while b"ready" not in (log_path.read_bytes() if log_path.exists() else b""):
            if time.monotonic() > deadline or worker.poll() is not None:
                sys.exit(f"worker did not start:\n{log_path.read_text(errors='replace')}")
            time.sleep(0.2)
        while True:
            try:
                http.get_etag(f"/api/v1/communities/{args.slug}/feeds/{members[0][1]}/")
                break
            except (urllib.error.URLError, ConnectionError):
                if time.monotonic() > deadline:
                    sys.exit("gunicorn did not start")
                time.sleep(0.2)
        tracker = Tracker(http, args.slug, run.pk, args.poll, args.timeout)
        tracker.thread.start()
        load_before = os.getloadavg()
        results = []
        for name, per_batch, rate in (
            ("single", 1, args.single_rate),
            ("batch100", 100, args.batch_rate),
        ):
            mark = len(log_path.read_text(errors="replace"))
            result = phase(
                name,
                http=http,
                tracker=tracker,
                slug=args.slug,
                members=members,
                items=items,
                per_batch=per_batch,
                rate=rate,
                seconds=args.seconds,
                run_id=run.pk,
                verify=min(per_batch, args.verify),
            )
            time.sleep(1.0)  # the last task's log lines
            result["worker"] = worker_stats(log_path.read_text(errors="replace"), mark)
            results.append(result)
        tracker.stop.set()
        load_after = os.getloadavg()
    finally:
        server.terminate()
        server.wait(timeout=30)
        worker_stop(worker)
    print(
        json.dumps(
            {
                "community": args.slug,
                "members": len(members),
                "items": len(items),
                "run": run.pk,
                "cores": os.cpu_count(),
                "load_before": [round(x, 2) for x in load_before],
                "load_after": [round(x, 2) for x in load_after],
                "phases": results,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
