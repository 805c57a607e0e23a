"""The creator dashboard: what a creator gets from the served feeds (counted from the stored
feeds themselves), what keeps their items out, and who may see it."""

from __future__ import annotations

import math
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.core.cache import cache
from django.test import Client
from django.urls import reverse

from feeds.choices.services import creator_choices_set, member_choices_set
from feeds.insights.creators import creator_report
from feeds.models import MemberChoices, MemberFeed
from feeds.runs.services import feed_run_execute, feed_run_request
from governance.models import AuditEntry, Membership
from governance.selectors import policy_of, policy_version_current
from governance.services import policy_version_create
from ranking.policy import policy_validate
from tests.factories import make_community, small_catalogue

pytestmark = pytest.mark.django_db


@pytest.fixture
def studio(django_user_model) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    """A community whose policy refuses the tag ``banned``, which one of the creator's items
    carries; the creator is member 0 (user cre); member 1 is a moderator (user mod), member 2
    a plain member (user mem) who muted the creator."""
    cache.clear()
    community = make_community("studio")
    data = small_catalogue(community, members=16, items=40)
    creator = data["creators"][0]
    own_items = [item for item in data["items"] if item.credits.first().creator_id == creator.pk]
    own_items[0].tags = ["banned"]
    own_items[0].save(update_fields=["tags"])
    current = policy_version_current(community=community)
    document = policy_of(current).model_dump(mode="json")
    document["refusals"] = [{"kind": "tag", "tag": "banned", "reason": "Off-topic here."}]
    document["model"]["factors"] = 8
    policy_version_create(
        community=community,
        policy=policy_validate(document),
        parent=current,
        actor=None,
        make_current=True,
    )
    users = {}
    for index, (username, role) in enumerate((("cre", "member"), ("mod", "moderator"))):
        member = data["members"][index]
        users[username] = django_user_model.objects.create_user(username=username)
        Membership.objects.filter(pk=member.pk).update(user=users[username], role=role)
    users["mem"] = django_user_model.objects.create_user(username="mem")
    Membership.objects.filter(pk=data["members"][2].pk).update(user=users["mem"])
    creator.member = data["members"][0]
    creator.save(update_fields=["member"])
    choices = MemberChoices.objects.create(member=data["members"][3])
    choices.muted_creators.add(creator)
    run = feed_run_execute(run_id=feed_run_request(community=community).pk)
    return {**data, "community": community, "creator": creator, "own": own_items, "run": run}


def _client(user: Any) -> Client:
    client = Client()
    client.force_login(user)
    return client


def test_the_counts_are_those_of_the_stored_feeds(studio) -> None:  # type: ignore[no-untyped-def]
    community, creator, run = studio["community"], studio["creator"], studio["run"]
    own = {item.pk for item in studio["own"]}
    places, members, top = 0, set(), 0
    total = 0
    for feed in MemberFeed.objects.filter(run=run):
        total += len(feed.item_ids)
        for rank, item in enumerate(feed.item_ids, start=1):
            if item in own:
                places += 1
                members.add(feed.member_id)
                top += rank <= 10
    report = creator_report(community=community, creator=creator)
    assert report is not None and report.run_id == run.pk
    assert (report.impressions, report.members_reached, report.top) == (places, len(members), top)
    assert report.total_impressions == total and places > 0
    assert report.share == pytest.approx(places / total)
    assert sum(row.impressions for row in report.items) == places
    assert report.reasons and all(count > 0 for _, count in report.reasons)


