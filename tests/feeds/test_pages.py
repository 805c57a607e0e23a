from __future__ import annotations

from pathlib import Path

import pytest
from django.contrib.auth import get_user_model

from feeds.credentials.services import app_credential_create
from feeds.models import Creator
from governance.models import Membership
from tests.factories import make_community, run_computed, small_catalogue

pytestmark = pytest.mark.django_db(transaction=True)


def test_a_visitor_sees_the_community_a_member_reads_their_feed_and_staff_open_the_admin(
    live_server,
    page,
    tmp_path: Path,
) -> None:
    community = make_community("garden")
    data = small_catalogue(community)
    run_computed(community)
    get_user_model().objects.create_superuser("admin", "admin@example.org", "a-long-password-1")
    member = data["members"][0]
    member.user = get_user_model().objects.create_user("mira", password="a-long-password-1")
    member.save()

    page.goto(live_server.url + "/")
    assert page.locator("#community-garden h2").inner_text().startswith("Garden")
    assert "Serving feeds from run" in page.locator("#community-garden").inner_text()
    # A feed reveals its member's taste: visitors get no links to members' feeds.
    assert page.locator("#community-garden >> text=Your feed").count() == 0
    assert page.locator(f"#community-garden >> text={member.external_id}").count() == 0
    # The stylesheet is served by the project itself.
    css = page.request.get(live_server.url + "/static/commonfeed/site.css")
    assert css.ok

    page.click("header.site >> text=Sign in")
    page.fill("#id_username", "mira")
    page.fill("#id_password", "a-long-password-1")
    page.click("button[type=submit]")
    page.click("#community-garden >> text=Your feed")
    page.wait_for_url(f"**/c/garden/members/{member.external_id}/feed/")
    rows = page.locator("tbody tr")
    assert rows.count() > 0
    assert rows.first.locator("td").first.inner_text() == "1"
    page.screenshot(path=str(tmp_path / "member-feed.png"), full_page=True)
    page.click("header.site >> text=Sign out")

    # Staff sign in on the site's page; the header then leads to the admin.
    assert page.locator("header.site >> text=Admin").count() == 0
    page.click("header.site >> text=Sign in")
    page.fill("#id_username", "admin")
    page.fill("#id_password", "a-long-password-1")
    page.click("button[type=submit]")
    page.click("header.site >> text=Admin")
    page.wait_for_url(live_server.url + "/admin/")
    assert "Feed runs" in page.content()


def test_an_unknown_member_page_is_a_404(client) -> None:
    community = make_community("garden")
    small_catalogue(community)
    client.force_login(_user_of(community, "moderator"))
    assert client.get("/c/garden/members/nobody/feed/").status_code == 404


def _user_of(community, role: str, member: Membership | None = None):  # type: ignore[no-untyped-def]
    """A user linked to ``member`` (or to a new membership with ``role``)."""
    user = get_user_model().objects.create_user(f"u-{role}-{member and member.pk}", password="x")
    if member is None:
        Membership.objects.create(
            community=community, user=user, role=role, external_id=f"u-{role}"
        )
    else:
        Membership.objects.filter(pk=member.pk).update(user=user)
    return user


def test_a_member_s_feed_page_is_for_the_member_and_the_moderators(client) -> None:
    community = make_community("garden")
    data = small_catalogue(community)
    run_computed(community)
    mine, theirs = data["members"][0], data["members"][1]
    page = f"/c/garden/members/{mine.external_id}/feed/"

    anonymous = client.get(page)
    assert anonymous.status_code == 302 and anonymous.url.startswith("/accounts/login/")
    client.force_login(_user_of(community, "member", mine))
    own = client.get(page)
    assert own.status_code == 200 and 'href="/c/garden/settings/"' in own.content.decode()
    assert client.get(f"/c/garden/members/{theirs.external_id}/feed/").status_code == 403
    # No hint whether another member exists.
    assert client.get("/c/garden/members/nobody/feed/").status_code == 403
    home = client.get("/").content.decode()
    assert f'href="{page}"' in home and f"/members/{theirs.external_id}/feed/" not in home

    for role in ("moderator", "admin"):
        client.force_login(_user_of(community, role))
        theirs_page = client.get(f"/c/garden/members/{theirs.external_id}/feed/")
        assert theirs_page.status_code == 200
        assert 'href="/c/garden/settings/"' not in theirs_page.content.decode()  # not theirs
        assert f"/c/garden/members/{theirs.external_id}/feed/" in client.get("/").content.decode()

    client.force_login(get_user_model().objects.create_user("outsider", password="x"))
    assert client.get(page).status_code == 403
    client.force_login(get_user_model().objects.create_superuser("root", password="x"))
    assert client.get(page).status_code == 403  # staff use the admin, not members' feeds


def test_the_home_page_counts_interactions_live_until_a_run_records_them(client) -> None:
    community = make_community("garden")
    small_catalogue(community)
    live = community.interactions.count()

    before = client.get("/").content.decode()
    assert "(at the last run)" not in before
    assert f"<dd>{live}</dd>" in before

    run = run_computed(community)
    # A stale figure from the run is shown as such, without a scan of the interactions table.
    run.stats = {**run.stats, "n_interactions": live + 1000}
    run.save(update_fields=["stats"])
    after = client.get("/").content.decode()
    assert "(at the last run)" in after
    assert f"{live + 1000:,}" in after


def test_a_creator_opts_out_in_the_browser_and_apps_stop_getting_their_items(
    live_server, page, tmp_path: Path
) -> None:
    community = make_community("atelier")
    data = small_catalogue(community)
    creator, member = data["creators"][0], data["members"][0]
    user = get_user_model().objects.create_user("maker", password="pw-maker-long-enough")
    Membership.objects.filter(pk=member.pk).update(user=user)
    Creator.objects.filter(pk=creator.pk).update(member=member)
    run_computed(community)
    _, token = app_credential_create(community=community, name="app", scopes=["feeds:read"])

    def creators_shown() -> set[str]:
        shown = set()
        for m in data["members"]:
            response = page.request.get(
                f"{live_server.url}/api/v1/communities/atelier/feeds/{m.external_id}/",
                headers={"Authorization": f"Bearer {token}"},
            )
            assert response.ok
            shown |= {c["external_id"] for e in response.json()["items"] for c in e["creators"]}
        return shown

    assert creator.external_id in creators_shown()
    page.goto(f"{live_server.url}/accounts/login/")
    page.fill("#id_username", "maker")
    page.fill("#id_password", "pw-maker-long-enough")
    page.click("button[type=submit], input[type=submit]")
    page.wait_for_load_state()
    page.goto(f"{live_server.url}/c/atelier/creators/{creator.external_id}/")
    page.click("text=Stop recommending my items")
    page.wait_for_load_state()
    assert "no longer recommended" in page.content()
    assert page.locator("#opt-out button").inner_text() == "Recommend my items again"
    page.screenshot(path=str(tmp_path / "creator-opted-out.png"), full_page=True)
    assert creator.external_id not in creators_shown()  # no feed run in between


def test_a_feed_entry_s_reasons_read_as_sentences(client) -> None:
    community = make_community("garden")
    data = small_catalogue(community)
    community.items.update(provenance="ai_generated")  # labelled by the default policy
    run_computed(community)
    member = data["members"][0]
    client.force_login(_user_of(community, "member", member))

    html = client.get(f"/c/garden/members/{member.external_id}/feed/").content.decode()
    assert "Labelled: AI-generated." in html
    assert ".;" not in html and ". Labelled: AI-generated." in html
