"""Pre-serialised feed pages in the cache (Redis in production): a fast path, never the truth.

A run's stored feeds never change, so a page's bytes are keyed by (run, member, offset, limit)
and need no invalidation: a swap makes readers ask for new keys, and old ones expire. The
database stays the source of truth: if the cache is down, reads go to the database, and after a
failure the cache is left alone for a few seconds instead of paying a failed connection on every
request.
"""

from __future__ import annotations

import logging
import time

from django.core.cache import cache

from feeds.models import FeedRun

logger = logging.getLogger(__name__)

TIMEOUT_SECONDS = 3600
BACKOFF_SECONDS = 5.0
_down_until = 0.0


def page_key(*, run: FeedRun, member_id: int, offset: int, limit: int | None) -> str:
    # The claim token is random per computed run, so keys never collide across databases that
    # reuse ids (a restore, a test database) while the cache keeps old pages.
    return f"feed:v1:{run.pk}.{run.claim}:{member_id}:{offset}:{limit or 0}"


def _available() -> bool:
    return time.monotonic() >= _down_until


def _failed(exc: Exception) -> None:
    global _down_until
    if _available():
        logger.warning("feed cache unavailable, serving from the database: %r", exc)
    _down_until = time.monotonic() + BACKOFF_SECONDS


def page_get(key: str) -> bytes | None:
    if not _available():
        return None
    try:
        value = cache.get(key)
    except Exception as exc:  # any cache outage degrades to the database
        _failed(exc)
        return None
    return value if isinstance(value, bytes) else None


def page_set(key: str, body: bytes) -> None:
    if not _available():
        return
    try:
        cache.set(key, body, TIMEOUT_SECONDS)
    except Exception as exc:
        _failed(exc)
