"""What the feed API keeps in the cache (Redis in production): a fast path, never the truth.

Three kinds of record, each written by the database path and read by the feed GET
(``feeds.serving.feed_get``) in one Redis round trip:

``cf:cred:<sha256 of the token>``
    ``<community identity>|<slug>|<scopes>`` of an active credential, for ``CREDENTIAL_TTL``.
    Revoking writes a marker over it (``credential_invalidate``) *before* the revocation
    commits; fillers only ``SET NX``, so a request that read the credential as active just
    before the commit cannot put it back. The next request finds the marker and asks the
    database, which says revoked.
``cf:ptr:<slug>``
    ``<community identity>|<run>.<claim>.<revision>``: the generation the community serves now
    and the pointer's revision, which :func:`served_content_changed` bumps when what served
    pages show changes without a run (an opt-out, an item edited). A swap or such a change
    deletes it before its transaction commits and writes the committed pointer after (fillers
    again only ``SET NX``), so readers never keep an older generation or revision once the
    change is visible.
``cf:page:<slug>:<pinned run or 0>:<offset>:<limit or 0>:<member external id>``
    ``<run>.<claim>.<revision>|<etag>\\n`` then the page's JSON bytes. The stamp must equal the
    pointer's (or the run a cursor pins, with the pointer's revision), so a page of another
    generation or revision is never served.
``cf:mrev:<slug>:<member>`` and ``cf:mpages:<slug>:<member>``
    A member's page revision (a counter) and the keys of their cached pages. A fold-in refresh
    (``feeds.foldin.services.member_feeds_refresh``) rewrites a member's feed inside a generation:
    after it commits, :func:`member_pages_invalidate` bumps the revision and deletes the pages. The
    database path reads the revision (:func:`page_guard`) before it reads the feed row and writes
    its page only if the revision is unchanged (one Lua script), so a page rendered from
    the row as it was before the refresh can never be cached after it.
``cf:foldin:dirty:<community id>`` (sorted set), ``cf:foldin:queued:<community id>``,
``cf:foldin:pending``, ``cf:foldin:seq``
    Members whose feeds are owed a fold-in refresh, scored by a global sequence number so the
    draining task removes only entries nobody marked again meanwhile; the flag that one drain
    task is queued or running (a lease, renewed while it drains); the communities with owed
    refreshes (the reconciler re-sends a task for any whose flag lapsed).

A community's identity is its id and creation time: ids are reused after a database restore or
a rolled-back test, and a record must never match another community that happens to share them.
The claim is random per computed run for the same reason.

If Redis is down, everything reads from the database, and after a failure the cache is left
alone for a few seconds instead of paying a failed connection on every request. A revocation
that cannot reach Redis still commits; records expire after ``CREDENTIAL_TTL`` seconds, which
bounds how long a Redis that was unreachable from the revoker (but not from the web processes)
could keep answering for the credential.

Without Redis (the embedded mode's local-memory cache, one per process) only pages are cached:
credentials and pointers change in other processes, which a per-process cache cannot hear about.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from typing import TYPE_CHECKING, Any

import redis
from django.conf import settings
from django.core.cache import cache, caches
from django.core.cache.backends.redis import RedisCache
from django.core.signals import setting_changed
from django.db import transaction
from django.db.models import F
from django.db.models.signals import post_delete, post_save
from django.dispatch import receiver

from feeds.models import AppCredential, Creator, FeedPointer, FeedRun, Item

if TYPE_CHECKING:
    from django.core.cache.backends.base import BaseCache

    from governance.models import Community

logger = logging.getLogger(__name__)

TIMEOUT_SECONDS = 3600  # pages
CREDENTIAL_TTL = 60
POINTER_TTL = 60
BACKOFF_SECONDS = 5.0
REVALIDATE = b"!"  # a credential record that sends readers to the database
_down_until = 0.0
_clients: dict[str, redis.Redis] = {}
_clients_lock = threading.Lock()


def available() -> bool:
    return time.monotonic() >= _down_until


def failed(exc: Exception) -> None:
    global _down_until
    if available():
        logger.warning("feed cache unavailable, serving from the database: %r", exc)
    _down_until = time.monotonic() + BACKOFF_SECONDS


class _Memo(threading.local):
    store: tuple[redis.Redis, BaseCache] | None = None
    resolved = False


_memo = _Memo()


@receiver(setting_changed)
def _forget_store(*, setting: str, **kwargs: Any) -> None:
    if setting == "CACHES":  # tests point the cache elsewhere
        _memo.resolved = False


def _client(location: str | list[str], options: dict[str, Any]) -> redis.Redis:
    """A redis-py client of the cache's primary server, one per process and URL.

    Built from the cache's own settings with redis-py's public ``from_url`` (Django's backend
    keeps its client private): the same server, database, credentials and TLS (``rediss://``).
    The primary, never a replica: a revocation marker must be read where it was written.
    """
    # Django's RedisCache takes a list, or one string of URLs separated by ";" or ",".
    url = location[0] if isinstance(location, list) else re.split("[;,]", location)[0]
    with _clients_lock:
        client = _clients.get(url)
        if client is None:
            # Django's own options (serializer, pool and parser classes) are not redis-py's.
            kwargs = {
                key: value
                for key, value in options.items()
                if key not in ("serializer", "pool_class", "parser_class")
            }
            client = _clients[url] = redis.Redis.from_url(url, **kwargs)
        return client


def redis_store() -> tuple[redis.Redis, BaseCache] | None:
    """The default cache's Redis client (one per process, reused) and the backend for keys.

    None when the cache is not Redis or is in its back-off after a failure.
    """
    if time.monotonic() < _down_until:
        return None
    memo = _memo
    if not memo.resolved:
        # Looking the backend up through ``caches`` on every request costs more than the rest
        # of the lookup; it is fixed for a thread until the CACHES setting changes.
        backend = caches["default"]
        memo.store = None
        if isinstance(backend, RedisCache):
            config = settings.CACHES["default"]
            memo.store = (_client(config["LOCATION"], config.get("OPTIONS", {})), backend)
        memo.resolved = True
    return memo.store


def community_identity(community: Community) -> str:
    return f"{community.pk}.{int(community.created_at.timestamp() * 1_000_000)}"


def _run_stamp(run: FeedRun) -> str:
    """``<run>.<claim>.<pointer revision>``: ``run`` as
    ``feeds.serving.selectors.feed_run_for_read`` returns it, which carries the community
    pointer's ``serving_revision``."""
    return f"{run.pk}.{run.claim}.{run.serving_revision}"  # type: ignore[attr-defined]


def credential_key(digest: str) -> str:
    return f"cf:cred:{digest}"


def pointer_key(slug: str) -> str:
    return f"cf:ptr:{slug}"


def page_key(*, slug: str, member: str, pinned: int | None, offset: int, limit: int | None) -> str:
    # The member's external id goes last: it may hold any non-space character, ':' included.
    return f"cf:page:{slug}:{pinned or 0}:{offset}:{limit or 0}:{member}"


def skeleton_key(*, slug: str, viewer: str, pinned: int | None, offset: int, limit: int) -> str:
    """A Bluesky feed skeleton page (``feeds.bluesky.xrpc``): ``viewer`` is the member's external id
    (their DID), or empty for the community skeleton everyone else gets."""
    return f"cf:skel:{slug}:{pinned or 0}:{offset}:{limit}:{viewer}"


def skeleton_cached(*, community: Community, key: str) -> bytes | None:
    """A cached skeleton page (``skeleton_key``) that is current, from Redis alone: one round
    trip reads the community's pointer record and the page, and the page is served only if its
    stamp is the pointer's (the generation and revision served now; with a cursor, only while
    the cursor's generation is the one served, as in the feed GET). A viewer's
    refreshed feed and changed mutes delete their pages (``member_pages_invalidate``), and
    pages are only written under the viewer's revision (``page_set``): nothing else to check.

    None without Redis, on a miss, or when anything does not match: the database decides.
    """
    store = redis_store()
    if store is None:
        return None
    client, backend = store
    try:
        pointer, page = client.mget(
            [backend.make_key(pointer_key(community.slug)), backend.make_key(key)]
        )
    except Exception as exc:
        failed(exc)
        return None
    if not isinstance(pointer, bytes) or not isinstance(page, bytes):
        return None
    identity, _, generation = pointer.partition(b"|")
    if identity != community_identity(community).encode():
        return None  # another community that had this slug
    # A page under a cursor's key carries the stamp of the generation the cursor pins: it
    # matches only while that generation is the one served (older ones may have been pruned).
    header, _, body = page.partition(b"\n")
    return body if header.partition(b"|")[0] == generation else None


def _write(fn: str, key: str, value: bytes | None, ttl: int, *, nx: bool) -> None:
    store = redis_store()
    if store is None:
        return
    client, backend = store
    try:
        if fn == "set":
            client.set(backend.make_key(key), value, ex=ttl, nx=nx)  # type: ignore[arg-type]
        else:
            client.delete(backend.make_key(key))
    except Exception as exc:  # any cache outage degrades to the database
        failed(exc)


def credential_publish(credential: AppCredential) -> None:
    """Cache an active credential read from the database (never over a revocation marker)."""
    community = credential.community
    record = f"{community_identity(community)}|{community.slug}|{' '.join(credential.scopes)}"
    key = credential_key(credential.secret_sha256)
    _write("set", key, record.encode(), CREDENTIAL_TTL, nx=True)


def credential_invalidate(credential: AppCredential) -> None:
    """Send readers of the credential to the database. Call before the change commits."""
    _write("set", credential_key(credential.secret_sha256), REVALIDATE, CREDENTIAL_TTL, nx=False)


@receiver(post_save, sender=AppCredential, dispatch_uid="feeds.serving.cache.credential_saved")
@receiver(post_delete, sender=AppCredential, dispatch_uid="feeds.serving.cache.credential_deleted")
def _credential_changed(*, instance: AppCredential, created: bool = False, **kwargs: Any) -> None:
    # Edits that bypass app_credential_revoke (the admin: scopes, revoked_at, a deletion) take
    # effect from the next request too. A new credential has nothing cached yet.
    if not created:
        credential_invalidate(instance)


def pointer_publish(*, community: Community, run: FeedRun) -> None:
    """Cache the run the database just named as the community's current one.

    Never over a record of the same community (a swap may have written a newer one since this
    request read the database), but over one left by another community that had this slug.
    """
    store = redis_store()
    if store is None:
        return
    client, backend = store
    identity = community_identity(community).encode()
    record = identity + b"|" + _run_stamp(run).encode()
    key = backend.make_key(pointer_key(community.slug))
    try:
        if not client.set(key, record, ex=POINTER_TTL, nx=True):
            cached = client.get(key)
            if isinstance(cached, bytes) and cached.partition(b"|")[0] != identity:
                client.set(key, record, ex=POINTER_TTL)
    except Exception as exc:
        failed(exc)


def pointer_changed(*, community: Community) -> None:
    """Call inside the transaction that moves the community's pointer.

    Deletes the cached pointer now (readers go to the database until the swap is visible), and
    once the transaction commits writes the committed pointer over whatever a reader may have
    put back in between.
    """
    if not isinstance(caches["default"], RedisCache):
        return
    _write("delete", pointer_key(community.slug), None, 0, nx=False)
    transaction.on_commit(lambda: _pointer_republish(community.pk))


def served_content_changed(*, community: Community) -> None:
    """Call inside the transaction of a change that alters what the served feeds show without
    a new run: a creator's opt-out, an item deactivated or edited, a creator renamed.

    Bumps the pointer's revision, which every cached page's stamp and every ETag name, so no
    page cached before the change is served after it commits (the database path re-renders it
    through ``feeds.serving.selectors``, which withdraws what is refused now). Every page of the
    community is rendered again once: a catalogue that changes all the time costs the cache
    its hits.
    """
    if FeedPointer.objects.filter(community=community).update(revision=F("revision") + 1):
        pointer_changed(community=community)


@receiver(post_save, sender=Item, dispatch_uid="feeds.serving.cache.item_saved")
@receiver(post_save, sender=Creator, dispatch_uid="feeds.serving.cache.creator_saved")
def _catalogue_saved(
    *, instance: Item | Creator, created: bool = False, raw: bool = False, **kwargs: Any
) -> None:
    # Edits one row at a time (the admin, whose item form saves the item with its credits, a
    # shell) count like the API's bulk upserts, which call served_content_changed themselves.
    # A new row is in nobody's feed yet, and a fixture being loaded (raw) touches nothing else.
    # (No post_delete receiver: it would make Django load every item of a community it
    # deletes, to send the signal.)
    if not created and not raw:
        served_content_changed(community=instance.community)


def _pointer_republish(community_id: int) -> None:
    pointer = (
        FeedPointer.objects.filter(community_id=community_id)
        .select_related("community", "run")
        .only(
            "revision",
            "community__id",
            "community__slug",
            "community__created_at",
            "run__id",
            "run__claim",
        )
        .first()
    )
    if pointer is None:
        return
    stamp = f"{pointer.run.pk}.{pointer.run.claim}.{pointer.revision}"
    record = f"{community_identity(pointer.community)}|{stamp}".encode()
    _write("set", pointer_key(pointer.community.slug), record, POINTER_TTL, nx=False)


def page_get(key: str, *, run: FeedRun) -> tuple[str, bytes] | None:
    """``(etag, body)`` of a cached page of ``run``, or None."""
    value = None
    store = redis_store()
    if store is not None:
        client, backend = store
        try:
            value = client.get(backend.make_key(key))
        except Exception as exc:
            failed(exc)
    elif available() and not isinstance(caches["default"], RedisCache):
        value = cache.get(key)
    if not isinstance(value, bytes):
        return None
    header, _, body = value.partition(b"\n")
    stamp, _, etag = header.partition(b"|")
    if stamp != _run_stamp(run).encode():
        return None
    return etag.decode(), body


def page_set(
    key: str,
    *,
    run: FeedRun,
    etag: str,
    body: bytes,
    guard: tuple[str, str, bytes] | None,
    ttl: int = TIMEOUT_SECONDS,
) -> None:
    """Cache a page for ``ttl`` seconds (at most ``TIMEOUT_SECONDS``); with Redis only if the
    member's revision is still ``guard``'s."""
    ttl = min(ttl, TIMEOUT_SECONDS)
    if ttl <= 0:
        return
    value = f"{_run_stamp(run)}|{etag}\n".encode() + body
    if isinstance(caches["default"], RedisCache):
        store = redis_store()
        if store is None or guard is None:
            return
        client, backend = store
        slug, member, revision = guard
        try:
            client.eval(
                _PAGE_SET_GUARDED,
                3,
                backend.make_key(key),
                backend.make_key(member_revision_key(slug, member)),
                backend.make_key(member_pages_key(slug, member)),
                value,
                ttl,
                revision,
                TIMEOUT_SECONDS,  # the member's set of pages outlives every page in it
            )
        except Exception as exc:
            failed(exc)
    elif available():
        cache.set(key, value, ttl)


# --- Fold-in: per-member page revisions and the queue of owed refreshes ------------------------

REVISION_TTL = 2 * TIMEOUT_SECONDS  # outlives every page written under the revision
FOLDIN_LEASE = 60  # seconds a drain task holds a community's flag without renewing it
PENDING_KEY = "cf:foldin:pending"
SEQUENCE_KEY = "cf:foldin:seq"


def member_revision_key(slug: str, member: str) -> str:
    return f"cf:mrev:{slug}:{member}"


def member_pages_key(slug: str, member: str) -> str:
    return f"cf:mpages:{slug}:{member}"


def _dirty_key(community_id: int) -> str:
    return f"cf:foldin:dirty:{community_id}"


def _flag_key(community_id: int) -> str:
    return f"cf:foldin:queued:{community_id}"


def page_guard(*, slug: str, member: str) -> tuple[str, str, bytes] | None:
    """The member's page revision; read it before the feed row, pass it to :func:`page_set`.

    None without Redis (the local-memory cache is checked against the row's ETag instead) or
    when Redis cannot be read (then nothing is cached).
    """
    store = redis_store()
    if store is None:
        return None
    client, backend = store
    try:
        value = client.get(backend.make_key(member_revision_key(slug, member)))
    except Exception as exc:
        failed(exc)
        return None
    return slug, member, value if isinstance(value, bytes) else b""


_PAGE_SET_GUARDED = """
if (redis.call('GET', KEYS[2]) or '') ~= ARGV[3] then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
redis.call('SADD', KEYS[3], KEYS[1])
redis.call('EXPIRE', KEYS[3], ARGV[4])
return 1
"""

_PAGES_INVALIDATE = """
for i = 1, #KEYS, 2 do
  redis.call('INCR', KEYS[i])
  redis.call('EXPIRE', KEYS[i], ARGV[1])
  local pages = redis.call('SMEMBERS', KEYS[i + 1])
  for j = 1, #pages, 500 do
    redis.call('DEL', unpack(pages, j, math.min(j + 499, #pages)))
  end
  redis.call('DEL', KEYS[i + 1])
end
return #KEYS / 2
"""


def member_pages_invalidate(*, slug: str, members: list[str]) -> None:
    """After a member's feed changed inside a generation: drop their cached pages for good.

    Call after the change commits. Without Redis there is nothing shared to drop: the database
    path compares the cached page's ETag with the row's (see feeds.serving.api).
    """
    store = redis_store()
    if store is None or not members:
        return
    client, backend = store
    keys = []
    for member in members:
        keys += [
            backend.make_key(member_revision_key(slug, member)),
            backend.make_key(member_pages_key(slug, member)),
        ]
    try:
        client.eval(_PAGES_INVALIDATE, len(keys), *keys, REVISION_TTL)
    except Exception as exc:
        failed(exc)


_FOLDIN_MARK = f"""
local seq = redis.call('INCR', KEYS[3])
for i = 2, #ARGV do redis.call('ZADD', KEYS[1], seq, ARGV[i]) end
redis.call('SADD', KEYS[4], ARGV[1])
if redis.call('SET', KEYS[2], '1', 'NX', 'EX', {FOLDIN_LEASE}) then
  return 1
end
return 0
"""

_FOLDIN_DONE = f"""
for i = 2, #ARGV, 2 do
  if redis.call('ZSCORE', KEYS[1], ARGV[i]) == ARGV[i + 1] then
    redis.call('ZREM', KEYS[1], ARGV[i])
  end
end
local left = redis.call('ZCARD', KEYS[1])
if left == 0 then
  redis.call('DEL', KEYS[2])
  redis.call('SREM', KEYS[3], ARGV[1])
else
  redis.call('EXPIRE', KEYS[2], {FOLDIN_LEASE})
end
return left
"""


def foldin_mark(*, community_id: int, member_ids: list[int]) -> bool | None:
    """Record that these members' feeds are owed a refresh.

    Returns True if the caller must send a drain task (nobody holds the community's flag),
    False if one is queued or running already, None without Redis (send the ids instead).
    """
    store = redis_store()
    if store is None:
        return None
    client, backend = store
    keys = [
        backend.make_key(_dirty_key(community_id)),
        backend.make_key(_flag_key(community_id)),
        backend.make_key(SEQUENCE_KEY),
        backend.make_key(PENDING_KEY),
    ]
    try:
        return bool(client.eval(_FOLDIN_MARK, 4, *keys, community_id, *member_ids))
    except Exception as exc:
        failed(exc)
        return None


def foldin_take(*, community_id: int, limit: int) -> list[tuple[int, bytes]] | None:
    """Up to ``limit`` owed members, oldest marks first, as ``(member id, mark)``; the marks
    go back to :func:`foldin_done`. None without Redis."""
    store = redis_store()
    if store is None:
        return None
    client, backend = store
    try:
        rows = client.zrange(
            backend.make_key(_dirty_key(community_id)),
            0,
            limit - 1,
            withscores=True,
            score_cast_func=bytes,
        )
    except Exception as exc:
        failed(exc)
        return None
    return [(int(member), score) for member, score in rows]


def foldin_done(*, community_id: int, taken: list[tuple[int, bytes]]) -> int:
    """Forget the taken members unless they were marked again meanwhile; returns how many are
    still owed (0: the community's flag is released, a later mark sends a new task)."""
    store = redis_store()
    if store is None:
        return 0
    client, backend = store
    keys = [
        backend.make_key(_dirty_key(community_id)),
        backend.make_key(_flag_key(community_id)),
        backend.make_key(PENDING_KEY),
    ]
    args: list[object] = [community_id]
    for member, score in taken:
        args += [member, score]
    try:
        return int(client.eval(_FOLDIN_DONE, 3, *keys, *args))
    except Exception as exc:
        failed(exc)
        return 0


def foldin_stranded() -> list[int]:
    """Communities owed refreshes whose drain task's flag lapsed (its message or worker was
    lost); the flag is taken again here, so the caller must send one task for each."""
    store = redis_store()
    if store is None:
        return []
    client, backend = store
    stranded = []
    try:
        for raw in client.smembers(backend.make_key(PENDING_KEY)):
            community_id = int(raw)
            flag = backend.make_key(_flag_key(community_id))
            if client.set(flag, b"1", nx=True, ex=FOLDIN_LEASE):
                stranded.append(community_id)
    except Exception as exc:
        failed(exc)
    return stranded
