"""Two-sided metrics of a finished feed run (``feeds.insights.run_metrics.run_metrics``), timed.

Usage (the community must exist in the configured database, e.g. after seed_demo)::

    DEBUG=true python bench/run_metrics.py SLUG [--repeat 3]

Uses the community's newest finished run whose feeds are stored, or computes one first
(``feed_run_request`` + ``feed_run_execute``, not timed). Each repeat reads the run's stored feeds
in member batches and computes every metric, as the ``compute_feed_run_metrics`` task does,
without storing the result. Reports the median and the figures of the last repeat.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

import django

django.setup()

from feeds.insights.run_metrics import run_metrics  # noqa: E402
from feeds.models import FeedRun, MemberFeed  # noqa: E402
from feeds.runs.services import feed_run_execute, feed_run_request  # noqa: E402
from governance.models import Community  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("slug")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    community = Community.objects.get(slug=args.slug)
    run = (
        FeedRun.objects.filter(community=community, status=FeedRun.Status.FINISHED)
        .filter(pk__in=MemberFeed.objects.values("run_id"))
        .order_by("-id")
        .first()
    )
    if run is None:
        run = feed_run_execute(run_id=feed_run_request(community=community).pk, shards_inline=True)
    seconds = []
    result: dict[str, object] = {}
    for _ in range(args.repeat):
        started = time.perf_counter()
        result = run_metrics(run)
        seconds.append(time.perf_counter() - started)
    print(f"run {run.pk} of {args.slug}: members {result.get('members')}")
    print(f"run_metrics: median {statistics.median(seconds):.2f} s over {args.repeat} repeats")
    print(json.dumps({k: result.get(k) for k in ("consumers", "producers")}, indent=1))


if __name__ == "__main__":
    main()
