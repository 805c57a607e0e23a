"""Bluesky getFeedSkeleton, CPU and wall time per request: cached skeletons against rendering.

Usage (PostgreSQL + Redis, as deployed)::

    DEBUG=false SECRET_KEY=... ALLOWED_HOSTS=127.0.0.1 DATABASE_URL=... REDIS_URL=... \\
        python bench/skeleton.py [--posts 2000] [--members 1000] [--rounds 7] [--requests 300]

Creates (once per database) a community ``bench-sky`` whose items are Bluesky posts, through
the product's ingestion services (seeded: ``--members`` members, each engaging with 20 of
``--posts`` posts, power-law popular), computes its feeds, and publishes it as a Bluesky feed.
Then it calls ``config.wsgi``'s application in process (no network) for two viewers: anonymous
(the community skeleton) and a member signed in with a service JWT (their own skeleton), a
page of 30 posts each, and for each in two ways, alternated in rounds:

* ``cached``: as shipped; the skeleton page is cached after the first request (the feed record
  and the viewer's membership from PostgreSQL; the page, checked against the community's
  pointer record, from Redis);
* ``rendered``: the same requests with the skeleton cache's reads answering "no page", so every
  request renders the skeleton from the database as every request did before the cache (items,
  credits, the withdrawal check, mutes) and writes it again.

Reports CPU (``time.process_time``) and wall time per request, the median over rounds, the SQL
queries per request, and the ratio rendered/cached.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

import django  # noqa: E402

django.setup()

from cryptography.hazmat.primitives.asymmetric import ec  # noqa: E402
from django.conf import settings  # noqa: E402
from django.db import connection  # noqa: E402
from django.test.utils import CaptureQueriesContext  # noqa: E402

from bench.wsgi import wsgi_get  # noqa: E402
from config.wsgi import application  # noqa: E402
from feeds import ingest_schemas  # noqa: E402
from feeds.bluesky.auth import did_key_of, service_jwt  # noqa: E402
from feeds.ingest.services import creators_upsert, events_ingest, items_upsert, members_upsert  # noqa: E402
from feeds.models import BlueskyFeed  # noqa: E402
from feeds.runs.services import feed_run_execute, feed_run_request  # noqa: E402
from feeds.serving import cache as feedcache  # noqa: E402
from governance.models import Community  # noqa: E402
from governance.services import community_get_or_create  # noqa: E402

SLUG = "bench-sky"
PUBLISHER = "did:plc:benchpublisher00000000000"
# The signed-in viewer's key: fixed, so the member made on the first run verifies on later runs.
VIEWER_KEY = ec.derive_private_key(20261206, ec.SECP256K1())


def _community(posts: int, members: int) -> Community:
    existing = Community.objects.filter(slug=SLUG).first()
    if existing is not None:
        return existing
    community, _ = community_get_or_create(slug=SLUG)
    rng = random.Random(7)
    viewer = did_key_of(VIEWER_KEY.public_key())
    people = [{"id": viewer}, *({"id": f"m{i}"} for i in range(members))]
    for start in range(0, len(people), 1000):
        members_upsert(
            community=community, rows=ingest_schemas.members(people[start : start + 1000])
        )
    creators_upsert(
        community=community,
        rows=ingest_schemas.creators([{"id": f"a{i}", "name": f"Author {i}"} for i in range(50)]),
    )
    for start in range(0, posts, 1000):
        items_upsert(
            community=community,
            rows=ingest_schemas.items(
                [
                    {
                        "id": f"at://did:plc:author{i % 50}/app.bsky.feed.post/{i}",
                        "title": f"Post {i}",
                        "creators": [f"a{i % 50}"],
                    }
                    for i in range(start, min(start + 1000, posts))
                ]
            ),
        )
    weights = [1 / (rank + 1) for rank in range(posts)]  # power-law popularity
    events = []
    for m, member in enumerate([viewer, *(f"m{i}" for i in range(members))]):
        for k, post in enumerate(rng.choices(range(posts), weights=weights, k=20)):
            events.append(
                {
                    "id": f"e{m}-{k}",
                    "member": member,
                    "item": f"at://did:plc:author{post % 50}/app.bsky.feed.post/{post}",
                    "kind": "like",
                }
            )
    for start in range(0, len(events), 1000):
        events_ingest(community=community, rows=ingest_schemas.events(events[start : start + 1000]))
    feed_run_execute(run_id=feed_run_request(community=community).pk)
    BlueskyFeed.objects.create(community=community, rkey="benchsky", display_name="Bench sky")
    return community


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--posts", type=int, default=2000)
    parser.add_argument("--members", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--requests", type=int, default=300, help="per viewer, way and round")
    args = parser.parse_args()
    settings.BSKY_SERVICE_DID = "did:web:feeds.example.org"
    settings.BSKY_PUBLISHER_DID = PUBLISHER
    settings.BSKY_DID_KEYS = {}
    assert feedcache.redis_store() is not None, "set REDIS_URL: the cache is Redis in production"

    _community(args.posts, args.members)
    query = f"feed=at://{PUBLISHER}/app.bsky.feed.generator/benchsky&limit=30"
    # A JWT lives 60 s; each request signs a fresh one outside the timed part.
    viewers = {
        "anonymous": lambda: None,
        "member": lambda: service_jwt(
            iss=did_key_of(VIEWER_KEY.public_key()), private_key=VIEWER_KEY
        ),
    }
    real_get, real_cached = feedcache.page_get, feedcache.skeleton_cached

    def call(token: str | None) -> bytes:
        environ = wsgi_get("/xrpc/app.bsky.feed.getFeedSkeleton", None, query)
        if token:
            environ["HTTP_AUTHORIZATION"] = f"Bearer {token}"
        status: list[str] = []
        response = application(environ, lambda s, h: status.append(s))
        body = b"".join(response)
        getattr(response, "close", lambda: None)()
        assert status[0].startswith("200"), (status, body[:300])
        return body

    def way(name: str) -> None:
        cached = name == "cached"
        feedcache.page_get = real_get if cached else (lambda key, *, run: None)
        feedcache.skeleton_cached = real_cached if cached else (lambda *, community, key: None)

    queries: dict[tuple[str, str], int] = {}
    for viewer, token in viewers.items():
        bodies = set()
        for name in ("rendered", "cached"):
            way(name)
            call(token())  # fills the cache
            with CaptureQueriesContext(connection) as captured:
                bodies.add(call(token()))
            queries[viewer, name] = len(captured)
        assert len(bodies) == 1, "both ways answer the same bytes"

    cpu: dict[tuple[str, str], list[float]] = {key: [] for key in queries}
    wall: dict[tuple[str, str], list[float]] = {key: [] for key in queries}
    for _ in range(args.rounds):
        for viewer, token in viewers.items():
            tokens = [token() for _ in range(args.requests)]
            for name in ("rendered", "cached"):
                way(name)
                started, started_cpu = time.perf_counter(), time.process_time()
                for t in tokens:
                    call(t)
                wall[viewer, name].append((time.perf_counter() - started) / args.requests * 1e3)
                cpu[viewer, name].append((time.process_time() - started_cpu) / args.requests * 1e3)
    way("cached")

    load = os.getloadavg()
    print(f"{args.rounds} rounds x {args.requests} requests per viewer and way; load {load}")
    for viewer in viewers:
        row: dict[str, Any] = {}
        for name in ("rendered", "cached"):
            key = (viewer, name)
            row[name] = (statistics.median(cpu[key]), statistics.median(wall[key]))
            print(
                f"{viewer:9} {name:8}  cpu {row[name][0]:.2f} ms  wall {row[name][1]:.2f} ms"
                f"  queries {queries[viewer, name]}"
            )
        print(
            f"{viewer:9} rendered/cached: cpu {row['rendered'][0] / row['cached'][0]:.1f}x,"
            f" wall {row['rendered'][1] / row['cached'][1]:.1f}x"
        )


if __name__ == "__main__":
    main()
