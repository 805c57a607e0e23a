"""The feed GET's fast path: a cached page served after one Redis round trip and no SQL.

``MemberFeedApi`` (feeds.apis) stays the endpoint: its schema, its errors, and the database
path that is the source of truth. ``wrap`` puts a plain function in front of it that answers
only the common case, in which everything is already cached and valid:

* the bearer token's credential record (``cf:cred:<sha256>``) names this community and the
  ``feeds:read`` scope;
* the community's pointer record names the generation it serves (and, with a cursor, the cursor
  pins that same generation, which therefore cannot have been pruned);
* the member's page record carries that generation's stamp;
* the credential is within its rate.

One round trip (``feeds.redis_wire``: MGET of the three records, then INCRBY, EXPIRE NX and
PTTL of the credential's rate counter, pipelined) is all the Redis it needs, and it needs no
SQL; with the near cache (below), a repeated request needs none.
Anything else (a miss, a revocation marker, a stale stamp, an unusual header or parameter, over
the rate, Redis down) falls through to the DRF view, which answers from the database exactly as
before, fills the records, and produces every error body. The request is counted once either
way: the DRF throttle reuses the fast path's count.

The near cache (``COMMONFEED_FEED_NEAR_CACHE_SECONDS``, on by default): each web thread keeps
the three records it read, and throttle tokens it reserved, in memory, and answers a repeated
request (an app polling one feed, the Bluesky community feed, If-None-Match revalidation)
without any round trip. It is exact, not a TTL guess: the connection has Redis client tracking
on (``feeds.redis_wire``), so Redis pushes an invalidation the moment any record this thread
read changes, expires or is flushed, and every request first reads the pushes that have arrived
(a zero-timeout poll(2) of the socket; a read only when something came). Writers that make a
record stale (``feeds.feedcache``: a revocation, a pointer swap, a member's refreshed pages) wait
for one more round trip after the write, by which time Redis has written the push to every
tracking connection: the next request anywhere sees it. A lost connection forgets everything
cached under it; entries also age out after the setting's seconds, and the cache holds at most
``COMMONFEED_FEED_NEAR_CACHE_BYTES`` per thread.

Throttle tokens are reserved in blocks (``INCRBY`` of ``_lease(rate)``: one per 2,000 of the
rate, at most 64, so 1 below 4,000 per period), so the counter in Redis is never below the
requests served and the limit is never exceeded; a thread's unused reservation at the end of a
window can make the credential's other threads hit the limit up to ``lease - 1`` requests early
(at most 0.05 % of the rate per thread). Without the near cache each request reserves one.

In front of Django (``WSGIFastPath``, installed by ``config/wsgi.py``): under WSGI the same
``_serve`` runs before Django's handler, so a hit also skips Django's request signals, URL
resolution and middleware stack, which cost more than the rest of the request (see
docs/benchmarks.md, "Feed GET"). It runs the middleware whose effect on the answer matters (the
host check and HTTPS redirect of Common and Security middleware, and the headers those and
XFrameOptions add) and hands everything else to Django. Under ASGI, in tests through Django's
client, or with ``COMMONFEED_WSGI_FASTPATH=false``, the wrapped view answers hits instead.

Why not DRF on the hot path: its request wrapping, negotiation, authentication, permission and
throttle classes cost more per request than everything this module does (see
docs/benchmarks.md, "Feed GET"). Why not a separate URL: clients, the schema and the tests see
one endpoint; drf-spectacular documents the wrapped view from its ``cls`` as before.
"""

from __future__ import annotations

import hashlib
import logging
import re
import threading
import time
from collections.abc import Callable
from typing import Any

from django.conf import settings
from django.http import HttpRequest, HttpResponse, HttpResponseBase
from django.views.decorators.csrf import csrf_exempt

from feeds import feedcache, redis_wire, throttling
from feeds.cursors import cursor_decode

logger = logging.getLogger(__name__)

# Only canonical values take the fast path; DRF parses (or refuses) anything else.
_LIMIT = re.compile(r"[1-9][0-9]{0,3}")
_CURSOR = re.compile(r"[A-Za-z0-9_-]{1,200}")
_SCOPE = b"feeds:read"

# MGET credential pointer page; INCRBY counter lease; EXPIRE counter period NX; PTTL counter, in
# RESP, filled in with one formatting operation (redis_wire.pack builds the same bytes, argument
# by argument).
_COMMANDS = (
    b"*4\r\n$4\r\nMGET\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n"
    b"*3\r\n$6\r\nINCRBY\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n"
    b"*4\r\n$6\r\nEXPIRE\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n$2\r\nNX\r\n"
    b"*2\r\n$4\r\nPTTL\r\n$%d\r\n%s\r\n"
)
_CACHING = b"*3\r\n$6\r\nCLIENT\r\n$7\r\nCACHING\r\n$3\r\nYES\r\n"
_LEASE_MAX = 64


