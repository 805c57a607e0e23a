"""Editing drafts (service, API, pages) and the editor's live check: only drafts change, only
by their author, moderators and admins; every edit is audited; bad input writes nothing."""

from __future__ import annotations

import json
from typing import Any

import pytest
from django.test import Client
from django.urls import reverse

from governance.errors import InvalidTransition, NotPermitted
from governance.models import AuditEntry, Membership, Proposal
from governance.selectors import audit_verify
from governance.services import (
    proposal_create,
    proposal_open,
    proposal_update,
    proposal_withdraw,
)
from ranking.policy import PolicyError
from tests.governance.proposal_helpers import changed_policy, make_voting_community

pytestmark = pytest.mark.django_db


@pytest.fixture
def plot(django_user_model):  # type: ignore[no-untyped-def]
    """A moderator (user mo) with a draft; members vi and ann (users); an outsider ou."""
    community, moderator, members = make_voting_community("plot", members=3)
    for username, member in (("mo", moderator), ("vi", members[0]), ("ann", members[1])):
        user = django_user_model.objects.create_user(username=username, password=f"pw-{username}")
        Membership.objects.filter(pk=member.pk).update(user=user)
        member.refresh_from_db()
    django_user_model.objects.create_user(username="ou", password="pw-ou")
    draft = proposal_create(
        community=community,
        author=moderator,
        title="More factors",
        rationale="Because.",
        document=changed_policy(community, model={"factors": 32}),
    )
    return community, moderator, members, draft


def _client(username: str) -> Client:
    client = Client()
    assert client.login(username=username, password=f"pw-{username}")
    return client


def _entries(community: Any) -> int:
    return AuditEntry.objects.filter(community=community).count()


# --- Service ---------------------------------------------------------------------------------


def test_the_author_edits_a_draft_and_the_edit_is_audited(plot) -> None:  # type: ignore[no-untyped-def]
    community, moderator, _members, draft = plot
    document = changed_policy(community, model={"factors": 48})
    proposal_update(proposal=draft, actor=moderator, title=" Even more ", document=document)
    draft.refresh_from_db()
    assert draft.title == "Even more" and draft.document["model"]["factors"] == 48
    entry = AuditEntry.objects.filter(community=community).order_by("-seq").first()
    assert entry is not None and entry.action == "proposal.updated"
    assert entry.payload["fields"] == ["document", "title"]
    assert entry.payload["document"]["model"]["factors"] == 48
    assert len(entry.payload["sha256"]) == 64
    assert [chain.problem for chain in audit_verify(community=community)] == [None]


def test_an_edit_that_changes_nothing_writes_nothing(plot) -> None:  # type: ignore[no-untyped-def]
    community, moderator, _members, draft = plot
    before = _entries(community)
    proposal_update(proposal=draft, actor=moderator, title="More factors", document=draft.document)
    assert _entries(community) == before


def test_a_plain_member_cannot_edit_someone_elses_draft(plot) -> None:  # type: ignore[no-untyped-def]
    _community, _moderator, members, draft = plot
    with pytest.raises(NotPermitted):
        proposal_update(proposal=draft, actor=members[0], title="Mine now")
    draft.refresh_from_db()
    assert draft.title == "More factors"


@pytest.mark.parametrize("step", [proposal_open, proposal_withdraw])
def test_only_a_draft_can_change(plot, step: Any) -> None:  # type: ignore[no-untyped-def]
    community, moderator, _members, draft = plot
    step(proposal=draft, actor=moderator)
    before = _entries(community)
    with pytest.raises(InvalidTransition):
        proposal_update(proposal=draft, actor=moderator, title="Sneaky")
    draft.refresh_from_db()
    assert draft.title == "More factors" and _entries(community) == before


def test_an_invalid_or_unchanged_document_is_refused_with_paths(plot) -> None:  # type: ignore[no-untyped-def]
    community, moderator, _members, draft = plot
    bad = changed_policy(community, model={"factors": -3})
    with pytest.raises(PolicyError) as invalid:
        proposal_update(proposal=draft, actor=moderator, document=bad)
    assert any(error["path"] == "model.factors" for error in invalid.value.errors)
    with pytest.raises(PolicyError):
        proposal_update(proposal=draft, actor=moderator, document=draft.base.document)
    with pytest.raises(PolicyError):
        proposal_update(proposal=draft, actor=moderator, title="   ")
    draft.refresh_from_db()
    assert draft.document["model"]["factors"] == 32 and draft.title == "More factors"


