"""Feed GET fast path, CPU per request in one process: this tree's against another revision's.

Usage (the community must have computed feeds; Redis as the cache)::

    DEBUG=false SECRET_KEY=... ALLOWED_HOSTS=127.0.0.1 DATABASE_URL=... REDIS_URL=... \\
        python bench/fastpath_ab.py SLUG REV [--requests 300] [--rounds 200]

A change to ``feeds/fastpath.py`` or ``feeds/redis_wire.py`` moves a request's cost by a few
microseconds, well inside the noise of two wrk runs on a shared machine. This loads REV's copy
of those two modules next to the working tree's (``git show``; the rest of the code is the
working tree's), then sends the same request through Django's WSGI handler, in process, no
network: rounds of ``--requests`` requests each of ``new`` (this tree's fast path), ``old``
(REV's) and ``bare`` (bench.bench_urls' view returning the same bytes), in a shuffled order
per round so that drift on the machine falls on all three alike. Both fast paths must answer
the same status, headers and bytes.

Reports the CPU time per request (``time.process_time``): the minimum over rounds (the least
disturbed), the 10th percentile and the median of each, and the median of the per-round
difference new - old.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ["DJANGO_SETTINGS_MODULE"] = "bench.bench_settings"
os.environ.setdefault("ALLOWED_HOSTS", "127.0.0.1")
# Every request is counted against the credential; lift its rate so that none is refused.
os.environ.setdefault("COMMONFEED_APP_RATE", "100000000/min")
_BODY_FILE = Path(tempfile.mkstemp(suffix=".json")[1])
os.environ["BENCH_BARE_BODY"] = str(_BODY_FILE)

import django  # noqa: E402

django.setup()

from django.core.handlers.wsgi import WSGIHandler  # noqa: E402

import bench.bench_urls as bench_urls  # noqa: E402
from bench.wsgi import wsgi_get  # noqa: E402
from feeds import fastpath  # noqa: E402
from feeds.services import app_credential_create  # noqa: E402
from governance.models import Community  # noqa: E402


def _module_at(rev: str, path: str, name: str) -> types.ModuleType:
    source = subprocess.run(
        ["git", "show", f"{rev}:{path}"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    module = types.ModuleType(name)
    module.__file__ = f"<{rev}:{path}>"
    sys.modules[name] = module
    exec(compile(source, module.__file__, "exec"), module.__dict__)
    return module


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("slug")
    parser.add_argument("rev", help="the revision to compare with, e.g. HEAD~1")
    parser.add_argument("--requests", type=int, default=300, help="requests per round and side")
    parser.add_argument("--rounds", type=int, default=200)
    args = parser.parse_args()

    old_wire = _module_at(args.rev, "feeds/redis_wire.py", "bench_old_redis_wire")
    old_fastpath = _module_at(args.rev, "feeds/fastpath.py", "bench_old_fastpath")
    old_fastpath.redis_wire = old_wire  # type: ignore[attr-defined]
    serves = {"new": fastpath._serve, "old": old_fastpath._serve}

    community = Community.objects.get(slug=args.slug)
    member = community.memberships.order_by("id").first()
    assert member is not None, "the community has no members"
    _, token = app_credential_create(
        community=community, name=f"bench-{time.time_ns()}", scopes=["feeds:read"]
    )
    api = f"/api/v1/communities/{args.slug}/feeds/{member.external_id}/"
    handler = WSGIHandler()

    def call(path: str, auth: str | None) -> tuple[Any, bytes]:
        started: list[Any] = []
        response = handler(
            wsgi_get(path, auth), lambda status, headers: started.append((status, headers))
        )
        body = b"".join(response)
        response.close()  # type: ignore[attr-defined]
        return started[0], body

    answers = {}
    for name, serve in serves.items():
        fastpath._serve = serve  # the view wrapper looks it up on every request
        for _ in range(3):  # the database path, then Redis, then the near cache
            answers[name] = call(api, token)
    (status, _), body = answers["new"]
    assert status.startswith("200"), status
    assert answers["old"] == answers["new"], "both fast paths must answer the same"
    bench_urls._BODY = body
    assert call("/bench/bare/", None)[1] == body

    sides = {"new": (api, token), "old": (api, token), "bare": ("/bench/bare/", None)}
    cpu: dict[str, list[float]] = {name: [] for name in sides}
    shuffle = random.Random(0).shuffle
    for _ in range(args.rounds):
        order = list(sides)
        shuffle(order)
        for name in order:
            if name in serves:
                fastpath._serve = serves[name]
            path, auth = sides[name]
            started = time.process_time()
            for _ in range(args.requests):
                call(path, auth)
            cpu[name].append((time.process_time() - started) / args.requests * 1e6)
    fastpath._serve = serves["new"]

    print(
        f"{args.rounds} rounds of {args.requests} requests per side, {len(body)} bytes, "
        f"old = {args.rev}; CPU us per request:"
    )
    for name, values in cpu.items():
        ranked = sorted(values)
        print(
            f"  {name:4}  min {ranked[0]:6.1f}  p10 {ranked[len(ranked) // 10]:6.1f}"
            f"  median {statistics.median(ranked):6.1f}"
        )
    paired = statistics.median(a - b for a, b in zip(cpu["new"], cpu["old"], strict=True))
    low = {name: min(values) for name, values in cpu.items()}
    print(f"  new - old, median of per-round differences: {paired:+.1f} us")
    print(
        f"  bare/new {low['bare'] / low['new']:.3f}, bare/old {low['bare'] / low['old']:.3f}"
        " (on the minima)"
    )
    _BODY_FILE.unlink(missing_ok=True)


if __name__ == "__main__":
    main()
