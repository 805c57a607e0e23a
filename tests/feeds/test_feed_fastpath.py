"""The feed GET's cache hits (feeds.serving.feed_get): same answers as the database path, no SQL.

The view is an ordinary Django view: every request here goes through Django's handler, URL
resolution and middleware, as ``config.wsgi`` serves it.

These need the default cache to be Redis (REDIS_URL set); with the embedded mode's local-memory
cache every read takes the database path and they are skipped (test_feed_api.py covers that
mode). test_feed_redis_tls.py checks a hit, a swap and a revocation against Redis over TLS.
"""

from __future__ import annotations

import gzip
from typing import Any

import pytest
import redis
from django.core.cache import caches
from django.core.cache.backends.redis import RedisCache
from django.core.handlers.wsgi import WSGIHandler
from django.db import connection
from django.http import HttpRequest, HttpResponse
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import path, reverse

from config import urls as config_urls
from feeds.credentials.services import app_credential_create, app_credential_revoke
from feeds.runs.services import feed_run_execute, feed_run_request
from feeds.serving import cache as feedcache
from feeds.serving.selectors import feed_run_for_read
from tests.factories import make_community, small_catalogue

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def redis_cache() -> None:
    if not isinstance(caches["default"], RedisCache):
        pytest.skip("cache hits need the Redis cache (REDIS_URL)")
    feedcache._down_until = 0.0


