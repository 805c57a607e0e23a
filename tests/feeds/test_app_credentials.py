"""App credentials: the moderators' page and session API, revocation, and per-app throttling."""

from __future__ import annotations

import json

import pytest
from django.test import Client
from django.urls import reverse

from feeds.credentials.auth import token_digest
from feeds.credentials.services import app_credential_create, app_credential_revoke
from feeds.models import AppCredential
from governance.models import AuditEntry, Community, Membership
from tests.factories import MembershipFactory, make_community, person_client

pytestmark = pytest.mark.django_db


def _csrf(client: Client, community: Community) -> str:
    """A valid CSRF token for ``client``: from the page for a manager, else set by hand."""
    client.get(reverse("app-credentials", args=[community.slug]))
    if "csrftoken" not in client.cookies:
        # The page is a 403 for this user; a token any page would have set still passes CSRF.
        client.cookies["csrftoken"] = "x" * 32
    return client.cookies["csrftoken"].value


def _post_json(client: Client, url: str, body: object, csrf: str | None) -> object:
    headers = {"HTTP_X_CSRFTOKEN": csrf} if csrf else {}
    return client.post(url, json.dumps(body), content_type="application/json", **headers)


# --- The page -----------------------------------------------------------------------------------


@pytest.mark.parametrize("role", ["moderator", "admin"])
def test_a_moderator_or_admin_issues_a_credential_and_sees_its_token_once(role: str) -> None:
    community = make_community("alpha")
    client = person_client(community, "mod", role)
    url = reverse("app-credentials", args=[community.slug])
    csrf = _csrf(client, community)

    response = client.post(
        url,
        {"name": "mobile", "scopes": ["feeds:read", "events:write"], "csrfmiddlewaretoken": csrf},
    )

    assert response.status_code == 200
    token = response.context["token"]
    assert token in response.content.decode()
    assert response["Cache-Control"] == "no-store"
    credential = AppCredential.objects.get(community=community, name="mobile")
    assert credential.secret_sha256 == token_digest(token)
    assert credential.scopes == ["events:write", "feeds:read"]
    listing = client.get(url).content.decode()
    assert credential.prefix in listing and "mobile" in listing
    assert token not in listing
    entry = AuditEntry.objects.get(community=community, action="app_credential.created")
    assert entry.actor_label == "mod"
    assert token not in entry.payload_json and credential.prefix in entry.payload_json


@pytest.mark.parametrize("role", ["member", None])
def test_a_plain_member_or_an_outsider_gets_403_on_the_page(role: str | None) -> None:
    community = make_community("alpha")
    client = person_client(community, "someone", role)
    url = reverse("app-credentials", args=[community.slug])
    assert client.get(url).status_code == 403
    assert client.post(url, {"name": "x", "scopes": ["feeds:read"]}).status_code == 403
    assert not AppCredential.objects.exists()


def test_an_anonymous_visitor_is_sent_to_log_in() -> None:
    community = make_community("alpha")
    response = Client().get(reverse("app-credentials", args=[community.slug]))
    assert response.status_code == 302
    assert "login/?next=/c/alpha/apps/" in response["Location"]


def test_the_form_shows_what_is_wrong() -> None:
    community = make_community("alpha")
    app_credential_create(community=community, name="mobile", scopes=["feeds:read"])
    client = person_client(community, "mod", "moderator")
    csrf = _csrf(client, community)
    url = reverse("app-credentials", args=[community.slug])

    no_scopes = client.post(url, {"name": "web", "csrfmiddlewaretoken": csrf})
    taken = client.post(
        url, {"name": "mobile", "scopes": ["feeds:read"], "csrfmiddlewaretoken": csrf}
    )

    assert no_scopes.status_code == 400
    assert no_scopes.context["form"].errors["scopes"]
    assert taken.status_code == 400
    assert "already exists" in taken.context["form"].errors["name"][0]
    assert "already exists" in taken.content.decode()
    assert AppCredential.objects.filter(community=community).count() == 1


def test_the_revoke_button_revokes_and_needs_a_post_with_csrf() -> None:
    community = make_community("alpha")
    credential, _ = app_credential_create(community=community, name="mobile", scopes=["feeds:read"])
    client = person_client(community, "mod", "admin")
    url = reverse("app-credential-revoke", args=[community.slug, credential.prefix])

    assert client.get(url).status_code == 405
    assert client.post(url).status_code == 403  # no CSRF token
    csrf = _csrf(client, community)
    response = client.post(url, {"csrfmiddlewaretoken": csrf})

    assert response.status_code == 302
    credential.refresh_from_db()
    assert credential.revoked_at is not None
    assert AuditEntry.objects.filter(action="app_credential.revoked").count() == 1
    # A second revoke changes nothing and audits nothing.
    client.post(url, {"csrfmiddlewaretoken": csrf})
    assert AuditEntry.objects.filter(action="app_credential.revoked").count() == 1


