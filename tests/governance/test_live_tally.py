"""The live tally and the htmx ballot, through Django's test client (the browser test drives the
same endpoints in Chromium): fragments, the stop-polling status, CSRF, and no-JS fallbacks."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from django.contrib.staticfiles import finders
from django.test import Client
from django.urls import reverse

from governance.models import Ballot, Membership, Proposal
from governance.services import ballot_cast, membership_create, proposal_close, proposal_create
from tests.governance.proposal_helpers import changed_policy, make_voting_community, open_proposal

pytestmark = pytest.mark.django_db

HX = {"HTTP_HX_REQUEST": "true"}


@pytest.fixture
def plot(django_user_model):  # type: ignore[no-untyped-def]
    """An open proposal in a community of a moderator and three members; vi is one of them."""
    community, moderator, members = make_voting_community("plot", members=3)
    user = django_user_model.objects.create_user(username="vi", password="pw-vi")
    Membership.objects.filter(pk=members[0].pk).update(user=user)
    proposal = open_proposal(community, moderator)
    return community, moderator, members, proposal


def _voter(*, csrf: bool = False) -> Client:
    client = Client(enforce_csrf_checks=csrf)
    assert client.login(username="vi", password="pw-vi")
    return client


def _tally_url(proposal: Proposal, slug: str = "plot") -> str:
    return reverse("governance:tally", args=[slug, proposal.pk])


def _tally_region(html: str) -> str:
    """The inner HTML of the page's #tally (it is followed by the ballot area)."""
    match = re.search(r'<div id="tally"[^>]*>(.*)</div>\s*<div id="ballot">', html, re.S)
    assert match, "no #tally followed by #ballot in the page"
    return match.group(1)


def test_every_page_loads_the_vendored_htmx(plot) -> None:  # type: ignore[no-untyped-def]
    body = Client().get(reverse("governance:home", args=["plot"])).content.decode()
    assert '<script src="/static/vendor/htmx/htmx.min.js" defer></script>' in body
    assert "unpkg" not in body and "cdn" not in body.lower()
    path = finders.find("vendor/htmx/htmx.min.js")
    assert path is not None
    with open(path, encoding="utf-8") as script:
        assert 'version:"2.' in script.read().replace(" ", "")


def test_the_open_proposal_page_polls_the_tally_fragment(plot, settings) -> None:  # type: ignore[no-untyped-def]
    _community, _moderator, _members, proposal = plot
    settings.GOVERNANCE_TALLY_POLL_SECONDS = 1.5
    body = Client().get(reverse("governance:proposal", args=["plot", proposal.pk])).content.decode()
    assert f'hx-get="{_tally_url(proposal)}" hx-trigger="every 1500ms"' in body


def test_the_fragment_is_exactly_what_the_page_shows(plot) -> None:  # type: ignore[no-untyped-def]
    _community, _moderator, members, proposal = plot
    ballot_cast(proposal=proposal, member=members[1], choice="yes")
    ballot_cast(proposal=proposal, member=members[2], choice="abstain")
    page = Client().get(reverse("governance:proposal", args=["plot", proposal.pk])).content.decode()
    fragment = Client().get(_tally_url(proposal), **HX)
    assert fragment.status_code == 200
    assert fragment["Cache-Control"].startswith("max-age=0")
    assert fragment.content.decode().strip() == _tally_region(page).strip()
    # Counts only: no ballot, voter or receipt.
    text = fragment.content.decode()
    assert "<dd>1</dd>" in text and "2 / 4" in text
    assert all(b.receipt not in text for b in Ballot.objects.all())
    assert members[1].external_id not in text


def test_the_fragment_follows_new_ballots(plot) -> None:  # type: ignore[no-untyped-def]
    _community, _moderator, members, proposal = plot
    assert "0 / 4" in Client().get(_tally_url(proposal), **HX).content.decode()
    ballot_cast(proposal=proposal, member=members[1], choice="no")
    assert "1 / 4" in Client().get(_tally_url(proposal), **HX).content.decode()


def test_once_closed_the_fragment_says_so_and_stops_htmx_polling(plot) -> None:  # type: ignore[no-untyped-def]
    _community, _moderator, members, proposal = plot
    ballot_cast(proposal=proposal, member=members[1], choice="yes")
    proposal_close(proposal=proposal, now=proposal.closes_at + timedelta(seconds=1))
    response = Client().get(_tally_url(proposal), **HX)
    assert response.status_code == 286
    assert "final counts" in response.content.decode()
    assert "1 / 4" in response.content.decode()
    # A plain GET (no htmx) gets an ordinary 200.
    assert Client().get(_tally_url(proposal)).status_code == 200
    # The page of a closed proposal does not poll at all.
    page = Client().get(reverse("governance:proposal", args=["plot", proposal.pk])).content.decode()
    assert 'hx-trigger="every' not in page and "final counts" in page