class _Spy:
    """Counts Redis round trips: single commands and pipelines sent through redis-py."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls = 0
        command, pipeline = redis.Redis.execute_command, redis.client.Pipeline.execute

        def execute_command(client: Any, *args: Any, **kwargs: Any) -> Any:
            self.calls += 1
            return command(client, *args, **kwargs)

        def execute(pipe: Any, *args: Any, **kwargs: Any) -> Any:
            self.calls += 1
            return pipeline(pipe, *args, **kwargs)

        monkeypatch.setattr(redis.Redis, "execute_command", execute_command)
        monkeypatch.setattr(redis.client.Pipeline, "execute", execute)


def _shadowing_view(request: HttpRequest, **kwargs: Any) -> HttpResponse:
    return HttpResponse(b"shadowed", content_type="text/plain")


# A URLconf in which another view comes before the feed's on the same paths (used by one test).
urlpatterns = [
    path("api/v1/communities/<slug:slug>/feeds/<str:member_external_id>/", _shadowing_view),
    *config_urls.urlpatterns,
]


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


def test_repeated_reads_take_one_redis_round_trip_and_no_sql_each(
    client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    community, data = _computed()
    _, token = app_credential_create(community=community, name="app", scopes=["feeds:read"])
    url = _url(community.slug, data["members"][0].external_id)
    cold = _get(client, url, token)  # the database path fills Redis
    spy = _Spy(monkeypatch)

    warm = [_counted(client, url, token) for _ in range(10)]

    assert all(response.content == cold.content for response, _ in warm)
    assert all(_headers(response) == _headers(cold) for response, _ in warm)
    assert all(queries == 0 for _, queries in warm)
    assert spy.calls == 10


def test_a_swap_and_a_fold_in_refresh_reach_the_next_request(
    client: Client, django_capture_on_commit_callbacks: Any
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
    assert queries > 0  # not the cached copy: the database path answered
    assert response.content == fresh.content


def test_a_connection_the_server_closed_does_not_turn_the_cache_off(client: Client) -> None:
    community, data = _computed()
    _, token = app_credential_create(community=community, name="app", scopes=["feeds:read"])
    url = _url(community.slug, data["members"][0].external_id)
    cold = _get(client, url, token)
    assert _counted(client, url, token)[1] == 0
    store = feedcache.redis_store()
    assert store is not None
    # As a Redis restart or a client-kill would: the pooled connections are dead. Only those on
    # this suite's database: other processes sharing the server keep theirs.
    db = store[0].connection_pool.connection_kwargs.get("db", 0)
    for entry in store[0].client_list(_type="normal"):
        if int(entry.get("db", -1)) == int(db):
            store[0].client_kill_filter(_id=entry["id"], skipme=False)

    response = _get(client, url, token)
    again, again_queries = _counted(client, url, token)

    assert response.status_code == again.status_code == 200
    assert response.content == again.content == cold.content
    assert again_queries == 0 and feedcache.available()


def test_throttle_counts_never_let_a_credential_past_its_rate(
    client: Client, settings: Any
) -> None:
    settings.COMMONFEED_APP_RATE = "12/min"
    community, data = _computed()
    _, token = app_credential_create(community=community, name="app", scopes=["feeds:read"])
    url = _url(community.slug, data["members"][0].external_id)

    statuses = [_get(client, url, token).status_code for _ in range(16)]

    assert statuses == [200] * 12 + [429] * 4


# --- Through Django's stack ----------------------------------------------------------------------


def test_config_wsgi_is_djangos_own_application() -> None:
    from config.wsgi import application

    assert type(application) is WSGIHandler


def test_hits_carry_djangos_middleware_headers(client: Client) -> None:
    community, data = _computed()
    _, token = app_credential_create(community=community, name="app", scopes=["feeds:read"])
    url = _url(community.slug, data["members"][0].external_id)
    cold = _get(client, url, token)
    warm, queries = _counted(client, url, token)
    not_modified = _get(client, url, token, HTTP_IF_NONE_MATCH=cold["ETag"])

    assert queries == 0 and warm.content == cold.content
    assert {"X-Frame-Options", "X-Content-Type-Options", "Referrer-Policy"} <= set(warm.headers)
    assert warm["Content-Length"] == str(len(cold.content))
    assert _headers(warm) == _headers(cold)
    assert not_modified.status_code == 304 and not_modified["ETag"] == cold["ETag"]


def test_a_host_outside_allowed_hosts_gets_djangos_400_on_a_cached_page(
    client: Client, settings: Any
) -> None:
    community, data = _computed()
    _, token = app_credential_create(community=community, name="app", scopes=["feeds:read"])
    url = _url(community.slug, data["members"][0].external_id)
    settings.ALLOWED_HOSTS = ["feeds.example"]
    assert _get(client, url, token, HTTP_HOST="feeds.example").status_code == 200
    assert _counted(client, url, token, HTTP_HOST="feeds.example")[1] == 0  # cached

    assert _get(client, url, token, HTTP_HOST="attacker.example").status_code == 400


def test_the_https_redirect_and_hsts_apply_to_a_cached_page(client: Client, settings: Any) -> None:
    community, data = _computed()
    _, token = app_credential_create(community=community, name="app", scopes=["feeds:read"])
    url = _url(community.slug, data["members"][0].external_id)
    settings.SECURE_SSL_REDIRECT = True
    settings.SECURE_HSTS_SECONDS = 3600

    cold = _get(client, url, token, secure=True)
    warm, queries = _counted(client, url, token, secure=True)
    plain = _get(client, url, token)

    assert plain.status_code == 301 and plain["Location"].startswith("https://")
    assert cold.status_code == warm.status_code == 200 and queries == 0
    assert warm["Strict-Transport-Security"] == "max-age=3600"
    assert _headers(warm) == _headers(cold)


def test_any_middleware_applies_to_a_cached_page(client: Client, settings: Any) -> None:
    community, data = _computed()
    _, token = app_credential_create(community=community, name="app", scopes=["feeds:read"])
    url = _url(community.slug, data["members"][0].external_id)
    settings.MIDDLEWARE = ["django.middleware.gzip.GZipMiddleware", *settings.MIDDLEWARE]
    cold = _get(client, url, token, HTTP_ACCEPT_ENCODING="gzip")

    warm, queries = _counted(client, url, token, HTTP_ACCEPT_ENCODING="gzip")

    assert queries == 0
    assert warm["Content-Encoding"] == cold["Content-Encoding"] == "gzip"
    # Django's GZip pads each response at random (against BREACH): compare what it carries.
    assert gzip.decompress(warm.content) == gzip.decompress(cold.content)


def test_a_pattern_django_tries_first_keeps_its_requests(client: Client, settings: Any) -> None:
    community, data = _computed()
    _, token = app_credential_create(community=community, name="app", scopes=["feeds:read"])
    url = _url(community.slug, data["members"][0].external_id)
    for _ in range(2):  # the page is cached
        assert _get(client, url, token).status_code == 200
    settings.ROOT_URLCONF = __name__

    assert _get(client, url, token).content == b"shadowed"