def test_a_moderator_cannot_revoke_another_communitys_credential() -> None:
    community = make_community("alpha")
    other = make_community("beta")
    credential, _ = app_credential_create(community=other, name="x", scopes=["feeds:read"])
    client = person_client(community, "mod", "moderator")
    csrf = _csrf(client, community)
    response = client.post(
        reverse("app-credential-revoke", args=[community.slug, credential.prefix]),
        {"csrfmiddlewaretoken": csrf},
    )
    assert response.status_code == 404
    credential.refresh_from_db()
    assert credential.revoked_at is None


# --- The session API ----------------------------------------------------------------------------


def test_the_api_issues_lists_and_revokes_and_revocation_applies_to_the_next_request() -> None:
    community = make_community("alpha")
    member = MembershipFactory(community=community)
    client = person_client(community, "mod", "moderator")
    csrf = _csrf(client, community)
    apps_url = reverse("api-app-credentials", args=[community.slug])

    issued = _post_json(client, apps_url, {"name": "web", "scopes": ["feeds:read"]}, csrf)
    assert issued.status_code == 201
    assert issued["Cache-Control"] == "no-store"  # the secret is shown once
    body = issued.json()
    token, prefix = body["token"], body["prefix"]
    assert token.startswith(f"cf_{prefix}_")
    assert body["revoked_at"] is None

    listed = client.get(apps_url)
    assert listed.status_code == 200
    assert [(c["name"], c["prefix"]) for c in listed.json()] == [("web", prefix)]
    assert "token" not in listed.json()[0]

    app = Client()
    choices_url = reverse("api-member-choices", args=[community.slug, member.external_id])
    assert app.get(choices_url, HTTP_AUTHORIZATION=f"Bearer {token}").status_code == 200

    revoked = _post_json(
        client, reverse("api-app-credential-revoke", args=[community.slug, prefix]), None, csrf
    )
    assert revoked.status_code == 200
    assert revoked.json()["revoked_at"] is not None
    refused = app.get(choices_url, HTTP_AUTHORIZATION=f"Bearer {token}")
    assert refused.status_code == 401
    assert refused.json()["error"] == "authentication_failed"


def test_the_api_refuses_writes_without_a_csrf_token() -> None:
    community = make_community("alpha")
    client = person_client(community, "mod", "moderator")
    response = _post_json(
        client,
        reverse("api-app-credentials", args=[community.slug]),
        {"name": "web", "scopes": ["feeds:read"]},
        None,
    )
    assert response.status_code == 403
    assert "CSRF" in str(response.json()["detail"])
    assert not AppCredential.objects.exists()


@pytest.mark.parametrize("role", ["member", None])
def test_the_api_refuses_members_and_outsiders(role: str | None) -> None:
    community = make_community("alpha")
    credential, _ = app_credential_create(community=community, name="x", scopes=["feeds:read"])
    client = person_client(community, "someone", role)
    csrf = _csrf(client, community)
    apps_url = reverse("api-app-credentials", args=[community.slug])
    revoke_url = reverse("api-app-credential-revoke", args=[community.slug, credential.prefix])

    assert client.get(apps_url).status_code == 403
    assert (
        _post_json(client, apps_url, {"name": "y", "scopes": ["feeds:read"]}, csrf).status_code
        == 403
    )
    assert _post_json(client, revoke_url, None, csrf).status_code == 403
    credential.refresh_from_db()
    assert credential.revoked_at is None


def test_the_api_refuses_an_app_token_and_an_anonymous_caller() -> None:
    community = make_community("alpha")
    _, token = app_credential_create(community=community, name="x", scopes=["feeds:read"])
    url = reverse("api-app-credentials", args=[community.slug])
    assert Client().get(url).status_code == 403
    assert Client().get(url, HTTP_AUTHORIZATION=f"Bearer {token}").status_code == 403


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"name": "web", "scopes": []}, "scopes"),
        ({"name": "web", "scopes": ["admin:all"]}, "scopes"),
        ({"name": 7, "scopes": ["feeds:read"]}, "name"),
        ({"name": "taken", "scopes": ["feeds:read"]}, "name"),
    ],
)
def test_the_api_answers_bad_input_with_a_400_naming_the_field(body: dict, field: str) -> None:
    community = make_community("alpha")
    app_credential_create(community=community, name="taken", scopes=["feeds:read"])
    client = person_client(community, "mod", "admin")
    csrf = _csrf(client, community)
    response = _post_json(client, reverse("api-app-credentials", args=[community.slug]), body, csrf)
    assert response.status_code == 400
    assert response.json()["error"] == "invalid"
    assert field in response.json()["detail"]


