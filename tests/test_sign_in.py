"""Signing in and out on the site's own page, for members as much as for staff."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.test import Client
from django.urls import reverse

from governance.models import Membership
from tests.factories import MembershipFactory, make_community

pytestmark = pytest.mark.django_db

PASSWORD = "a-long-password-1"


@pytest.fixture
def member() -> Membership:
    """A plain member: no staff flag, so the admin's login form would turn them away."""
    user = get_user_model().objects.create_user("mira", password=PASSWORD)
    return MembershipFactory(community=make_community("garden"), user=user, role="member")


@pytest.mark.parametrize(
    "name", ["member-settings", "app-credentials", "feed-runs", "governance:proposal-new"]
)
def test_a_page_that_needs_an_account_sends_a_member_to_sign_in_and_back(
    client: Client, member: Membership, name: str
) -> None:
    target = reverse(name, args=["garden"])
    response = client.get(target)
    assert response.status_code == 302
    assert response.url == f"{reverse('login')}?next={target}"

    signed_in = client.post(
        reverse("login"), {"username": "mira", "password": PASSWORD, "next": target}
    )
    assert signed_in.status_code == 302 and signed_in.url == target
    # Signed in now: the page answers (or refuses a plain member) itself.
    assert client.get(target).status_code in (200, 403)


def test_signing_in_without_a_page_to_return_to_lands_on_the_home_page(
    client: Client, member: Membership
) -> None:
    response = client.post(reverse("login"), {"username": "mira", "password": PASSWORD})
    assert response.status_code == 302 and response.url == reverse("home")
    home = client.get(response.url).content.decode()
    assert "Signed in as mira" in home


def test_a_wrong_password_is_refused_on_the_page(client: Client, member: Membership) -> None:
    response = client.post(reverse("login"), {"username": "mira", "password": "not-it"})
    assert response.status_code == 200
    assert "did not match" in response.content.decode()
    assert "_auth_user_id" not in client.session


def test_signing_out_lands_on_the_home_page(client: Client, member: Membership) -> None:
    client.force_login(member.user)
    response = client.post(reverse("logout"))
    assert response.status_code == 302 and response.url == reverse("home")
    assert "_auth_user_id" not in client.session


def test_only_staff_see_the_admin_in_the_header(client: Client, member: Membership) -> None:
    admin = reverse("admin:index")
    assert f'href="{admin}"' not in client.get("/").content.decode()
    client.force_login(member.user)
    assert f'href="{admin}"' not in client.get("/").content.decode()
    member.user.is_staff = True
    member.user.save()
    assert f'href="{admin}"' in client.get("/").content.decode()


def test_a_community_s_address_leads_to_its_page(client: Client, member: Membership) -> None:
    response = client.get("/c/garden/")
    assert response.status_code == 302
    assert response.url == reverse("governance:home", args=["garden"])
    assert client.get("/c/nowhere/").status_code == 404


@pytest.mark.django_db(transaction=True)
def test_a_member_signs_in_from_the_header_sets_their_choices_and_signs_out(
    live_server, page, tmp_path: Path
) -> None:
    community = make_community("garden")
    user = get_user_model().objects.create_user("mira", password=PASSWORD)
    MembershipFactory(community=community, user=user, role="member")

    page.goto(f"{live_server.url}/c/garden/")
    page.wait_for_url("**/c/garden/governance/")
    page.click("header.site >> text=Sign in")
    page.fill("#id_username", "mira")
    page.fill("#id_password", PASSWORD)
    page.click("button[type=submit]")
    # Back on the page they came from, signed in.
    page.wait_for_url("**/c/garden/governance/")
    assert "Signed in as mira" in page.locator("header.site").inner_text()
    page.click("text=Your choices")
    page.wait_for_url("**/c/garden/settings/")
    assert page.locator("h1").inner_text()
    page.screenshot(path=str(tmp_path / "settings.png"), full_page=True)

    page.click("header.site >> text=Sign out")
    page.wait_for_url(f"{live_server.url}/")
    assert "Sign in" in page.locator("header.site").inner_text()
    # Signed out: the settings page sends them to sign in again.
    page.goto(f"{live_server.url}/c/garden/settings/")
    page.wait_for_url(f"{live_server.url}/accounts/login/?next=/c/garden/settings/")


def test_refusals_and_missing_pages_are_explained_on_the_site_s_pages(
    client: Client, member: Membership
) -> None:
    client.force_login(member.user)
    refused = client.get("/c/garden/members/someone-else/feed/")
    assert refused.status_code == 403
    body = refused.content.decode()
    assert '<header class="site">' in body and "Signed in as mira" in body
    assert "Only the member and the community&#x27;s moderators and admins" in body

    missing = client.get("/c/nowhere/")
    assert missing.status_code == 404
    assert '<header class="site">' in missing.content.decode()
    assert "There is nothing at <code>/c/nowhere/</code>" in missing.content.decode()


def test_a_server_error_page_renders_without_a_request_context(rf: Any) -> None:
    from django.views.defaults import server_error

    response = server_error(rf.get("/"))
    assert response.status_code == 500
    assert "Something went wrong on our side" in response.content.decode()
