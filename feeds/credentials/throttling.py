"""Per-app rate limits for the app API.

The bucket is the authenticated credential (the SHA-256 of its token), never the client
address: ``X-Forwarded-For`` is whatever the caller writes, and one app may call from many
machines (or many apps from one NAT). Requests without a valid credential are refused by
authentication before any throttle runs, so they cannot fill another app's bucket; the feed's
fast path counts before it knows the token is valid, but into the bucket of that exact token,
which a forger cannot share with the real app.

The limit is ``COMMONFEED_APP_RATE`` requests per window; a window opens with a credential's
first request and lasts the rate's period. In Redis that is one counter per credential (INCR,
then EXPIRE NX: atomic across every web process, a few microseconds; EXPIRE NX needs Redis 7.0
or later). The feed GET counts into the same counter in its one round trip (see
feeds.serving.feed_get).
Other caches (local memory in development) get the same rule through Django's cache API.

If the cache is down, requests are let through unthrottled rather than refused: the limit
protects the service, and an outage of its counter must not become an outage of the API. After
a failure the cache is left alone for a few seconds.
"""

from __future__ import annotations

import functools
import logging
import time
from typing import TYPE_CHECKING

from django.conf import settings
from django.core.cache import cache, caches
from django.core.cache.backends.redis import RedisCache
from rest_framework.request import Request
from rest_framework.throttling import BaseThrottle

from feeds.credentials.auth import AppPrincipal
from feeds.serving import cache as feedcache

if TYPE_CHECKING:
    # Only for annotations: rest_framework.views imports this module (DEFAULT_THROTTLE_CLASSES).
    from rest_framework.views import APIView

logger = logging.getLogger(__name__)

BACKOFF_SECONDS = 5.0
_down_until = 0.0
_PERIODS = {"s": 1, "m": 60, "h": 3600, "d": 86400}

# Set in ``request.META`` by the feed GET (feeds.serving.feed_get) once it has counted the request:
# the count (an int), or UNCOUNTED when Redis failed it and the request goes on unthrottled.
COUNTED_KEY = "commonfeed.throttle_count"
UNCOUNTED = -1


@functools.lru_cache(maxsize=8)
def parse_rate(rate: str) -> tuple[int, int]:
    """``(requests, seconds)`` from e.g. ``"6000/min"`` (validated by the settings)."""
    number, period = rate.split("/")
    return int(number), _PERIODS[period[0]]


def current_rate() -> tuple[int, int]:
    # Read per request rather than captured at import, so overriding it in tests takes effect.
    return parse_rate(settings.COMMONFEED_APP_RATE)


def throttle_key(digest: str) -> str:
    return f"cf:thr:{digest}"


class AppCredentialRateThrottle(BaseThrottle):
    def __init__(self) -> None:
        self._wait = 0.0

    def allow_request(self, request: Request, view: APIView) -> bool:
        global _down_until
        principal = request.user
        if not isinstance(principal, AppPrincipal):
            return True  # Not an app request (e.g. a moderator's session): not this throttle's.
        limit, period = current_rate()
        key = throttle_key(principal.credential.secret_sha256)
        counted = request.META.get(COUNTED_KEY)
        if counted == UNCOUNTED or time.monotonic() < _down_until:
            return True
        try:
            if counted is not None:
                if counted <= limit:
                    return True
                self._wait = self._remaining(key, period)
                return False
            count, self._wait = self._hit(key, period)
        except Exception as exc:  # any cache outage: fail open, see the module docstring
            logger.warning("throttle cache unavailable, not throttling: %r", exc)
            _down_until = time.monotonic() + BACKOFF_SECONDS
            return True
        return count <= limit

    def wait(self) -> float:
        return self._wait

    @staticmethod
    def _hit(key: str, period: int) -> tuple[int, float]:
        """Count one request; ``(count in this window, seconds until the window closes)``."""
        store = feedcache.redis_store()
        if store is not None:
            client, backend = store
            full = backend.make_key(key)
            pipe = client.pipeline(transaction=False)
            pipe.incr(full)
            pipe.expire(full, period, nx=True)
            pipe.pttl(full)
            count, _, ttl_ms = pipe.execute()
            return int(count), max(ttl_ms, 0) / 1000 or float(period)
        if isinstance(caches["default"], RedisCache):
            raise ConnectionError("the feed cache is backing off after a Redis failure")
        # Django's cache API (local memory, or Redis in its back-off): the window's end is kept
        # beside the counter, since the API cannot read a key's expiry.
        now = time.time()
        if cache.add(key, 1, period):
            cache.set(f"{key}:end", now + period, period)
            return 1, float(period)
        try:
            count = cache.incr(key)
        except ValueError:  # the window closed between add and incr
            cache.set(key, 1, period)
            cache.set(f"{key}:end", now + period, period)
            return 1, float(period)
        end = cache.get(f"{key}:end")
        return count, (end - now) if isinstance(end, float) and end > now else float(period)

    @staticmethod
    def _remaining(key: str, period: int) -> float:
        store = feedcache.redis_store()
        if store is None:
            return float(period)
        client, backend = store
        ttl_ms = client.pttl(backend.make_key(key))
        return ttl_ms / 1000 if ttl_ms > 0 else float(period)
