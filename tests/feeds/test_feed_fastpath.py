"""The feed GET's Redis fast path (feeds.fastpath): same answers as the database path, no SQL.

Every test here runs with requests sent both ways the fast path is deployed: through Django's
handler (the fast path inside the view, as under ASGI) and through ``WSGIFastPath`` in front of
it (as ``config/wsgi.py`` serves them).

These need the default cache to be Redis (REDIS_URL set); with the embedded mode's local-memory
cache there is no fast path and they are skipped (test_feed_api.py covers that mode).
"""

from __future__ import annotations

from typing import Any

import pytest
from django.core.cache import caches
from django.core.cache.backends.redis import RedisCache
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from feeds import fastpath, feedcache, redis_wire
from feeds.selectors import feed_run_for_read
from feeds.services import (
    app_credential_create,
    app_credential_revoke,
    feed_run_execute,
    feed_run_request,
)
from tests.factories import WSGIClient, make_community, small_catalogue

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def redis_cache() -> None:
    if not isinstance(caches["default"], RedisCache):
        pytest.skip("the fast path needs the Redis cache (REDIS_URL)")
    feedcache._down_until = 0.0


@pytest.fixture(autouse=True, params=["near", "no-near"])
def near_cache(request: Any, settings: Any, monkeypatch: pytest.MonkeyPatch) -> bool:
    """Every test runs with the near cache on, leasing the most throttle tokens whatever the
    rate (so that nearly every request after the first two is a near-cache hit), and off."""
    near = request.param == "near"
    settings.COMMONFEED_FEED_NEAR_CACHE_SECONDS = 10 if near else 0
    if near:
        monkeypatch.setattr(fastpath, "_lease", lambda rate: fastpath._LEASE_MAX)
    fastpath._near.clear(0)
    fastpath._near.keys.clear()
    return near


@pytest.fixture(params=["django", "wsgi"])
def client(request: Any) -> Any:
    """Django's test client, or the same requests through WSGIFastPath first."""
    return Client() if request.param == "django" else WSGIClient()