def _lease(rate: int) -> int:
    """Throttle tokens one round trip reserves for this thread: 1 for small rates (exact)."""
    return max(1, min(_LEASE_MAX, rate // 2000))


class _Near(threading.local):
    """This thread's near cache: Redis key -> (value, monotonic expiry), and throttle leases:
    counter key -> [tokens left, window end (monotonic), count to report]."""

    def __init__(self) -> None:
        # (backend, token digest, slug, member, pinned, offset, limit) -> Redis keys
        self.keys: dict[tuple[Any, ...], tuple[bytes, bytes, bytes, bytes]] = {}
        self.epoch = 0
        self.values: dict[bytes, tuple[bytes, float]] = {}
        self.size = 0
        self.leases: dict[bytes, list[float]] = {}

    def clear(self, epoch: int) -> None:
        self.epoch = epoch
        self.values.clear()
        self.leases.clear()
        self.size = 0

    def sync(self, epoch: int) -> None:
        """Forget what the connection's pushes say changed (everything, on a new epoch)."""
        if epoch != self.epoch:
            self.clear(epoch)
        values = self.values
        for key in redis_wire.invalidations():
            if key is None:
                self.clear(epoch)
            else:
                entry = values.pop(key, None)
                if entry is not None:
                    self.size -= len(entry[0])

    def get(self, key: bytes, now: float) -> bytes | None:
        entry = self.values.get(key)
        return entry[0] if entry is not None and entry[1] > now else None

    def put(self, key: bytes, value: bytes | None, expires: float, budget: int) -> None:
        old = self.values.pop(key, None)
        if old is not None:
            self.size -= len(old[0])
        if value is None or len(value) > budget:
            return
        self.values[key] = (value, expires)
        self.size += len(value)
        while self.size > budget:  # the oldest entries first (dicts keep insertion order)
            evicted = self.values.pop(next(iter(self.values)))
            self.size -= len(evicted[0])


_near = _Near()

View = Callable[..., HttpResponseBase]


def wrap(view: View) -> View:
    """Put the fast path in front of ``view`` (an ``APIView.as_view()`` result)."""
    # DRF's Allow header, as a request would see the view: Django's setup() adds HEAD to GET.
    instance = view.cls(**view.initkwargs)  # type: ignore[attr-defined]
    instance.setup(HttpRequest())
    allow = ", ".join(instance.allowed_methods)

    def member_feed(request: HttpRequest, slug: str, member_external_id: str) -> HttpResponseBase:
        # A request WSGIFastPath already tried (and counted) goes straight to the database path.
        if request.method == "GET" and TRIED_KEY not in request.META:
            response = _serve(request, slug, member_external_id, allow)
            if response is not None:
                return response
        return view(request, slug=slug, member_external_id=member_external_id)

    member_feed.fastpath_allow = allow  # type: ignore[attr-defined]  # read by WSGIFastPath

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


def _keys(
    backend: Any,
    digest: str,
    slug: str,
    member: str,
    pinned: int | None,
    offset: int,
    limit: int | None,
) -> tuple[bytes, bytes, bytes, bytes]:
    """The Redis keys of a request (``digest``: the token's SHA-256, hex): credential, pointer,
    page, throttle counter."""
    make_key = backend.make_key
    return (
        make_key(feedcache.credential_key(digest)).encode(),
        make_key(feedcache.pointer_key(slug)).encode(),
        make_key(
            feedcache.page_key(slug=slug, member=member, pinned=pinned, offset=offset, limit=limit)
        ).encode(),
        make_key(throttling.throttle_key(digest)).encode(),
    )


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
    digest = hashlib.sha256(header[7:].encode("latin-1")).digest()
    names = (id(backend), digest, slug, member_external_id, pinned, offset, limit)
    keys = _near.keys.get(names)
    if keys is None:
        keys = _keys(backend, digest.hex(), slug, member_external_id, pinned, offset, limit)
        if len(_near.keys) >= 10_000:
            _near.keys.clear()
        _near.keys[names] = keys
    credential_key, pointer_key, page_key, throttle_key = keys
    pool = client.connection_pool
    near_seconds = settings.COMMONFEED_FEED_NEAR_CACHE_SECONDS
    near = _near if near_seconds > 0 else None
    lease = None
    if near is not None:
        epoch = redis_wire.poll(pool)
        near.sync(epoch)
        if epoch:
            now = time.monotonic()
            lease = near.leases.get(throttle_key)
            if lease is not None and (lease[0] < 1 or now >= lease[1]):
                lease = None  # spent, or its window has closed
            credential = near.get(credential_key, now)
            pointer = near.get(pointer_key, now)
            page = near.get(page_key, now)
            if (
                lease is not None
                and credential is not None
                and pointer is not None
                and page is not None
            ):
                response = _respond(
                    request, slug, credential, pointer, page, pinned=pinned, allow=allow
                )
                if response is not None:
                    lease[0] -= 1
                    request.META[throttling.COUNTED_KEY] = int(lease[2])
                    return response
                # The records this thread holds disagree: most often a page that was just
                # rewritten, whose invalidation push is still on its way. Ask Redis, not the
                # database (the request is counted once, below, from the same lease).
    rate, period = throttling.current_rate()
    # A thread that still holds a token spends it and reserves none; without the near cache
    # nothing is held between requests, so each reserves exactly one.
    reserve = 0 if lease is not None else (_lease(rate) if near is not None else 1)
    reserve_bytes, period_bytes = b"%d" % reserve, b"%d" % period
    commands = _COMMANDS % (
        len(credential_key),
        credential_key,
        len(pointer_key),
        pointer_key,
        len(page_key),
        page_key,
        len(throttle_key),
        throttle_key,
        len(reserve_bytes),
        reserve_bytes,
        len(throttle_key),
        throttle_key,
        len(period_bytes),
        period_bytes,
        len(throttle_key),
        throttle_key,
    )
    try:
        if near is None:
            (credential, pointer, page), count, _, ttl_ms = redis_wire.call(
                pool, commands, replies=4
            )
        else:
            # OPTIN tracking: only the MGET's keys are tracked, not the counter.
            _, (credential, pointer, page), count, _, ttl_ms = redis_wire.call(
                pool, _CACHING + commands, replies=5, tracking=True
            )
    except Exception as exc:  # any cache outage degrades to the database
        feedcache.failed(exc)
        request.META[throttling.COUNTED_KEY] = throttling.UNCOUNTED
        return None
    if lease is not None:
        lease[0] -= 1
        first = int(lease[2])
    else:
        # This request is the first of the block just reserved; the rest are this thread's.
        first = count - reserve + 1
    request.META[throttling.COUNTED_KEY] = first if first <= rate else count
    if near is not None:
        now = time.monotonic()
        expires = now + near_seconds
        epoch = redis_wire.epoch()
        if epoch != near.epoch:  # a new connection: nothing read on the old one holds
            near.clear(epoch)
        budget = settings.COMMONFEED_FEED_NEAR_CACHE_BYTES
        for key, value in ((credential_key, credential), (pointer_key, pointer), (page_key, page)):
            near.put(key, value, expires, budget)
        if lease is None:
            if len(near.leases) > 10_000:
                near.leases.clear()
            window_end = now + (ttl_ms / 1000 if ttl_ms > 0 else period)
            near.leases[throttle_key] = [min(count, rate) - first, window_end, first]
        # Pushes read with the replies may say that what was just stored changed: they win.
        near.sync(epoch)
    if first > rate or credential is None or pointer is None or page is None:
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


# Set in the environ by WSGIFastPath when it has tried (and counted) a request it then hands on.
TRIED_KEY = "commonfeed.fastpath_tried"

# The middleware (settings.MIDDLEWARE) whose effect on a fast-path answer WSGIFastPath
# reproduces. Security, Common and XFrameOptions add headers or refuse requests: WSGIFastPath
# runs their own process_request / process_response. The others do nothing to this request:
# WhiteNoise serves only STATIC_URL; sessions, CSRF (the view is exempt), authentication and
# messages change a response only once the view has used them, which the fast path never does.
# With any other middleware in the list, WSGIFastPath stands aside and Django serves every
# request (the fast path inside the view still answers hits).
_UNDERSTOOD_MIDDLEWARE = frozenset(
    {
        "django.middleware.security.SecurityMiddleware",
        "whitenoise.middleware.WhiteNoiseMiddleware",
        "django.contrib.sessions.middleware.SessionMiddleware",
        "django.middleware.common.CommonMiddleware",
        "django.middleware.csrf.CsrfViewMiddleware",
        "django.contrib.auth.middleware.AuthenticationMiddleware",
        "django.contrib.messages.middleware.MessageMiddleware",
        "django.middleware.clickjacking.XFrameOptionsMiddleware",
    }
)
_RESPONSE_MIDDLEWARE = (
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.security.SecurityMiddleware",
)


class _Route:
    """What WSGIFastPath needs from the URLconf and settings, resolved once per process."""

    def __init__(self) -> None:
        from django.urls import URLPattern, get_resolver
        from django.utils.module_loading import import_string

        self.pattern: Any = None
        self.earlier: list[Any] = []  # patterns Django tries first: any match hands over
        self.allow = ""
        self.request_middleware: list[Any] = []
        self.response_middleware: list[Any] = []
        unknown = set(settings.MIDDLEWARE) - _UNDERSTOOD_MIDDLEWARE
        if unknown:
            logger.warning("feed fast path: Django serves every feed GET (%s)", sorted(unknown))
            return
        for entry in get_resolver().url_patterns:
            allow = getattr(getattr(entry, "callback", None), "fastpath_allow", None)
            if isinstance(entry, URLPattern) and allow is not None:
                self.pattern, self.allow = entry.pattern, allow
                break
            self.earlier.append(entry.pattern)
        else:
            logger.warning("feed fast path: the feed URL is not a top-level pattern")
            return

        def unused(request: HttpRequest) -> HttpResponseBase:
            raise AssertionError("WSGIFastPath never calls a middleware's next layer")

        # In the order Django applies them: requests top-down, responses bottom-up.
        instances = {
            name: import_string(name)(unused)
            for name in settings.MIDDLEWARE
            if name in _RESPONSE_MIDDLEWARE
        }
        self.request_middleware = [
            instances[name]
            for name in settings.MIDDLEWARE
            if name in instances and hasattr(instances[name], "process_request")
        ]
        self.response_middleware = [
            instances[name] for name in reversed(settings.MIDDLEWARE) if name in instances
        ]

    def match(self, path: str) -> dict[str, Any] | None:
        """The view's keyword arguments when Django would route ``path`` to the feed view."""
        if self.pattern is None or not path.startswith("/") or not path.isascii():
            return None
        path = path[1:]  # what the root resolver's ``^/`` leaves to its patterns
        if any(earlier.match(path) is not None for earlier in self.earlier):
            return None
        found = self.pattern.match(path)
        if found is None or found[0]:
            return None
        return found[2]


class WSGIFastPath:
    """WSGI middleware that answers feed GET cache hits before Django's handler runs.

    A hit then costs what the fast path does and no more: no request signals (which check the
    database connections), no URL resolution, no pass through eight middleware layers. It
    is the same ``_serve`` as the view's: the same Redis records, the same count against the
    credential's rate, the same bytes and headers. Django's own code still decides what it
    decides for every request: ``WSGIRequest`` parses the environ, ``get_host()`` checks
    ``ALLOWED_HOSTS``, and Security, Common and XFrameOptions middleware run their
    ``process_request`` (HTTPS redirect, refused user agents) and ``process_response`` (the
    security headers, ``Content-Length``). Anything but a hit (a miss, a redirect, a bad host, an
    error) goes to Django unchanged, marked as already counted, and the view does not try the
    fast path again. WhiteNoise serves static files the same way, in front of Django.

    ``config/wsgi.py`` installs it; ``COMMONFEED_WSGI_FASTPATH=false`` leaves it out (the fast
    path inside the view then answers hits, as under ASGI).
    """

    def __init__(self, application: Callable[..., Any]) -> None:
        self.application = application
        self._route: _Route | None = None
        self._lock = threading.Lock()

    def route(self) -> _Route:
        route = self._route
        if route is None:
            with self._lock:
                if self._route is None:
                    self._route = _Route()
                route = self._route
        return route

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        if environ.get("REQUEST_METHOD") == "GET" and environ.get("HTTP_AUTHORIZATION"):
            route = self.route()
            kwargs = route.match(environ.get("PATH_INFO", ""))
            if kwargs is not None:
                try:
                    response = self._answer(route, environ, kwargs)
                except Exception:
                    # Django serves it and, if the error is still there, reports it as usual.
                    logger.exception("feed fast path failed; handing the request to Django")
                    environ.pop(TRIED_KEY, None)
                    response = None
                if response is not None:
                    start_response(
                        f"{response.status_code} {response.reason_phrase}", [*response.items()]
                    )
                    return [response.content]
        return self.application(environ, start_response)

    def _answer(
        self, route: _Route, environ: dict[str, Any], kwargs: dict[str, Any]
    ) -> HttpResponseBase | None:
        from django.core.exceptions import DisallowedHost, PermissionDenied
        from django.core.handlers.wsgi import WSGIRequest

        request = WSGIRequest(environ)
        try:
            # CommonMiddleware's process_request checks ALLOWED_HOSTS (get_host()), as in Django.
            for middleware in route.request_middleware:
                if middleware.process_request(request) is not None:
                    return None  # a redirect: Django's to make
        except (DisallowedHost, PermissionDenied):
            return None  # Django answers 400 / 403 and logs it as it always does
        environ[TRIED_KEY] = True
        response: HttpResponseBase | None = _serve(
            request, kwargs["slug"], kwargs["member_external_id"], route.allow
        )
        if response is None:
            return None
        for middleware in route.response_middleware:
            response = middleware.process_response(request, response)
        return response