@pytest.mark.parametrize("depth", [10, 3])
def test_attention_is_counted_by_position_in_the_top_places_and_overall(
    studio, settings, depth: int
) -> None:  # type: ignore[no-untyped-def]
    settings.COMMONFEED_VISIBLE_DEPTH = depth
    community, creator, run = studio["community"], studio["creator"], studio["run"]
    own = {item.pk for item in studio["own"]}
    mine = mine_top = total = total_top = 0.0
    places_top, seen_top = 0, set()
    for feed in MemberFeed.objects.filter(run=run):
        for rank, item in enumerate(feed.item_ids, start=1):
            weight = 1 / math.log2(rank + 1)  # a first place 1, a tenth 0.29
            total += weight
            total_top += weight if rank <= depth else 0.0
            places_top += rank <= depth
            if item in own:
                mine += weight
                if rank <= depth:
                    mine_top += weight
                    seen_top.add(feed.member_id)
    report = creator_report(community=community, creator=creator)
    assert report is not None and report.depth == depth and report.total_top == places_top
    assert report.exposure == pytest.approx(mine) and mine > 0
    assert report.exposure_at_depth == pytest.approx(mine_top)
    assert report.exposure_share == pytest.approx(mine / total)
    assert report.exposure_share_at_depth == pytest.approx(mine_top / total_top)
    assert report.members_reached_at_depth == len(seen_top)
    html = _client(get_user_model().objects.get(username="cre")).get(
        reverse("creator-dashboard", args=[community.slug, creator.external_id])
    )
    text = html.content.decode()
    assert f"Where members look: the top {depth} places" in text
    assert f"{report.exposure_share_at_depth:.4f}" in text and f"<th>Top {depth}</th>" in text


def test_the_counts_leave_out_what_is_withdrawn_when_served(studio) -> None:  # type: ignore[no-untyped-def]
    community, creator = studio["community"], studio["creator"]
    before = creator_report(community=community, creator=creator)
    assert before is not None and before.impressions > 0 and before.withdrawn_impressions == 0

    # A member mutes the creator after the run: their entries no longer count.
    shown_to = {
        feed.member_id: sum(item in {i.pk for i in studio["own"]} for item in feed.item_ids)
        for feed in MemberFeed.objects.filter(run=studio["run"])
    }
    fan = max(shown_to, key=lambda member: shown_to[member])
    member_choices_set(
        member=Membership.objects.get(pk=fan),
        actor=None,
        muted_creators=[creator.external_id],
    )
    cache.clear()  # a mute does not recount at once (the report's cache names no member)
    muted = creator_report(community=community, creator=creator)
    assert muted is not None
    assert muted.impressions == before.impressions - shown_to[fan]
    assert muted.withdrawn_impressions == shown_to[fan]

    # An opt-out withdraws every place, and recounts at once (the pointer revision moved).
    creator_choices_set(creator=creator, opted_out=True, actor=None)
    gone = creator_report(community=community, creator=creator)
    assert gone is not None
    assert (gone.impressions, gone.members_reached, gone.top) == (0, 0, 0)
    assert gone.withdrawn_impressions == before.impressions
    assert all(row.impressions == 0 for row in gone.items)


def test_it_names_what_keeps_items_out(studio) -> None:  # type: ignore[no-untyped-def]
    report = creator_report(community=studio["community"], creator=studio["creator"])
    assert report is not None
    assert report.refusals == [("Off-topic here.", 1)]
    refused = next(row for row in report.items if row.item_id == studio["own"][0].pk)
    assert refused.impressions == 0 and refused.refused_because == ["Off-topic here."]
    assert report.muted_by == 1
    assert report.provenance_treatment == [("human", "allow", len(studio["own"]))]


def test_fans_and_new_audience_add_up(studio) -> None:  # type: ignore[no-untyped-def]
    report = creator_report(community=studio["community"], creator=studio["creator"])
    assert report is not None
    assert 0 <= report.reached_fans <= min(report.fans, report.members_reached)
    assert report.new_audience == report.members_reached - report.reached_fans
    # Nobody is recommended an item they engaged with, so fans reached saw *other* items.
    assert report.fans > 0


def test_the_creator_and_moderators_see_the_page_others_do_not(studio) -> None:  # type: ignore[no-untyped-def]
    url = reverse("creator-dashboard", args=["studio", studio["creator"].external_id])
    users = get_user_model().objects
    page = _client(users.get(username="cre")).get(url)
    assert page.status_code == 200
    html = page.content.decode()
    assert "Off-topic here." in html and "Why members see these items" in html
    assert _client(users.get(username="mod")).get(url).status_code == 200
    assert _client(users.get(username="mem")).get(url).status_code == 403
    assert Client().get(url).status_code == 302  # to the login page
    missing = reverse("creator-dashboard", args=["studio", "nobody"])
    assert _client(users.get(username="mod")).get(missing).status_code == 404
    settings_page = _client(users.get(username="cre")).get(
        reverse("member-settings", args=["studio"])
    )
    assert url in settings_page.content.decode()


