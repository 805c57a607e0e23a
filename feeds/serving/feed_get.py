"""The feed GET's view: a cached page answered after one Redis round trip and no SQL.

``MemberFeedApi`` (feeds.serving.api) stays the endpoint's definition: its schema, its errors, and
the database path that is the source of truth. ``wrap`` makes the view the URLconf routes to, an
ordinary Django view behind the usual middleware, which answers the common case itself, in
which everything is already cached and valid:

* the bearer token's credential record (``cf:cred:<sha256>``) names this community and the
  ``feeds:read`` scope;
* the community's pointer record names the generation it serves (and, with a cursor, the cursor
  pins that same generation, which therefore cannot have been pruned);
* the member's page record carries that generation's stamp;
* the credential is within its rate.

One round trip through redis-py (one script: MGET of the three records, then INCR and EXPIRE NX
of the credential's rate counter) is all the Redis it needs, and it needs no SQL.
Anything else (a miss, a revocation marker, a stale stamp, an unusual header or parameter, over
the rate, Redis down) goes to the DRF view, which answers from the database exactly as before,
fills the records, and produces every error body. The request is counted once either way: the
DRF throttle reuses this count.

Why not DRF for hits: its request wrapping, negotiation, authentication, permission and
throttle classes cost more per request than everything this module does (see
docs/benchmarks.md, "Feed GET"). Why not a separate URL: clients, the schema and the tests see
one endpoint; drf-spectacular documents the wrapped view from its ``cls`` as before.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from typing import Any

import redis
from django.http import HttpRequest, HttpResponse, HttpResponseBase
from django.views.decorators.csrf import csrf_exempt

from feeds.credentials import throttling
from feeds.serving import cache as feedcache
from feeds.serving.cursors import cursor_decode

# Only canonical values are answered here; DRF parses (or refuses) anything else.
_LIMIT = re.compile(r"[1-9][0-9]{0,3}")
_CURSOR = re.compile(r"[A-Za-z0-9_-]{1,200}")
_SCOPE = b"feeds:read"

View = Callable[..., HttpResponseBase]


def wrap(view: View) -> View:
    """The feed GET's view: cache hits answered here, the rest by ``view`` (an
    ``APIView.as_view()`` result)."""
    # DRF's Allow header, as a request would see the view: Django's setup() adds HEAD to GET.
    instance = view.cls(**view.initkwargs)  # type: ignore[attr-defined]
    instance.setup(HttpRequest())
    allow = ", ".join(instance.allowed_methods)

    def member_feed(request: HttpRequest, slug: str, member_external_id: str) -> HttpResponseBase:
        if request.method == "GET":
            response = _serve(request, slug, member_external_id, allow)
            if response is not None:
                return response
        return view(request, slug=slug, member_external_id=member_external_id)

    # drf-spectacular and Django's tooling read the view class from these.
    for attr in ("cls", "initkwargs", "view_class", "view_initkwargs", "__doc__", "__module__"):
        if hasattr(view, attr):
            setattr(member_feed, attr, getattr(view, attr))
    return csrf_exempt(member_feed)


def _params(request: HttpRequest) -> tuple[int | None, int, int | None] | None:
    """``(pinned run, offset, limit)`` from canonical query parameters, else None."""
    if not request.META.get("QUERY_STRING"):
        return None, 0, None
    query = request.GET
    if len(query.getlist("limit")) > 1 or len(query.getlist("cursor")) > 1:
        return None  # a repeated parameter: DRF answers 400
    limit_raw, cursor = query.get("limit"), query.get("cursor")
    limit = None
    if limit_raw is not None:
        if not _LIMIT.fullmatch(limit_raw) or int(limit_raw) > 1000:
            return None
        limit = int(limit_raw)
    if cursor is None:
        return None, 0, limit
    if not _CURSOR.fullmatch(cursor):
        return None
    try:
        run_id, offset = cursor_decode(cursor)
    except ValueError:
        return None
    return run_id, offset, limit


# The three records, and the credential's request counted as feeds.credentials.throttling counts it
# (INCR, then EXPIRE NX). One script rather than a pipeline of the same commands: one command for
# redis-py to pack and parse, about 10 µs less per request (measured 57-64 vs 66-72 µs).
# A missing key reads as false in Lua.
_READ_AND_COUNT = """
local records = redis.call('MGET', KEYS[1], KEYS[2], KEYS[3])
local count = redis.call('INCR', KEYS[4])
redis.call('EXPIRE', KEYS[4], ARGV[1], 'NX')
return {records[1], records[2], records[3], count}
"""
# By id: feeds.serving.cache keeps each client for the life of the process.
_scripts: dict[int, Any] = {}


def _read_and_count(client: redis.Redis) -> Any:
    """``_READ_AND_COUNT`` registered with ``client`` (redis-py sends it by its SHA and loads
    it again after a Redis restart)."""
    script = _scripts.get(id(client))
    if script is None:
        script = _scripts[id(client)] = client.register_script(_READ_AND_COUNT)
    return script


def _serve(
    request: HttpRequest, slug: str, member_external_id: str, allow: str
) -> HttpResponse | None:
    store = feedcache.redis_store()
    if store is None:
        if not feedcache.available():
            # Redis failed a moment ago: the DRF throttle should not try it again either.
            request.META[throttling.COUNTED_KEY] = throttling.UNCOUNTED
        return None
    header = request.META.get("HTTP_AUTHORIZATION", "")
    if not header.startswith("Bearer cf_"):
        return None
    params = _params(request)
    if params is None:
        return None
    pinned, offset, limit = params
    client, backend = store
    # Keyed by the token's digest, never the token: no secret outlives its request.
    digest = hashlib.sha256(header[7:].encode("latin-1")).hexdigest()
    make_key = backend.make_key
    page_key = feedcache.page_key(
        slug=slug, member=member_external_id, pinned=pinned, offset=offset, limit=limit
    )
    keys = [
        make_key(feedcache.credential_key(digest)),
        make_key(feedcache.pointer_key(slug)),
        make_key(page_key),
        make_key(throttling.throttle_key(digest)),
    ]
    rate, period = throttling.current_rate()
    try:
        credential, pointer, page, count = _read_and_count(client)(keys=keys, args=[period])
    except Exception as exc:  # any cache outage degrades to the database
        feedcache.failed(exc)
        request.META[throttling.COUNTED_KEY] = throttling.UNCOUNTED
        return None
    request.META[throttling.COUNTED_KEY] = count
    if count > rate or not credential or not pointer or not page:
        return None
    return _respond(request, slug, credential, pointer, page, pinned=pinned, allow=allow)


def _respond(
    request: HttpRequest,
    slug: str,
    credential: bytes,
    pointer: bytes,
    page: bytes,
    *,
    pinned: int | None,
    allow: str,
) -> HttpResponse | None:
    identity, _, rest = credential.partition(b"|")
    credential_slug, _, scopes = rest.partition(b"|")
    if credential_slug != slug.encode() or _SCOPE not in scopes.split(b" "):
        return None  # another community's app, a missing scope, a revocation marker
    pointer_identity, _, generation = pointer.partition(b"|")
    if pointer_identity != identity:
        return None
    if pinned is not None and generation.partition(b".")[0] != str(pinned).encode():
        return None  # a cursor on an older generation: the database decides 200 or 410
    head, _, body = page.partition(b"\n")
    stamp, _, etag_bytes = head.partition(b"|")
    if stamp != generation or not etag_bytes:
        return None
    etag = etag_bytes.decode()
    if_none_match = request.META.get("HTTP_IF_NONE_MATCH")
    if if_none_match and etag in [tag.strip() for tag in if_none_match.split(",")]:
        # What DRF makes of Response(status=304): no body, no Content-Type.
        response = HttpResponse(status=304, headers={"ETag": etag, "Allow": allow})
        del response["Content-Type"]
        return response
    return HttpResponse(
        body,
        content_type="application/json",
        headers={"ETag": etag, "Cache-Control": "private, no-cache", "Allow": allow},
    )