class _Spy:
    """Counts the Redis round trips of the fast path."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls = 0
        real = redis_wire.call

        def call(*args: Any, **kwargs: Any) -> Any:
            self.calls += 1
            return real(*args, **kwargs)

        monkeypatch.setattr(redis_wire, "call", call)


def _computed(slug: str = "alpha") -> tuple[Any, dict[str, Any]]:
    community = make_community(slug)
    data = small_catalogue(community)
    feed_run_execute(run_id=feed_run_request(community=community).pk)
    return community, data


def _url(slug: str, member: str, query: str = "") -> str:
    return reverse("api-member-feed", args=[slug, member]) + (f"?{query}" if query else "")


def _get(client: Client, url: str, token: str, **extra: str) -> Any:
    return client.get(url, HTTP_AUTHORIZATION=f"Bearer {token}", **extra)


def _counted(client: Client, url: str, token: str, **extra: str) -> tuple[Any, int]:
    """The response and how many SQL queries it took."""
    with CaptureQueriesContext(connection) as queries:
        response = _get(client, url, token, **extra)
    return response, len(queries)


def _headers(response: Any) -> dict[str, str]:
    return {k: v for k, v in response.headers.items() if k != "Date"}


@pytest.mark.parametrize("query", ["", "limit=3"])
def test_a_warm_read_takes_no_sql_and_matches_the_database_path_byte_for_byte(
    client: Client, query: str
) -> None:
    community, data = _computed()
    _, token = app_credential_create(community=community, name="app", scopes=["feeds:read"])
    url = _url(community.slug, data["members"][0].external_id, query)

    cold, cold_queries = _counted(client, url, token)
    warm, warm_queries = _counted(client, url, token)

    assert cold.status_code == warm.status_code == 200
    assert cold_queries > 0 and warm_queries == 0
    assert warm.content == cold.content
    assert _headers(warm) == _headers(cold)


def test_the_304_of_the_fast_path_matches_the_database_paths(client: Client) -> None:
    community, data = _computed()
    _, token = app_credential_create(community=community, name="app", scopes=["feeds:read"])
    url = _url(community.slug, data["members"][0].external_id)
    etag = _get(client, url, token)["ETag"]  # fills the cache
    feedcache.redis_store()[0].delete(  # type: ignore[index]
        caches["default"].make_key(feedcache.pointer_key(community.slug))
    )
    from_database, database_queries = _counted(client, url, token, HTTP_IF_NONE_MATCH=etag)
    from_cache, cache_queries = _counted(client, url, token, HTTP_IF_NONE_MATCH=f'"x", {etag}')

    assert database_queries > 0 and cache_queries == 0
    assert from_database.status_code == from_cache.status_code == 304
    assert from_cache.content == from_database.content == b""
    assert _headers(from_cache) == _headers(from_database)


def test_a_revoked_credential_fails_on_the_next_request_after_fast_reads(client: Client) -> None:
    community, data = _computed()
    credential, token = app_credential_create(
        community=community, name="app", scopes=["feeds:read"]
    )
    url = _url(community.slug, data["members"][0].external_id)
    _get(client, url, token)
    assert _counted(client, url, token)[1] == 0  # served from the cache

    app_credential_revoke(credential=credential)
    # A request that read the credential as active just before the revocation committed and
    # fills the cache afterwards cannot bring it back.
    credential.revoked_at = None
    feedcache.credential_publish(credential)

    for _ in range(2):
        refused = _get(client, url, token)
        assert refused.status_code == 401
        assert refused.json()["error"] == "authentication_failed"


def test_edits_outside_the_revoke_service_apply_to_the_next_request(client: Client) -> None:
    community, data = _computed()
    credential, token = app_credential_create(
        community=community, name="app", scopes=["feeds:read"]
    )
    url = _url(community.slug, data["members"][0].external_id)
    _get(client, url, token)
    assert _counted(client, url, token)[1] == 0  # served from the cache

    credential.scopes = ["events:write"]  # as the admin site saves it
    credential.save()
    assert _get(client, url, token).status_code == 403
    credential.delete()
    assert _get(client, url, token).status_code == 401


def test_an_app_cannot_read_another_community_even_when_both_are_cached(client: Client) -> None:
    alpha, alpha_data = _computed("alpha")
    beta, _ = _computed("beta")
    _, alpha_token = app_credential_create(community=alpha, name="a", scopes=["feeds:read"])
    _, beta_token = app_credential_create(community=beta, name="b", scopes=["feeds:read"])
    url = _url(alpha.slug, alpha_data["members"][0].external_id)
    assert _get(client, url, alpha_token).status_code == 200
    _get(client, _url(beta.slug, "nobody"), beta_token)  # beta's credential record is cached

    response = _get(client, url, beta_token)

    assert response.status_code == 404
    assert response.json()["error"] == "not_found"


def test_a_credential_without_the_scope_never_takes_the_fast_path(client: Client) -> None:
    community, data = _computed()
    _, reader = app_credential_create(community=community, name="r", scopes=["feeds:read"])
    _, writer = app_credential_create(community=community, name="w", scopes=["events:write"])
    url = _url(community.slug, data["members"][0].external_id)
    _get(client, url, reader)  # the page is cached
    for _ in range(2):
        assert _get(client, url, writer).status_code == 403


def test_the_fast_path_is_throttled_per_credential_whatever_address_it_claims(
    client: Client, settings: Any
) -> None:
    settings.COMMONFEED_APP_RATE = "3/min"
    community, data = _computed()
    _, token = app_credential_create(community=community, name="busy", scopes=["feeds:read"])
    _, other = app_credential_create(community=community, name="calm", scopes=["feeds:read"])
    url = _url(community.slug, data["members"][0].external_id)

    # Every request counts once, whether the fast path answers it or hands it to DRF.
    statuses = [
        _get(
            client, url, token, HTTP_X_FORWARDED_FOR=f"203.0.113.{i}", REMOTE_ADDR=f"10.0.0.{i}"
        ).status_code
        for i in range(6)
    ]
    throttled = _get(client, url, token)

    assert statuses == [200, 200, 200, 429, 429, 429]
    assert throttled.json()["error"] == "throttled"
    assert 0 < int(throttled["Retry-After"]) <= 60
    assert _get(client, url, other).status_code == 200


def test_a_swap_is_served_from_the_next_request_and_a_late_reader_cannot_undo_it(
    client: Client, django_capture_on_commit_callbacks: Any
) -> None:
    community, data = _computed()
    _, token = app_credential_create(community=community, name="app", scopes=["feeds:read"])
    url = _url(community.slug, data["members"][0].external_id)
    first = _get(client, url, token).json()["run"]
    assert _get(client, url, token).json()["run"] == first  # from the cache

    queued = feed_run_request(community=community)
    with django_capture_on_commit_callbacks(execute=True):
        newer = feed_run_execute(run_id=queued.pk)
    # A reader that looked the pointer up before the swap committed writes it back late.
    feedcache.pointer_publish(
        community=community, run=feed_run_for_read(community=community, run_id=first)
    )

    assert _get(client, url, token).json()["run"] == newer.pk
    response, queries = _counted(client, url, token)
    assert response.json()["run"] == newer.pk and queries == 0


def test_a_cached_page_of_a_pruned_generation_is_not_served(client: Client) -> None:
    community, data = _computed()
    _, token = app_credential_create(community=community, name="app", scopes=["feeds:read"])
    member = data["members"][0].external_id
    cursor = _get(client, _url(community.slug, member, "limit=3"), token).json()["cursor"]
    page_url = _url(community.slug, member, f"limit=3&cursor={cursor}")
    second = _get(client, page_url, token)
    assert _counted(client, page_url, token)[1] == 0  # the cursor's page is cached

    for _ in range(2):  # two newer runs: the first generation's feeds are pruned
        feed_run_execute(run_id=feed_run_request(community=community).pk)
    _get(client, _url(community.slug, member), token)  # the newest pointer is cached again
    gone = _get(client, page_url, token)

    assert second.status_code == 200
    assert gone.status_code == 410
    assert gone.json()["error"] == "gone"


@pytest.mark.parametrize(
    "query",
    ["limit=03", "limit=3.0", "limit=0", "cursor=%20", "limit=1001", "limit=3&limit=3"],
)
def test_unusual_parameters_get_the_database_paths_answer(client: Client, query: str) -> None:
    community, data = _computed()
    _, token = app_credential_create(community=community, name="app", scopes=["feeds:read"])
    url = _url(community.slug, data["members"][0].external_id, query)
    first = _get(client, url, token)
    second, queries = _counted(client, url, token)
    assert queries > 0
    assert (second.status_code, second.content) == (first.status_code, first.content)


def test_a_parameter_given_twice_is_a_400_even_when_the_page_is_cached(client: Client) -> None:
    community, data = _computed()
    _, token = app_credential_create(community=community, name="app", scopes=["feeds:read"])
    member = data["members"][0].external_id
    assert _get(client, _url(community.slug, member, "limit=3"), token).status_code == 200
    twice = _get(client, _url(community.slug, member, "limit=3&limit=3"), token)
    assert twice.status_code == 400
    assert twice.json()["detail"]["limit"] == ["Give this parameter once."]


def test_the_packed_commands_are_the_resp_of_mget_incrby_expire_pttl() -> None:
    a, b, c, d, lease, period = b"cred", b"ptr", b"page:x:\xc3\xa9", b"thr", b"7", b"60"
    filled = fastpath._COMMANDS % (
        *(len(a), a, len(b), b, len(c), c),
        *(len(d), d, len(lease), lease),
        *(len(d), d, 2, period),
        *(len(d), d),
    )
    assert filled == (
        redis_wire.pack(b"MGET", a, b, c)
        + redis_wire.pack(b"INCRBY", d, lease)
        + redis_wire.pack(b"EXPIRE", d, period, b"NX")
        + redis_wire.pack(b"PTTL", d)
    )
    assert redis_wire.pack(b"CLIENT", b"CACHING", b"YES") == fastpath._CACHING


def test_the_wire_reads_pipelined_replies_and_drops_a_connection_after_an_error() -> None:
    client, backend = feedcache.redis_store()  # type: ignore[misc]
    key = backend.make_key("cf:test:wire").encode()
    client.delete(key)
    pool = client.connection_pool
    big = b"x" * 200_000  # several socket reads

    replies = redis_wire.call(
        pool,
        redis_wire.pack(b"SET", key, big)
        + redis_wire.pack(b"MGET", key, key + b":missing")
        + redis_wire.pack(b"INCR", key + b":n")
        + redis_wire.pack(b"DEL", key, key + b":n"),
        replies=4,
    )
    assert replies == [b"OK", [big, None], 1, 2]

    with pytest.raises(redis_wire.WireError):
        redis_wire.call(pool, redis_wire.pack(b"NOSUCHCOMMAND"))
    assert redis_wire._local.sock is None  # dropped, and the next call connects again
    assert redis_wire.call(pool, redis_wire.pack(b"PING")) == [b"PONG"]


# --- The near cache ------------------------------------------------------------------------------


# Tests about the near cache itself run with it on only.
near_only = pytest.mark.parametrize("near_cache", ["near"], indirect=True)


def _warmed(client: Client) -> tuple[Any, str, str]:
    """A credential, its token and a member's feed URL, read twice: the database path filled
    Redis, then the fast path filled this thread's near cache."""
    community, data = _computed()
    credential, token = app_credential_create(
        community=community, name="app", scopes=["feeds:read"]
    )
    url = _url(community.slug, data["members"][0].external_id)
    _get(client, url, token)
    _get(client, url, token)
    return credential, token, url