def test_the_fragment_is_404_for_unknown_draft_or_foreign_proposals(plot) -> None:  # type: ignore[no-untyped-def]
    community, moderator, _members, proposal = plot
    assert Client().get(reverse("governance:tally", args=["plot", 999_999])).status_code == 404
    assert Client().get(_tally_url(proposal, slug="nowhere")).status_code == 404
    draft = proposal_create(
        community=community,
        author=moderator,
        title="Draft",
        rationale="",
        document=changed_policy(community, model={"factors": 16}),
    )
    assert Client().get(_tally_url(draft)).status_code == 404
    other, other_mod, _ = make_voting_community("other", members=1)
    foreign = open_proposal(other, other_mod)
    assert Client().get(_tally_url(foreign, slug="plot")).status_code == 404


def test_an_htmx_ballot_answers_the_ballot_area_and_the_tally_out_of_band(plot) -> None:  # type: ignore[no-untyped-def]
    _community, _moderator, _members, proposal = plot
    response = _voter().post(
        reverse("governance:vote", args=["plot", proposal.pk]), {"choice": "yes"}, **HX
    )
    body = response.content.decode()
    ballot = Ballot.objects.get()
    assert response.status_code == 200 and not response.has_header("Location")
    assert '<div id="ballot">' in body
    assert "You voted <strong>Yes</strong>" in body
    assert f"Your ballot is counted. Receipt: {ballot.receipt}" in body
    tally = re.search(r'<div id="tally" hx-swap-oob="innerHTML">(.*)</div>', body, re.S)
    assert tally and "1 / 4" in tally.group(1)
    # The notice was shown in place, not queued for the next page.
    page = _voter().get(reverse("governance:proposal", args=["plot", proposal.pk]))
    assert "Your ballot is counted" not in page.content.decode()


@pytest.mark.parametrize(
    ("case", "status", "text"),
    [
        ("bad choice", 400, "Choose yes, no or abstain."),
        ("closed", 409, "not open"),
        ("not in electorate", 403, "was not a member"),
    ],
)
def test_htmx_ballot_errors_keep_their_status_and_show_in_the_ballot_area(
    plot, django_user_model, case: str, status: int, text: str
) -> None:  # type: ignore[no-untyped-def]
    community, _moderator, _members, proposal = plot
    client = _voter()
    choice = "maybe" if case == "bad choice" else "yes"
    if case == "closed":
        proposal_close(proposal=proposal, now=proposal.closes_at + timedelta(seconds=1))
    if case == "not in electorate":
        late = django_user_model.objects.create_user(username="la", password="pw-la")
        membership_create(community=community, external_id="late", actor=None, user=late)
        client = Client()
        client.login(username="la", password="pw-la")
    response = client.post(
        reverse("governance:vote", args=["plot", proposal.pk]), {"choice": choice}, **HX
    )
    body = response.content.decode()
    assert response.status_code == status
    assert '<div id="ballot">' in body and 'role="alert"' in body
    assert text in body
    assert not Ballot.objects.exists()


def test_an_htmx_ballot_needs_the_csrf_token(plot) -> None:  # type: ignore[no-untyped-def]
    _community, _moderator, _members, proposal = plot
    client = _voter(csrf=True)
    url = reverse("governance:vote", args=["plot", proposal.pk])
    assert client.post(url, {"choice": "yes"}, **HX).status_code == 403
    assert not Ballot.objects.exists()
    # The page's form carries the token; htmx posts it with the form's fields.
    page = client.get(reverse("governance:proposal", args=["plot", proposal.pk])).content.decode()
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page)
    assert token
    response = client.post(url, {"choice": "yes", "csrfmiddlewaretoken": token.group(1)}, **HX)
    assert response.status_code == 200
    assert Ballot.objects.get().choice == "yes"


def test_the_ballot_form_works_with_and_without_javascript(plot) -> None:  # type: ignore[no-untyped-def]
    _community, _moderator, _members, proposal = plot
    url = reverse("governance:vote", args=["plot", proposal.pk])
    page = _voter().get(reverse("governance:proposal", args=["plot", proposal.pk])).content.decode()
    assert f'method="post" action="{url}" class="ballot"' in page
    assert f'hx-post="{url}" hx-target="#ballot"' in page
    response = _voter().post(url, {"choice": "no"})  # no HX-Request: a plain form post
    assert response.status_code == 302
    assert response.url == reverse("governance:proposal", args=["plot", proposal.pk])
    assert Ballot.objects.get().choice == "no"


def test_a_signed_out_htmx_ballot_is_sent_to_sign_in_as_a_whole_page(plot) -> None:  # type: ignore[no-untyped-def]
    _community, _moderator, _members, proposal = plot
    url = reverse("governance:vote", args=["plot", proposal.pk])
    page = reverse("governance:proposal", args=["plot", proposal.pk])
    to_login = f"{reverse('login')}?next={page}"
    # htmx follows redirects inside the request, so it gets HX-Redirect (a full-page visit).
    response = Client().post(url, {"choice": "yes"}, **HX)
    assert (response.status_code, response["HX-Redirect"]) == (204, to_login)
    # A plain form post gets the usual redirect, back to the proposal after signing in.
    response = Client().post(url, {"choice": "yes"})
    assert (response.status_code, response.url) == (302, to_login)
    assert not Ballot.objects.exists()
