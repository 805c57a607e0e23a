"""The governance pages, through Django's test client: sign in, propose, open, vote, tally."""

from __future__ import annotations

import json
import re
from datetime import timedelta

import pytest
from django.test import Client
from django.urls import reverse

from governance.models import Ballot, Proposal
from governance.services import ballot_cast, membership_create, proposal_close, proposal_ratify
from tests.governance.proposal_helpers import make_voting_community, open_proposal, set_charter

pytestmark = pytest.mark.django_db


@pytest.fixture
def garden(django_user_model):  # type: ignore[no-untyped-def]
    community, moderator, members = make_voting_community("plot", members=3)
    mod_user = django_user_model.objects.create_user(username="mo", password="pw-mo")
    voter_user = django_user_model.objects.create_user(username="vi", password="pw-vi")
    from governance.models import Membership

    Membership.objects.filter(pk=moderator.pk).update(user=mod_user)
    Membership.objects.filter(pk=members[0].pk).update(user=voter_user)
    moderator.refresh_from_db()
    members[0].refresh_from_db()
    return community, moderator, members


def _client(username: str) -> Client:
    client = Client(enforce_csrf_checks=False)
    assert client.login(username=username, password=f"pw-{username}")
    return client


def test_the_governance_home_shows_the_policy_in_plain_words(garden) -> None:  # type: ignore[no-untyped-def]
    community, _moderator, _ = garden
    response = Client().get(reverse("governance:home", args=[community.slug]))
    body = response.content.decode()
    assert response.status_code == 200
    assert "64 latent factors" in body
    assert "AI-generated items are ranked normally and labelled" in body
    assert "The community refuses nothing" in body
    assert '"schema_version"' not in body  # not raw JSON


@pytest.mark.parametrize(
    "hours,words", [(1, "Voting lasts 1 hour;"), (72, "Voting lasts 72 hours;")]
)
def test_the_governance_home_gives_the_voting_period(garden, hours: int, words: str) -> None:  # type: ignore[no-untyped-def]
    community, _moderator, _ = garden
    set_charter(community, voting_period_hours=hours)
    assert words in Client().get(reverse("governance:home", args=[community.slug])).content.decode()


def test_a_moderator_proposes_opens_and_a_member_votes_through_the_pages(garden) -> None:  # type: ignore[no-untyped-def]
    community, _moderator, _members = garden
    mod = _client("mo")
    new_url = reverse("governance:proposal-new", args=[community.slug])
    form = mod.get(new_url)
    assert form.status_code == 200
    document = json.loads(form.context["form"]["document"])  # prefilled with the current policy
    document["model"]["factors"] = 32
    response = mod.post(
        new_url,
        {"title": "Finer taste", "rationale": "More factors.", "document": json.dumps(document)},
    )
    proposal = Proposal.objects.get()
    assert response.status_code == 302
    assert response.url == reverse("governance:proposal", args=[community.slug, proposal.pk])
    page = mod.get(response.url).content.decode()
    assert "model.factors" in page and "<code>64</code>" in page and "<code>32</code>" in page
    assert (
        mod.post(reverse("governance:open", args=[community.slug, proposal.pk])).status_code == 302
    )
    proposal.refresh_from_db()
    assert proposal.state == "open"

    voter = _client("vi")
    vote_url = reverse("governance:vote", args=[community.slug, proposal.pk])
    response = voter.post(vote_url, {"choice": "yes"}, follow=True)
    body = response.content.decode()
    assert Ballot.objects.get().choice == "yes"
    assert Ballot.objects.get().receipt in body
    assert "You voted <strong>Yes</strong>" in body
    assert "1 / 4" in body  # turnout against the frozen electorate
    voter.post(vote_url, {"choice": "no"})
    assert list(Ballot.objects.values_list("choice", flat=True)) == ["no"]


def test_invalid_policy_json_is_shown_with_field_paths(garden) -> None:  # type: ignore[no-untyped-def]
    community, _, _ = garden
    mod = _client("mo")
    response = mod.post(
        reverse("governance:proposal-new", args=[community.slug]),
        {"title": "Bad", "rationale": "", "document": json.dumps({"model": {"factors": -1}})},
    )
    assert response.status_code == 400
    assert "<code>model.factors</code>" in response.content.decode()
    assert not Proposal.objects.exists()