@near_only
def test_a_stale_page_in_the_near_cache_sends_the_request_to_redis_not_the_database(
    client: Client, near_cache: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    # As when a page was rewritten in Redis and its invalidation push has not reached this
    # thread yet: the thread holds the current pointer and a page of an older stamp.
    _, token, url = _warmed(client)
    fresh = _get(client, url, token)
    stale = [key for key, (value, _) in fastpath._near.values.items() if b"\n" in value]
    assert len(stale) == 1
    value, expires = fastpath._near.values[stale[0]]
    fastpath._near.values[stale[0]] = (b"0.old.0|" + value.partition(b"|")[2], expires)
    spy = _Spy(monkeypatch)

    response, queries = _counted(client, url, token)

    assert (response.status_code, response.content) == (200, fresh.content)
    assert queries == 0 and spy.calls == 1


def test_repeated_reads_take_no_redis_round_trip_and_answer_the_same_bytes(
    client: Client, near_cache: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    community, data = _computed()
    _, token = app_credential_create(community=community, name="app", scopes=["feeds:read"])
    url = _url(community.slug, data["members"][0].external_id)
    cold = _get(client, url, token)  # the database path fills Redis
    _get(client, url, token)  # the fast path reads Redis
    spy = _Spy(monkeypatch)

    warm = [_counted(client, url, token) for _ in range(10)]

    assert all(response.content == cold.content for response, _ in warm)
    assert all(_headers(response) == _headers(cold) for response, _ in warm)
    assert all(queries == 0 for _, queries in warm)
    # Near cache: no round trip at all; without it, one per request.
    assert spy.calls == (0 if near_cache else 10)


@near_only
def test_a_revocation_reaches_a_thread_that_serves_from_its_near_cache(
    client: Client, near_cache: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    credential, token, url = _warmed(client)
    spy = _Spy(monkeypatch)
    assert _get(client, url, token).status_code == 200 and spy.calls == 0  # near-cache hit

    app_credential_revoke(credential=credential)

    assert _get(client, url, token).status_code == 401


@near_only
def test_a_swap_and_a_fold_in_refresh_reach_the_near_cache(
    client: Client, near_cache: bool, django_capture_on_commit_callbacks: Any
) -> None:
    community, data = _computed()
    _, token = app_credential_create(community=community, name="app", scopes=["feeds:read"])
    member = data["members"][0].external_id
    url = _url(community.slug, member)
    first = _get(client, url, token)
    assert _get(client, url, token).content == first.content

    with django_capture_on_commit_callbacks(execute=True):
        newer = feed_run_execute(run_id=feed_run_request(community=community).pk)
    assert _get(client, url, token).json()["run"] == newer.pk

    # A fold-in refresh rewrites the member's feed inside the generation and drops their pages.
    fresh = _get(client, url, token)
    feedcache.member_pages_invalidate(slug=community.slug, members=[member])
    response, queries = _counted(client, url, token)
    assert queries > 0  # not the near cache's copy: the database path answered
    assert response.content == fresh.content


@near_only
def test_a_lost_connection_empties_the_near_cache(
    client: Client, near_cache: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, token, url = _warmed(client)
    redis_wire._drop()  # as after an error: pushes sent meanwhile would be lost
    spy = _Spy(monkeypatch)

    assert _get(client, url, token).status_code == 200
    assert spy.calls == 1


@near_only
def test_a_connection_the_server_closed_is_noticed_before_the_near_cache_answers(
    client: Client, near_cache: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, token, url = _warmed(client)
    assert redis_wire._local.sock is not None
    host, port = redis_wire._local.sock.getsockname()[:2]
    # As a Redis restart or a client-kill would: pushes sent from now on would never arrive.
    caches["default"]._cache.get_client(None, write=True).client_kill(f"{host}:{port}")
    spy = _Spy(monkeypatch)

    assert _get(client, url, token).status_code == 200
    assert spy.calls == 1  # the near cache was emptied: a new connection, a round trip
    assert redis_wire._local.sock is not None
    assert redis_wire._local.sock.getsockname()[1] != port


def test_leased_throttle_tokens_never_let_a_credential_past_its_rate(
    client: Client, settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings.COMMONFEED_APP_RATE = "12/min"
    monkeypatch.setattr(fastpath, "_lease", lambda rate: 5)
    community, data = _computed()
    _, token = app_credential_create(community=community, name="app", scopes=["feeds:read"])
    url = _url(community.slug, data["members"][0].external_id)

    statuses = [_get(client, url, token).status_code for _ in range(16)]

    assert statuses == [200] * 12 + [429] * 4


def test_the_wire_hands_over_tracking_pushes_and_keeps_a_push_cut_in_two() -> None:
    client, backend = feedcache.redis_store()  # type: ignore[misc]
    key = backend.make_key("cf:test:tracked").encode()
    client.set(key, b"v1")
    pool = client.connection_pool
    redis_wire.invalidations()

    read = redis_wire.call(
        pool,
        fastpath._CACHING + redis_wire.pack(b"MGET", key),
        replies=2,
        tracking=True,
    )
    assert read == [b"OK", [b"v1"]]
    epoch = redis_wire.epoch()
    assert redis_wire.poll(pool) == epoch and redis_wire.invalidations() == []

    client.set(key, b"v2")
    client.ping()  # the writer's fence (feeds.feedcache._fence)
    assert redis_wire.poll(pool) == epoch
    assert redis_wire.invalidations() == [key]
    client.delete(key)

    # A flush is a push with a null key list; a push cut between two reads waits for its end.
    push = b">2\r\n$10\r\ninvalidate\r\n*1\r\n$3\r\nabc\r\n"
    flush = b">2\r\n$10\r\ninvalidate\r\n_\r\n"
    assert redis_wire._take_frames(push[:20], 0) == ([], push[:20])
    assert redis_wire._take_frames(push + flush + b":7\r\n", 1) == ([7], b"")
    assert redis_wire.invalidations() == [b"abc", None]
    redis_wire._drop()
    assert redis_wire.poll(pool) == 0 and redis_wire.epoch() == 0
