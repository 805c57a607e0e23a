"""Failed sign-ins are throttled, on the site's form and the admin's, and an outage of the cache
never locks anyone out."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.core.cache import cache
from django.test import Client
from django.urls import reverse

pytestmark = pytest.mark.django_db

PASSWORD = "a-long-password-1"


def _client() -> Client:
    # A fresh address each time, so counts never carry over between tests or runs (the cache
    # may be a Redis that outlives the test database).
    return Client(REMOTE_ADDR=f"2001:db8::{uuid.uuid4().hex[:4]}:{uuid.uuid4().hex[:4]}")


def _sign_in(client: Client, username: str, password: str, url: str | None = None) -> Any:
    return client.post(url or reverse("login"), {"username": username, "password": password})


def test_past_the_limit_even_the_right_password_is_refused_with_429(settings: Any) -> None:
    settings.COMMONFEED_LOGIN_FAILURES = 5
    get_user_model().objects.create_user("nadia", password=PASSWORD)
    get_user_model().objects.create_user("omar", password=PASSWORD)
    client = _client()

    for _ in range(5):
        wrong = _sign_in(client, "nadia", "wrong")
        assert wrong.status_code == 200  # the form again, with Django's error
    refused = _sign_in(client, "Nadia ", PASSWORD)  # the same account, however it is typed

    assert refused.status_code == 429
    assert refused["Retry-After"] == str(settings.COMMONFEED_LOGIN_WINDOW_SECONDS)
    assert "Too many failed sign-ins" in refused.content.decode()
    assert "_auth_user_id" not in client.session
    # Another account from the same address is not locked out by nadia's failures.
    assert _sign_in(client, "omar", PASSWORD).status_code == 302


def test_one_address_trying_many_accounts_is_throttled_too(settings: Any) -> None:
    settings.COMMONFEED_LOGIN_FAILURES = 2
    get_user_model().objects.create_user("pia", password=PASSWORD)
    client = _client()

    for n in range(10):  # 2 x 5 failures, each on another account
        _sign_in(client, f"guess-{n}", "wrong")

    assert _sign_in(client, "pia", PASSWORD).status_code == 429
    assert _sign_in(_client(), "pia", PASSWORD).status_code == 302  # elsewhere, fine


def test_the_admin_sign_in_is_throttled_as_well(settings: Any) -> None:
    settings.COMMONFEED_LOGIN_FAILURES = 3
    get_user_model().objects.create_superuser("root-user", password=PASSWORD)
    client = _client()
    url = reverse("admin:login")

    for _ in range(3):
        _sign_in(client, "root-user", "wrong", url)
    refused = _sign_in(client, "root-user", PASSWORD, url)

    assert "Too many failed sign-ins" in refused.content.decode()
    assert "_auth_user_id" not in client.session


def test_an_unreachable_cache_does_not_lock_anyone_out(
    settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings.COMMONFEED_LOGIN_FAILURES = 1
    get_user_model().objects.create_user("quinn", password=PASSWORD)

    def down(*args: Any, **kwargs: Any) -> Any:
        raise ConnectionError("cache down")

    for name in ("get_many", "add", "incr"):
        monkeypatch.setattr(cache, name, down)
    client = _client()
    for _ in range(3):
        assert _sign_in(client, "quinn", "wrong").status_code == 200

    assert _sign_in(client, "quinn", PASSWORD).status_code == 302