# --- API -------------------------------------------------------------------------------------


def _patch(client: Client, draft: Proposal, body: Any) -> Any:
    url = reverse("api-proposal", args=["plot", draft.pk])
    return client.patch(url, data=json.dumps(body), content_type="application/json")


def test_the_api_patches_a_draft(plot) -> None:  # type: ignore[no-untyped-def]
    _community, _moderator, _members, draft = plot
    response = _patch(_client("mo"), draft, {"rationale": "Measured on ml-100k."})
    assert response.status_code == 200, response.content
    assert response.json()["rationale"] == "Measured on ml-100k."


def test_the_api_answers_bad_edits_with_clear_errors(plot) -> None:  # type: ignore[no-untyped-def]
    community, _moderator, _members, draft = plot
    bad = changed_policy(community, model={"factors": -3})
    invalid = _patch(_client("mo"), draft, {"document": bad})
    assert invalid.status_code == 400
    assert "model.factors" in json.dumps(invalid.json())
    assert _patch(_client("mo"), draft, {"title": 5}).status_code == 400
    assert _patch(_client("vi"), draft, {"title": "Mine"}).status_code == 403
    assert _patch(_client("ou"), draft, {"title": "Mine"}).status_code == 403
    proposal_open(proposal=draft, actor=draft.author)
    closed = _patch(_client("mo"), draft, {"title": "Late"})
    assert closed.status_code == 409
    draft.refresh_from_db()
    assert draft.title == "More factors"


# --- Pages -----------------------------------------------------------------------------------


def test_the_edit_page_saves_a_draft_and_shows_errors_on_the_page(plot) -> None:  # type: ignore[no-untyped-def]
    community, _moderator, _members, draft = plot
    url = reverse("governance:proposal-edit", args=["plot", draft.pk])
    client = _client("mo")
    page = client.get(url)
    assert page.status_code == 200 and b"More factors" in page.content
    bad = changed_policy(community, model={"factors": -3})
    refused = client.post(url, {"title": "X", "rationale": "", "document": json.dumps(bad)})
    assert refused.status_code == 400 and b"model.factors" in refused.content
    good = changed_policy(community, model={"factors": 64, "iterations": 20})
    saved = client.post(url, {"title": "Bigger", "rationale": "", "document": json.dumps(good)})
    assert saved.status_code == 302
    draft.refresh_from_db()
    assert (draft.title, draft.document["model"]["iterations"]) == ("Bigger", 20)


def test_the_edit_page_refuses_non_drafts_and_plain_members(plot) -> None:  # type: ignore[no-untyped-def]
    _community, _moderator, _members, draft = plot
    url = reverse("governance:proposal-edit", args=["plot", draft.pk])
    assert _client("vi").get(url).status_code == 403
    assert _client("ou").get(url).status_code == 403
    proposal_open(proposal=draft, actor=draft.author)
    assert _client("mo").get(url).status_code == 409
    assert _client("mo").post(url, {"title": "Late", "document": "{}"}).status_code == 409


def test_the_live_check_names_problems_or_shows_the_changes(plot) -> None:  # type: ignore[no-untyped-def]
    community, _moderator, _members, draft = plot
    url = reverse("governance:proposal-check", args=["plot"])
    client = _client("vi")  # any member may check a document; nothing is written
    before = _entries(community)
    bad = changed_policy(community, model={"factors": -3})
    problems = client.post(url, {"document": json.dumps(bad)}).content.decode()
    assert "Not valid yet" in problems and "model.factors" in problems
    assert "not valid JSON" in client.post(url, {"document": "{"}).content.decode()
    good = changed_policy(community, candidates={"pool_size": 300})
    changes = client.post(url, {"document": json.dumps(good)}).content.decode()
    assert "Valid." in changes and "candidates.pool_size" in changes
    # Against a draft's own base version, and for a charter.
    on_draft = client.post(url, {"document": json.dumps(good), "proposal": draft.pk})
    assert "candidates.pool_size" in on_draft.content.decode()
    charter = client.post(url, {"kind": "charter", "document": '{"quorum": 2}'}).content.decode()
    assert "quorum" in charter and "Not valid yet" in charter
    assert _entries(community) == before
    assert Client().post(url, {"document": "{}"}).status_code == 403
    assert _client("ou").post(url, {"document": "{}"}).status_code == 403
