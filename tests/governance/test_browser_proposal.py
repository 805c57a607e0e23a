"""A whole proposal in real Chromium: draft, open, two members vote (one changes, without
JavaScript), a watcher's page follows the tally live, ratified, and the audit log verifies."""

from __future__ import annotations

import json
import re
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.utils import timezone
from playwright.sync_api import expect

from governance.models import AuditEntry, Membership, Proposal
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
    """Vote from the proposal page and wait until the page shows the ballot.

    With JavaScript htmx posts the form and swaps the ballot area in place (the page is not
    reloaded: a marker set on ``window`` survives); without it the browser posts the form and
    follows the redirect.
    """
    page.goto(base + path)
    scripted = page.evaluate("() => typeof htmx === 'object'")
    if scripted:
        page.evaluate("() => { window.sameDocument = true }")
    page.check(f"input[name=choice][value={choice}]")
    page.click("form.ballot button[type=submit]")
    expect(page.locator("#ballot .my-ballot")).to_contain_text(f"You voted {choice.title()}")
    if scripted:
        assert page.evaluate("() => window.sameDocument") is True
    assert page.url == base + path


def test_members_run_a_proposal_through_the_browser(
    live_server: Any, page: Any, tmp_path: Path, settings: Any
) -> None:
    # The live server runs in this process: the pages poll the tally every second.
    settings.GOVERNANCE_TALLY_POLL_SECONDS = 1
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
    # The editor checks the document as it is typed: first a mistake, named by its path...
    document["model"]["factors"] = -1
    page.fill("#id_document", json.dumps(document, indent=2))
    expect(page.locator("#document-check")).to_contain_text("model.factors")
    expect(page.locator("#document-check")).to_contain_text("Not valid yet")
    # ...then the intended change, shown as a diff against the current version before saving.
    document["model"]["factors"] = 32
    page.fill("#id_document", json.dumps(document, indent=2))
    expect(page.locator("#document-check")).to_contain_text("Valid.")
    expect(page.locator("#document-check table.diff")).to_contain_text("model.factors")
    # The settings form (generated from the schema) follows the JSON, and writes into it.
    expect(page.locator('[name="field:model.factors"]')).to_have_value("32")
    page.fill('[name="field:ranking.creator_cap"]', "4")
    page.dispatch_event('[name="field:ranking.creator_cap"]', "change")
    assert json.loads(page.input_value("#id_document"))["ranking"]["creator_cap"] == 4
    expect(page.locator("#document-check table.diff")).to_contain_text("ranking.creator_cap")
    page.fill("#id_title", "More factors")
    page.fill("#id_rationale", "The evaluation shows 32 factors widen exposure at no cost.")
    page.click("form.proposal-form button[type=submit]")
    page.wait_for_load_state()
    assert "model.factors" in page.content()  # the diff names the changed field
    # The draft can still be edited; the title is sharpened before voting opens.
    page.click("text=Edit draft")
    page.wait_for_load_state()
    page.fill("#id_title", "More factors, less popularity bias")
    page.click("form.proposal-form button[type=submit]")
    page.wait_for_load_state()
    assert "More factors, less popularity bias" in page.content()
    page.click("text=Open voting")
    page.wait_for_load_state()
    proposal = Proposal.objects.get(community=community)
    assert proposal.state == "open"
    path = f"/c/plot/proposals/{proposal.pk}/"

    # A visitor (another browser, not signed in) keeps the proposal page open.
    browser = page.context.browser
    watcher_context = browser.new_context()
    watcher = watcher_context.new_page()
    tally_polls: list[int] = []
    watcher.on(
        "response",
        lambda r: tally_polls.append(r.status) if r.url.endswith(f"{path}tally/") else None,
    )
    watcher.goto(base + path)
    expect(watcher.locator("#tally")).to_contain_text("0 / 4")
    watcher.evaluate("() => { window.sameDocument = true }")

    # Alice votes with JavaScript: htmx posts the form and swaps her ballot and tally in place.
    _sign_in(page, base, "alice")
    _vote(page, base, path, "yes")
    expect(page.locator("#tally")).to_contain_text("1 / 4")
    # The visitor's page follows without reloading: htmx polls the tally fragment.
    expect(watcher.locator("#tally dl.stats")).to_contain_text(re.compile(r"Yes\s*1\s*No\s*0"))
    expect(watcher.locator("#tally")).to_contain_text("1 / 4")

    # Bob's browser has JavaScript off: plain form posts and redirects still work.
    no_js_context = browser.new_context(java_script_enabled=False)
    bob = no_js_context.new_page()
    _sign_in(bob, base, "bob")
    _vote(bob, base, path, "no")
    _vote(bob, base, path, "yes")  # changes his mind
    tally = bob.locator("dl.stats").inner_text()
    assert "Yes\n2" in tally and "No\n0" in tally
    expect(watcher.locator("#tally dl.stats")).to_contain_text(re.compile(r"Yes\s*2\s*No\s*0"))
    assert watcher.evaluate("() => window.sameDocument") is True
    assert tally_polls and set(tally_polls) == {200}
    watcher.screenshot(path=str(tmp_path / "tally.png"), full_page=True)

    # Voting ends: beat's task closes and ratifies; the new version is current.
    Proposal.objects.filter(pk=proposal.pk).update(closes_at=timezone.now() - timedelta(seconds=1))
    close_due_proposals()
    proposal.refresh_from_db()
    assert proposal.state == "ratified"
    # The visitor's next poll gets the final tally with htmx's stop status, and polling stops.
    expect(watcher.locator("#tally")).to_contain_text("final counts")
    assert tally_polls[-1] == 286
    polls = len(tally_polls)
    watcher.wait_for_timeout(2500)  # two and a half poll intervals
    assert len(tally_polls) == polls
    assert watcher.evaluate("() => window.sameDocument") is True
    no_js_context.close()
    watcher_context.close()
    current = policy_version_current(community=community)
    assert current.number == before.number + 1
    assert current.document["model"]["factors"] == 32
    page.goto(base + path)
    assert "Ratified as" in page.content()
    page.goto(f"{base}/c/plot/governance/")
    assert f"Policy version {current.number}" in page.content()
    assert "32 latent factors" in page.content()

    # The public audit log verifies the chain that recorded all of it.
    page.goto(f"{base}/c/plot/audit/")
    chain = page.locator("#chain").inner_text()
    assert chain.startswith("Chain verified:"), chain
    entries = AuditEntry.objects.filter(community=community)
    ratified = entries.get(action="proposal.ratified")
    shown = re.search(r"(\d+) entries, head seq (\d+)", chain)
    assert shown is not None, chain
    # The worker recomputing feeds after the ratification may append its feed-run entries
    # before or after the page was rendered: the page verified the chain up to its head then.
    head = entries.get(seq=int(shown[2]))
    assert head.seq >= ratified.seq
    assert int(shown[1]) == entries.filter(seq__lte=head.seq).count()
    assert page.locator("#chain code").get_attribute("title") == head.entry_hash
