"""Full recompute through real Celery workers (database -> swapped feeds) against bare implicit.

Usage (the community must exist in the configured database, e.g. after seed_demo)::

    DEBUG=true python bench/recompute_sharded.py SLUG [--workers 2] [--repeat 3]
        [--shard-members 25000] [--chunk 5000] [--bare-pool]

Starts ``--workers`` worker processes (``celery worker --pool=solo``, as in production, each on
its own core) on a private queue of the configured broker. Then each repeat times, alternating
so both see the same machine state:

* ``bare``: in this process, ``implicit.cpu.als.AlternatingLeastSquares(...).fit`` +
  ``recommend(all users, N=feed length, filter_already_liked_items=True)`` on a CSR matrix built
  beforehand from the same arrays (database reads and matrix building excluded). With
  ``--bare-pool`` also the same with ``N`` = the policy's candidate pool, the top-k ours asks
  implicit for before the policy re-ranks it down to the feed length.
* ``ours``: ``feed_run_request`` until the run is ``finished``: the message goes through the
  broker; one worker reads the community from the database, fits ALS under the current policy,
  stores the artifact and sends one task per shard; the workers score the shards and commit
  their feed rows (COPY on PostgreSQL); the last shard swaps the community's pointer.

Reports the medians, their ratio, the split of the last run (worker seconds per stage; shard
stages are summed over shards, so they can exceed their share of the wall time when workers
run in parallel) and the peak resident memory of each worker (VmHWM) and of this process.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

import django

django.setup()

from django.conf import settings  # noqa: E402
from django.db import connection  # noqa: E402

from bench.recompute import bare_implicit  # noqa: E402  (the same baseline, one definition)
from feeds.models import FeedRun, FeedRunShard  # noqa: E402
from feeds.runs.services import feed_run_request  # noqa: E402
from feeds.worker import worker_start, worker_stop  # noqa: E402
from governance.models import Community  # noqa: E402
from governance.selectors import policy_of, policy_version_current  # noqa: E402


def ours(slug: str, queue: str, timeout: float) -> tuple[float, FeedRun]:
    community = Community.objects.get(slug=slug)
    started = time.perf_counter()
    run = feed_run_request(community=community, queue=queue)
    while True:
        time.sleep(0.02)
        run.refresh_from_db()
        if run.status == FeedRun.Status.FINISHED:
            return time.perf_counter() - started, run
        if run.status == FeedRun.Status.FAILED:
            raise SystemExit(f"run {run.pk} failed: {run.error}")
        if time.perf_counter() - started > timeout:
            raise SystemExit(f"run {run.pk} still {run.status} after {timeout:.0f}s")


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("slug")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--shard-members", type=int, default=settings.COMMONFEED_SHARD_MEMBERS)
    parser.add_argument("--chunk", type=int, default=settings.COMMONFEED_SCORE_CHUNK)
    parser.add_argument("--timeout", type=float, default=3600)
    parser.add_argument(
        "--bare-pool",
        action="store_true",
        help="also time bare implicit asked for the policy's candidate pool (not only the feed "
        "length): the same top-k as ours, so the ratio to it is the pipeline's own overhead",
    )
    args = parser.parse_args()

    queue = f"bench-{uuid.uuid4().hex[:8]}"
    logs = Path(tempfile.mkdtemp(prefix="recompute-sharded-"))
    env = {
        "COMMONFEED_SHARD_MEMBERS": str(args.shard_members),
        "COMMONFEED_SCORE_CHUNK": str(args.chunk),
        "LOG_LEVEL": "WARNING",
    }
    workers = [
        worker_start(env=env, log_path=logs / f"worker{i}.log", queue=queue, loglevel="WARNING")
        for i in range(args.workers)
    ]
    try:
        time.sleep(8)  # let the workers connect (they take no message before they are ready)
        bare_times: list[float] = []
        pool_times: list[float] = []
        pool = policy_of(
            policy_version_current(community=Community.objects.get(slug=args.slug))
        ).candidates.pool_size
        our_times: list[float] = []
        run: FeedRun | None = None
        for _ in range(args.repeat):
            bare_times.append(bare_implicit(args.slug))
            if args.bare_pool:
                pool_times.append(bare_implicit(args.slug, n=pool))
            elapsed, run = ours(args.slug, queue, args.timeout)
            our_times.append(elapsed)
        peaks = [peak_rss_mib(w.pid) for w in workers]
    finally:
        for worker in workers:
            worker_stop(worker)
    assert run is not None
    stats = run.stats
    bare, full = statistics.median(bare_times), statistics.median(our_times)
    shards = FeedRunShard.objects.filter(run=run).count()
    print(
        f"community: {args.slug}  database: {connection.vendor}  workers: {args.workers}  "
        f"shards: {shards} of {args.shard_members} members (chunk {args.chunk})"
    )
    print(
        f"members: {stats.get('members')}  items: {stats.get('n_items')}  "
        f"interactions: {stats.get('n_interactions')}  factors: {stats.get('factors')}"
    )
    rows = [
        (f"bare implicit fit+recommend (N={settings.COMMONFEED_FEED_LENGTH})", bare, bare_times),
        ("our recompute via workers", full, our_times),
    ]
    if pool_times:
        rows.insert(1, (f"bare, N=pool ({pool})", statistics.median(pool_times), pool_times))
    for label, median, times in rows:
        print(f"{label:<28} median {median:.2f}s  runs {[round(t, 2) for t in times]}")
    print(
        "  last run, worker seconds: "
        + ", ".join(
            f"{k.removesuffix('_seconds')} {stats[k]}"
            for k in (
                "load_seconds",
                "fit_seconds",
                "prepare_seconds",
                "artifact_save_seconds",
                "artifact_load_seconds",
                "score_seconds",
                "write_seconds",
            )
            if k in stats
        )
    )
    assert run.started_at is not None and run.finished_at is not None
    print(
        f"  last run: queued -> claimed {(run.started_at - run.requested_at).total_seconds():.2f}s,"
        f" claimed -> swapped {(run.finished_at - run.started_at).total_seconds():.2f}s"
    )
    print(
        f"peak RSS: workers {', '.join(f'{p:.0f}' for p in peaks)} MiB; this process (bare) "
        f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB"
    )
    print(f"ratio ours/bare: {full / bare:.2f}x")
    if pool_times:
        print(f"ratio ours/bare with N=pool: {full / statistics.median(pool_times):.2f}x")


if __name__ == "__main__":
    main()
