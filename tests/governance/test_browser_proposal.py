"""A whole proposal in real Chromium: draft, open, two members vote (one changes), ratified."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.utils import timezone

from governance.models import Membership, Proposal
from governance.selectors import policy_version_current
from governance.tasks import close_due_proposals
from tests.governance.proposal_helpers import make_voting_community

pytestmark = pytest.mark.django_db(transaction=True)


def _sign_in(page: Any, base: str, username: str) -> None:
    page.context.clear_cookies()
    page.goto(f"{base}/accounts/login/")
    page.fill("#id_username", username)
    page.fill("#id_password", f"pw-{username}-long-enough")
    page.click("button[type=submit], input[type=submit]")
    page.wait_for_load_state()


def _vote(page: Any, base: str, path: str, choice: str) -> None:
    page.goto(base + path)
    page.check(f"input[name=choice][value={choice}]")
    page.click("form.ballot button[type=submit]")
    page.wait_for_load_state()


def test_members_run_a_proposal_through_the_browser(
    live_server: Any, page: Any, tmp_path: Path
) -> None:
    community, moderator, members = make_voting_community("plot", members=3)
    users = get_user_model().objects
    for username, member in (("mo", moderator), ("alice", members[0]), ("bob", members[1])):
        user = users.create_user(username=username, password=f"pw-{username}-long-enough")
        Membership.objects.filter(pk=member.pk).update(user=user)
    base = live_server.url
    before = policy_version_current(community=community)

    # The moderator drafts a change in the editor and opens the vote.
    _sign_in(page, base, "mo")
    page.goto(f"{base}/c/plot/proposals/new/")
    document = json.loads(page.input_value("#id_document"))
    document["model"]["factors"] = 32
    page.fill("#id_title", "More factors, less popularity bias")
    page.fill("#id_rationale", "The evaluation shows 32 factors widen exposure at no cost.")
    page.fill("#id_document", json.dumps(document, indent=2))
    page.click("form.proposal-form button[type=submit]")
    page.wait_for_load_state()
    assert "model.factors" in page.content()  # the diff names the changed field
    page.click("text=Open voting")
    page.wait_for_load_state()
    proposal = Proposal.objects.get(community=community)
    assert proposal.state == "open"
    path = f"/c/plot/proposals/{proposal.pk}/"

    # Two members vote; one changes their mind.
    _sign_in(page, base, "alice")
    _vote(page, base, path, "yes")
    assert "You voted" in page.content()
    _sign_in(page, base, "bob")
    _vote(page, base, path, "no")
    _vote(page, base, path, "yes")
    tally = page.locator("dl.stats").inner_text()
    assert "Yes\n2" in tally and "No\n0" in tally
    page.screenshot(path=str(tmp_path / "tally.png"), full_page=True)

    # Voting ends: beat's task closes and ratifies; the new version is current.
    Proposal.objects.filter(pk=proposal.pk).update(closes_at=timezone.now() - timedelta(seconds=1))
    close_due_proposals()
    proposal.refresh_from_db()
    assert proposal.state == "ratified"
    current = policy_version_current(community=community)
    assert current.number == before.number + 1
    assert current.document["model"]["factors"] == 32
    page.goto(base + path)
    assert "Ratified as" in page.content()
    page.goto(f"{base}/c/plot/governance/")
    assert f"Policy version {current.number}" in page.content()
    assert "32 latent factors" in page.content()
