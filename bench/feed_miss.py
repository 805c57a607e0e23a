"""Feed GET's database path (a cache miss), CPU per request: this tree against another revision.

Usage (the community must have computed feeds)::

    DEBUG=false SECRET_KEY=... ALLOWED_HOSTS=127.0.0.1 DATABASE_URL=... \\
        python bench/feed_miss.py SLUG [--against REV] [--pairs 5] [--members 200] [--limit 20]

Every request misses: the cache is Django's DummyCache, so there is no fast path and no cached
page, and each request is answered by the DRF view from PostgreSQL (credential, member, run,
feed row, items, credits, and whatever the revision adds). Requests go through Django's WSGI
handler in process, no network, for ``--members`` members' first pages in turn, in rounds;
reported: CPU time (``time.process_time``) and wall time per request, the minimum and the
median over rounds, and the SQL queries per request.

With ``--against REV`` it checks REV out into a temporary git worktree and runs the
measurement ``--pairs`` times for each tree, alternating in separate processes (the same
database, migrated for this tree; REV's code must be able to read it), then prints the ratio
this/REV of each pair's minimum CPU per request and their median.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench.wsgi import wsgi_get  # noqa: E402

sys.path.remove(str(ROOT))  # which tree's project code is imported is decided in main()


def measure(args: argparse.Namespace) -> dict[str, Any]:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    os.environ.setdefault("ALLOWED_HOSTS", "127.0.0.1")
    import django

    django.setup()
    from django.conf import settings
    from django.core.handlers.wsgi import WSGIHandler
    from django.db import connection
    from django.test.utils import override_settings

    import feeds
    from feeds.credentials.services import app_credential_create
    from feeds.models import FeedPointer, MemberFeed
    from governance.models import Community

    community = Community.objects.get(slug=args.slug)
    pointer = FeedPointer.objects.get(community=community)
    members = list(
        MemberFeed.objects.filter(run_id=pointer.run_id)
        .order_by("member_id")
        .values_list("member__external_id", flat=True)[: args.members]
    )
    _, token = app_credential_create(
        community=community, name=f"feed_miss-{os.getpid()}-{time.time_ns()}", scopes=["feeds:read"]
    )
    dummy = {"default": {"BACKEND": "django.core.cache.backends.dummy.DummyCache"}}
    with override_settings(CACHES=dummy, COMMONFEED_APP_RATE="100000000/min"):
        handler = WSGIHandler()
        query = f"limit={args.limit}"

        def get(member: str) -> bytes:
            path = f"/api/v1/communities/{args.slug}/feeds/{member}/"
            environ = wsgi_get(path, token, query)
            status: list[str] = []
            body = b"".join(handler(environ, lambda s, h: status.append(s)))
            if not status[0].startswith("200"):
                raise SystemExit(f"{member}: {status[0]} {body[:300]!r}")
            return body

        for member in members:  # warm: connections, imports, the policy cache
            get(member)
        queries: list[str] = []

        def count(execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
            queries.append(sql)
            return execute(sql, params, many, context)

        with connection.execute_wrapper(count):
            get(members[0])
        if args.profile:
            import cProfile
            import pstats

            profile = cProfile.Profile()
            profile.runcall(lambda: [get(member) for member in members])
            pstats.Stats(profile, stream=sys.stderr).sort_stats(
                os.environ.get("SORT", "cumulative")
            ).print_stats(45)
        cpu, wall = [], []
        for _ in range(args.rounds):
            c0, w0 = time.process_time(), time.perf_counter()
            for member in members:
                get(member)
            cpu.append((time.process_time() - c0) / len(members) * 1e6)
            wall.append((time.perf_counter() - w0) / len(members) * 1e6)
    return {
        "code": str(Path(feeds.__file__).resolve().parents[1]),
        "debug": settings.DEBUG,
        "members": len(members),
        "queries_per_request": len(queries),
        "cpu_us_min": round(min(cpu), 1),
        "cpu_us_median": round(statistics.median(cpu), 1),
        "wall_us_min": round(min(wall), 1),
        "wall_us_median": round(statistics.median(wall), 1),
    }


def compare(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp) / "base"
        subprocess.run(
            ["git", "-C", str(ROOT), "worktree", "add", "--detach", str(base), args.against],
            check=True,
            capture_output=True,
        )
        try:
            ratios = []
            for pair in range(args.pairs):
                results = {}
                order = [("this", ROOT), ("base", base)]
                if pair % 2:
                    order.reverse()
                for name, code in order:
                    command = [sys.executable, str(Path(__file__).resolve()), args.slug]
                    command += ["--code", str(code)]
                    command += ["--members", str(args.members), "--limit", str(args.limit)]
                    command += ["--rounds", str(args.rounds)]
                    out = subprocess.run(command, check=True, capture_output=True, text=True)
                    results[name] = json.loads(out.stdout.strip().splitlines()[-1])
                    print(name, json.dumps(results[name]), flush=True)
                ratio = results["this"]["cpu_us_min"] / results["base"]["cpu_us_min"]
                ratios.append(ratio)
                print(f"pair {pair + 1}: this/base CPU per request (min) {ratio:.3f}", flush=True)
            print(f"median ratio this/{args.against}: {statistics.median(ratios):.3f}")
        finally:
            subprocess.run(
                ["git", "-C", str(ROOT), "worktree", "remove", "--force", str(base)], check=True
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("slug")
    parser.add_argument("--against", help="a git revision to compare with")
    parser.add_argument("--pairs", type=int, default=5)
    parser.add_argument("--members", type=int, default=200)
    parser.add_argument("--limit", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--profile", action="store_true", help="cProfile one round to stderr")
    parser.add_argument("--code", type=Path, default=ROOT, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.against:
        compare(args)
        return
    # The editable install maps the project's packages to this tree through a finder that
    # comes before sys.path; drop it so that --code decides which tree is imported.
    # Celery's Django fixup puts the working directory first on sys.path, so work from there.
    sys.meta_path[:] = [f for f in sys.meta_path if "__editable__" not in str(f.__module__)]
    sys.path.insert(0, str(args.code.resolve()))
    os.chdir(args.code)
    print(json.dumps(measure(args)))


if __name__ == "__main__":
    main()