def test_before_any_run_it_says_so(django_user_model) -> None:  # type: ignore[no-untyped-def]
    community = make_community("fresh")
    data = small_catalogue(community, members=3, items=6)
    user = django_user_model.objects.create_user(username="boss")
    Membership.objects.filter(pk=data["members"][0].pk).update(user=user, role="admin")
    url = reverse("creator-dashboard", args=["fresh", data["creators"][0].external_id])
    assert b"has not computed any feeds yet" in _client(user).get(url).content


def test_the_creator_opts_out_from_the_page_and_only_the_creator_can(studio) -> None:  # type: ignore[no-untyped-def]
    creator = studio["creator"]
    url = reverse("creator-dashboard", args=["studio", creator.external_id])
    users = get_user_model().objects
    cre, mod = _client(users.get(username="cre")), _client(users.get(username="mod"))
    assert "Stop recommending my items" in cre.get(url).content.decode()
    assert "Stop recommending my items" not in mod.get(url).content.decode()

    assert mod.post(url, {"opted_out": "true"}).status_code == 403
    assert cre.post(url, {"opted_out": "yes"}).status_code == 400
    creator.refresh_from_db()
    assert not creator.opted_out

    response = cre.post(url, {"opted_out": "true"}, follow=True)
    assert response.redirect_chain[-1][0] == url
    html = response.content.decode()
    assert "no longer recommended" in html and "Recommend my items again" in html
    creator.refresh_from_db()
    assert creator.opted_out
    entry = AuditEntry.objects.filter(action="creator.choices_changed").latest("seq")
    assert entry.actor_id == users.get(username="cre").pk
    assert "This creator opted out" in mod.get(url).content.decode()

    cre.post(url, {"opted_out": "false"})
    creator.refresh_from_db()
    assert not creator.opted_out


def test_an_admin_links_the_creator_to_an_account_on_the_page(studio, django_user_model) -> None:  # type: ignore[no-untyped-def]
    creator, community = studio["creator"], studio["community"]
    admin = django_user_model.objects.create_user(username="adm")
    Membership.objects.filter(pk=studio["members"][4].pk).update(user=admin, role="admin")
    page = reverse("creator-dashboard", args=["studio", creator.external_id])
    account = reverse("creator-account", args=["studio", creator.external_id])
    mem = studio["members"][2]  # user "mem", a plain member so far

    assert 'id="account"' in _client(admin).get(page).content.decode()
    assert (
        'id="account"'
        not in _client(django_user_model.objects.get(username="mod")).get(page).content.decode()
    )
    # Moderators and the creator may read the page, not change its account.
    for username in ("mod", "cre", "mem"):
        user = django_user_model.objects.get(username=username)
        assert _client(user).post(account, {"member": mem.external_id}).status_code == 403

    bad = _client(admin).post(account, {"member": "ghost"})
    assert bad.status_code == 400 and "No member &#x27;ghost&#x27;" in bad.content.decode()
    creator.refresh_from_db()
    assert creator.member_id == studio["members"][0].pk

    assert _client(admin).post(account, {"member": mem.external_id}).status_code == 302
    creator.refresh_from_db()
    assert creator.member_id == mem.pk
    entry = AuditEntry.objects.filter(community=community, action="creator.member_linked").get()
    assert entry.actor_id == admin.pk
    # The new account sees the opt-out; the old one no longer sees the page.
    assert (
        'id="opt-out"'
        in _client(django_user_model.objects.get(username="mem")).get(page).content.decode()
    )
    assert _client(django_user_model.objects.get(username="cre")).get(page).status_code == 403

    assert _client(admin).post(account, {"member": ""}).status_code == 302
    creator.refresh_from_db()
    assert creator.member is None
    assert AuditEntry.objects.filter(action="creator.member_linked").count() == 2


def test_the_dashboard_answers_while_the_cache_is_down(studio, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    def down(*args: object, **kwargs: object) -> None:
        raise ConnectionError("cache down")

    monkeypatch.setattr(cache, "get", down)
    monkeypatch.setattr(cache, "set", down)
    url = reverse("creator-dashboard", args=["studio", studio["creator"].external_id])

    page = _client(get_user_model().objects.get(username="cre")).get(url)

    assert page.status_code == 200
    assert "Why members see these items" in page.content.decode()