def test_a_plain_member_cannot_propose_under_the_default_charter(garden) -> None:  # type: ignore[no-untyped-def]
    community, _, _ = garden
    voter = _client("vi")
    response = voter.post(
        reverse("governance:proposal-new", args=[community.slug]),
        {"title": "x", "rationale": "", "document": json.dumps({"model": {"factors": 8}})},
    )
    assert response.status_code == 403
    assert not Proposal.objects.exists()


def test_pages_that_write_ask_anonymous_visitors_to_sign_in(garden) -> None:  # type: ignore[no-untyped-def]
    community, moderator, _ = garden
    proposal = open_proposal(community, moderator)
    client = Client()
    response = client.post(
        reverse("governance:vote", args=[community.slug, proposal.pk]), {"choice": "yes"}
    )
    assert response.status_code == 302 and response.url.startswith(reverse("login"))
    assert not Ballot.objects.exists()


def test_voting_without_the_csrf_token_is_refused(garden) -> None:  # type: ignore[no-untyped-def]
    community, moderator, _ = garden
    proposal = open_proposal(community, moderator)
    client = Client(enforce_csrf_checks=True)
    client.login(username="vi", password="pw-vi")
    response = client.post(
        reverse("governance:vote", args=[community.slug, proposal.pk]), {"choice": "yes"}
    )
    assert response.status_code == 403
    assert not Ballot.objects.exists()


def test_a_user_who_joined_after_opening_sees_why_they_cannot_vote(
    garden, django_user_model
) -> None:  # type: ignore[no-untyped-def]
    community, moderator, _ = garden
    proposal = open_proposal(community, moderator)
    late = django_user_model.objects.create_user(username="la", password="pw-la")
    membership_create(community=community, external_id="late", actor=None, user=late)
    client = _client("la")
    page = client.get(reverse("governance:proposal", args=[community.slug, proposal.pk]))
    assert "you cannot vote on this proposal" in page.content.decode()
    response = client.post(
        reverse("governance:vote", args=[community.slug, proposal.pk]), {"choice": "yes"}
    )
    assert response.status_code == 403
    assert "not_in_electorate" in response.content.decode()


def test_voting_after_close_answers_409(garden) -> None:  # type: ignore[no-untyped-def]
    community, moderator, _members = garden
    proposal = open_proposal(community, moderator)
    proposal_close(proposal=proposal, now=proposal.closes_at + timedelta(seconds=1))
    response = _client("vi").post(
        reverse("governance:vote", args=[community.slug, proposal.pk]), {"choice": "yes"}
    )
    assert response.status_code == 409


def test_the_history_page_shows_each_version_with_its_diff(garden) -> None:  # type: ignore[no-untyped-def]
    community, moderator, members = garden
    proposal = open_proposal(community, moderator)
    ballot_cast(proposal=proposal, member=members[0], choice="yes")
    proposal_close(proposal=proposal, now=proposal.closes_at + timedelta(seconds=1))
    proposal_ratify(proposal=proposal)
    body = Client().get(reverse("governance:history", args=[community.slug])).content.decode()
    assert "Version 2" in body and "in force" in body and "the founding policy" in body
    assert "model.factors" in body
    page = Client().get(reverse("governance:proposal", args=[community.slug, proposal.pk]))
    assert "Ratified as" in page.content.decode()


def test_the_login_page_signs_a_member_in(garden) -> None:  # type: ignore[no-untyped-def]
    community, _, _ = garden
    client = Client()
    target = reverse("governance:home", args=[community.slug])
    response = client.post(
        reverse("login"), {"username": "vi", "password": "pw-vi", "next": target}
    )
    assert response.status_code == 302 and response.url == target
    assert "Signed in as vi" in client.get(target).content.decode()


@pytest.mark.parametrize(
    "path",
    [
        "/c/plot/governance/",
        "/c/plot/governance/history/",
        "/c/plot/audit/",
        "/c/plot/proposals/new/",
        "/c/plot/proposals/new/?kind=charter",
        "/c/plot/feed-runs/",
        "/c/plot/apps/",
        "/c/plot/settings/",
    ],
)
def test_page_titles_are_plain_text(garden, path: str) -> None:  # type: ignore[no-untyped-def]
    # A tag inside <title> is text to the browser: a script put there never runs.
    html = _client("mo").get(path).content.decode()
    titles = re.findall(r"<title>(.*?)</title>", html, flags=re.S)
    assert len(titles) == 1 and "<" not in titles[0] and titles[0].endswith("Plot")
    if "proposals/new" in path:
        assert html.count("commonfeed/editor.js") == 1
