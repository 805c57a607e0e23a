"""The feed GET's Redis fast path (feeds.fastpath): same answers as the database path, no SQL.

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

from feeds import feedcache
from feeds.models import FeedRun
from feeds.services import (
    app_credential_create,
    app_credential_revoke,
    feed_run_execute,
    feed_run_request,
)
from tests.factories import make_community, small_catalogue

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def redis_cache() -> None:
    if not isinstance(caches["default"], RedisCache):
        pytest.skip("the fast path needs the Redis cache (REDIS_URL)")
    feedcache._down_until = 0.0


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
    feedcache.pointer_publish(community=community, run=FeedRun.objects.get(pk=first))

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


@pytest.mark.parametrize("query", ["limit=03", "limit=3.0", "limit=0", "cursor=%20", "limit=1001"])
def test_unusual_parameters_get_the_database_paths_answer(client: Client, query: str) -> None:
    community, data = _computed()
    _, token = app_credential_create(community=community, name="app", scopes=["feeds:read"])
    url = _url(community.slug, data["members"][0].external_id, query)
    first = _get(client, url, token)
    second, queries = _counted(client, url, token)
    assert queries > 0
    assert (second.status_code, second.content) == (first.status_code, first.content)


def test_the_packed_commands_are_the_resp_of_mget_incr_expire() -> None:
    from feeds import fastpath, redis_wire

    a, b, c, d, period = b"cred", b"ptr", b"page:x:\xc3\xa9", b"thr", b"60"
    filled = fastpath._COMMANDS % (len(a), a, len(b), b, len(c), c, len(d), d, len(d), d, 2, period)
    assert filled == (
        redis_wire.pack(b"MGET", a, b, c)
        + redis_wire.pack(b"INCR", d)
        + redis_wire.pack(b"EXPIRE", d, period, b"NX")
    )


def test_the_wire_reads_pipelined_replies_and_drops_a_connection_after_an_error() -> None:
    from feeds import redis_wire

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