def test_revoking_an_unknown_prefix_is_a_404() -> None:
    community = make_community("alpha")
    client = person_client(community, "mod", "admin")
    csrf = _csrf(client, community)
    url = reverse("api-app-credential-revoke", args=[community.slug, "nosuchprefix"])
    assert _post_json(client, url, None, csrf).status_code == 404


def test_a_revoked_name_can_be_issued_again() -> None:
    community = make_community("alpha")
    old, _ = app_credential_create(community=community, name="web", scopes=["feeds:read"])
    app_credential_revoke(credential=old)
    new, _ = app_credential_create(community=community, name="web", scopes=["feeds:read"])
    assert new.prefix != old.prefix


# --- Throttling ---------------------------------------------------------------------------------


def test_an_app_over_its_rate_gets_429_whatever_address_it_claims(settings) -> None:
    settings.COMMONFEED_APP_RATE = "3/min"
    community = make_community("alpha")
    member: Membership = MembershipFactory(community=community)
    _, token = app_credential_create(community=community, name="busy", scopes=["feeds:read"])
    _, other = app_credential_create(community=community, name="calm", scopes=["feeds:read"])
    url = reverse("api-member-choices", args=[community.slug, member.external_id])
    client = Client()

    statuses = [
        client.get(
            url,
            HTTP_AUTHORIZATION=f"Bearer {token}",
            HTTP_X_FORWARDED_FOR=f"203.0.113.{i}",
            REMOTE_ADDR=f"198.51.100.{i}",
        ).status_code
        for i in range(6)
    ]
    throttled = client.get(url, HTTP_AUTHORIZATION=f"Bearer {token}", REMOTE_ADDR="10.9.9.9")

    assert statuses == [200, 200, 200, 429, 429, 429]
    assert throttled.status_code == 429
    assert throttled.json()["error"] == "throttled"
    assert int(throttled["Retry-After"]) > 0
    assert client.get(url, HTTP_AUTHORIZATION=f"Bearer {other}").status_code == 200


def test_ingestion_is_throttled_per_credential_too(settings) -> None:
    settings.COMMONFEED_APP_RATE = "1/min"
    community = make_community("alpha")
    _, token = app_credential_create(community=community, name="busy", scopes=["events:write"])
    url = reverse("api-members", args=[community.slug])
    body = json.dumps({"members": [{"id": "m1"}]})

    def send() -> int:
        return (
            Client()
            .post(url, body, content_type="application/json", HTTP_AUTHORIZATION=f"Bearer {token}")
            .status_code
        )

    assert [send(), send()] == [200, 429]


def test_a_bad_token_is_refused_by_authentication_not_counted(settings) -> None:
    settings.COMMONFEED_APP_RATE = "1/min"
    community = make_community("alpha")
    member = MembershipFactory(community=community)
    credential, token = app_credential_create(community=community, name="x", scopes=["feeds:read"])
    url = reverse("api-member-choices", args=[community.slug, member.external_id])
    forged = f"cf_{credential.prefix}_not-the-secret"
    for _ in range(3):
        assert Client().get(url, HTTP_AUTHORIZATION=f"Bearer {forged}").status_code == 401
    # Forged requests naming its prefix did not use up the real app's allowance.
    assert Client().get(url, HTTP_AUTHORIZATION=f"Bearer {token}").status_code == 200


def test_requests_are_let_through_when_the_throttle_cache_is_down(settings) -> None:
    from feeds.credentials import throttling

    settings.COMMONFEED_APP_RATE = "1/min"
    community = make_community("alpha")
    member = MembershipFactory(community=community)
    _, token = app_credential_create(community=community, name="x", scopes=["feeds:read"])
    url = reverse("api-member-choices", args=[community.slug, member.external_id])
    settings.CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": "redis://127.0.0.1:1/0",  # nothing listens there
        }
    }
    throttling._down_until = 0.0
    try:
        for _ in range(3):
            assert Client().get(url, HTTP_AUTHORIZATION=f"Bearer {token}").status_code == 200
        assert throttling._down_until > 0  # it noticed, and backs off
    finally:
        throttling._down_until = 0.0
