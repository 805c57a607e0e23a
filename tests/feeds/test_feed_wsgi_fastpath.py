"""``feeds.fastpath.WSGIFastPath``: feed GET cache hits answered in front of Django.

Django's own checks still decide every request (ALLOWED_HOSTS, the HTTPS redirect), its
middleware's headers are on every answer, and anything but a hit reaches Django unchanged.
test_feed_fastpath.py runs all the fast path's tests through this layer as well.
"""

from __future__ import annotations

from typing import Any

import pytest
from django.core.cache import caches
from django.core.cache.backends.redis import RedisCache
from django.http import HttpRequest, HttpResponse
from django.urls import path, reverse

from config import urls as config_urls
from feeds import fastpath, feedcache
from feeds.services import app_credential_create, feed_run_execute, feed_run_request
from tests.factories import WSGIClient, make_community, small_catalogue

pytestmark = pytest.mark.django_db


def _shadowing_view(request: HttpRequest, **kwargs: Any) -> HttpResponse:
    return HttpResponse(b"shadowed", content_type="text/plain")


# A URLconf in which another view comes before the feed's on the same paths (used by one test).
urlpatterns = [
    path("api/v1/communities/<slug:slug>/feeds/<str:member_external_id>/", _shadowing_view),
    *config_urls.urlpatterns,
]


@pytest.fixture(autouse=True, params=["near", "no-near"])
def redis_cache(request: Any, settings: Any) -> None:
    if not isinstance(caches["default"], RedisCache):
        pytest.skip("the fast path needs the Redis cache (REDIS_URL)")
    feedcache._down_until = 0.0
    settings.COMMONFEED_FEED_NEAR_CACHE_SECONDS = 10 if request.param == "near" else 0
    fastpath._near.clear(0)
    fastpath._near.keys.clear()


@pytest.fixture
def feed() -> tuple[str, str]:
    """A computed feed's URL and a token that may read it."""
    community = make_community("alpha")
    data = small_catalogue(community)
    feed_run_execute(run_id=feed_run_request(community=community).pk)
    _, token = app_credential_create(community=community, name="app", scopes=["feeds:read"])
    url = reverse("api-member-feed", args=[community.slug, data["members"][0].external_id])
    return url, token


def _headers(response: Any) -> dict[str, str]:
    return dict(response.headers.items())


def test_config_wsgi_serves_through_the_fast_path() -> None:
    from config.wsgi import application

    assert isinstance(application, fastpath.WSGIFastPath)


def test_hits_never_reach_django_and_answer_what_django_answers(feed: tuple[str, str]) -> None:
    url, token = feed
    client = WSGIClient()
    auth = {"HTTP_AUTHORIZATION": f"Bearer {token}"}
    cold = client.get(url, **auth)  # a miss: Django's database path fills the cache
    warm = [client.get(url, **auth) for _ in range(3)]
    not_modified = client.get(url, HTTP_IF_NONE_MATCH=cold["ETag"], **auth)

    assert client.django_calls == 1
    assert cold.status_code == 200 and not_modified.status_code == 304
    for response in warm:
        assert response.status_code == 200
        assert response.content == cold.content
        assert _headers(response) == _headers(cold)
    # Django's middleware headers are there: security headers, Content-Length.
    assert {"X-Frame-Options", "X-Content-Type-Options", "Referrer-Policy"} <= set(cold.headers)
    assert warm[0]["Content-Length"] == str(len(cold.content))
    assert not_modified.content == b"" and not_modified["ETag"] == cold["ETag"]


def test_a_host_outside_allowed_hosts_gets_djangos_400(
    feed: tuple[str, str], settings: Any
) -> None:
    url, token = feed
    settings.ALLOWED_HOSTS = ["feeds.example"]
    client = WSGIClient()
    auth = {"HTTP_AUTHORIZATION": f"Bearer {token}"}
    assert client.get(url, HTTP_HOST="feeds.example", **auth).status_code == 200
    assert client.get(url, HTTP_HOST="feeds.example", **auth).status_code == 200
    calls = client.django_calls

    refused = client.get(url, HTTP_HOST="attacker.example", **auth)

    assert refused.status_code == 400
    assert client.django_calls == calls + 1


def test_the_https_redirect_and_hsts_apply_as_in_django(
    feed: tuple[str, str], settings: Any
) -> None:
    url, token = feed
    settings.SECURE_SSL_REDIRECT = True
    settings.SECURE_HSTS_SECONDS = 3600
    client = WSGIClient()  # the middleware reads these settings when first used
    auth = {"HTTP_AUTHORIZATION": f"Bearer {token}"}

    cold = client.get(url, secure=True, **auth)
    calls = client.django_calls
    warm = client.get(url, secure=True, **auth)
    plain = client.get(url, **auth)  # the page is cached: still redirected

    assert plain.status_code == 301 and plain["Location"].startswith("https://")
    assert cold.status_code == warm.status_code == 200
    assert client.django_calls == calls + 1  # the warm one was the fast path's
    assert warm["Strict-Transport-Security"] == "max-age=3600"
    assert _headers(warm) == _headers(cold)


def test_with_middleware_it_does_not_know_it_leaves_every_request_to_django(
    feed: tuple[str, str], settings: Any
) -> None:
    url, token = feed
    settings.MIDDLEWARE = [*settings.MIDDLEWARE, "django.middleware.gzip.GZipMiddleware"]
    client = WSGIClient()
    for _ in range(3):
        assert client.get(url, HTTP_AUTHORIZATION=f"Bearer {token}").status_code == 200
    assert client.django_calls == 3


def test_a_pattern_django_tries_first_keeps_its_requests(
    feed: tuple[str, str], settings: Any
) -> None:
    url, token = feed
    for _ in range(2):  # the page is cached
        assert WSGIClient().get(url, HTTP_AUTHORIZATION=f"Bearer {token}").status_code == 200
    settings.ROOT_URLCONF = __name__
    client = WSGIClient()
    for _ in range(2):
        response = client.get(url, HTTP_AUTHORIZATION=f"Bearer {token}")
        assert response.content == b"shadowed"
    assert client.django_calls == 2


def test_an_error_in_the_fast_path_is_logged_and_django_answers(
    feed: tuple[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    url, token = feed
    client = WSGIClient()
    auth = {"HTTP_AUTHORIZATION": f"Bearer {token}"}
    expected = client.get(url, **auth)
    real, failures = fastpath._respond, []

    def respond_once_failing(*args: Any, **kwargs: Any) -> Any:
        if not failures:
            failures.append(1)
            raise RuntimeError("a bug")
        return real(*args, **kwargs)

    monkeypatch.setattr(fastpath, "_respond", respond_once_failing)
    logged: list[str] = []
    monkeypatch.setattr(fastpath.logger, "exception", lambda message, *args: logged.append(message))
    calls = client.django_calls
    response = client.get(url, **auth)

    assert response.status_code == 200 and response.content == expected.content
    assert client.django_calls == calls + 1
    assert logged and "feed fast path failed" in logged[0]
