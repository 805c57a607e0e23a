"""The governance API: proposals and ballots for signed-in members, over a session."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import pytest
from django.test import Client
from django.urls import reverse

from governance.models import AuditEntry, Membership, Proposal
from governance.selectors import charter_version_current
from governance.services import membership_create, proposal_close
from tests.governance.proposal_helpers import changed_policy, make_voting_community, open_proposal

pytestmark = pytest.mark.django_db


@pytest.fixture
def plot(django_user_model):  # type: ignore[no-untyped-def]
    """A community with a moderator (user mo), a member (user vi) and an outsider (user ou)."""
    community, moderator, members = make_voting_community("plot", members=3)
    for username, member in (("mo", moderator), ("vi", members[0])):
        user = django_user_model.objects.create_user(username=username, password=f"pw-{username}")
        Membership.objects.filter(pk=member.pk).update(user=user)
    django_user_model.objects.create_user(username="ou", password="pw-ou")
    moderator.refresh_from_db()
    members[0].refresh_from_db()
    return community, moderator, members


def _client(username: str, *, csrf: bool = False) -> Client:
    client = Client(enforce_csrf_checks=csrf)
    assert client.login(username=username, password=f"pw-{username}")
    return client


def _url(name: str, *args: Any) -> str:
    return reverse(name, args=["plot", *args])


def _json(client: Client, method: str, url: str, body: Any) -> Any:
    return getattr(client, method)(url, data=json.dumps(body), content_type="application/json")


def test_a_moderator_drafts_opens_and_a_member_votes_through_the_api(plot) -> None:  # type: ignore[no-untyped-def]
    community, _moderator, _members = plot
    mod, voter = _client("mo"), _client("vi")
    document = changed_policy(community, model={"factors": 32})
    created = _json(
        mod,
        "post",
        _url("api-proposals"),
        {"title": "Fewer factors", "rationale": "Faster.", "document": document},
    )
    assert created.status_code == 201, created.content
    body = created.json()
    assert body["state"] == "draft" and body["counts"] is None and body["tally"] is None
    assert {"path": "model.factors", "kind": "changed", "old": 64, "new": 32} in body["changes"]
    pk = body["id"]

    opened = mod.post(_url("api-proposal-open", pk))
    assert opened.status_code == 200
    assert opened.json()["state"] == "open" and opened.json()["electorate_size"] == 4

    vote = _json(voter, "put", _url("api-ballot", pk), {"choice": "yes"})
    assert vote.status_code == 200
    receipt = vote.json()["receipt"]
    assert vote.json()["choice"] == "yes" and len(receipt) == 64
    logged = AuditEntry.objects.get(community=community, action="ballot.cast")
    assert logged.payload["receipt"] == receipt

    detail = voter.get(_url("api-proposal", pk)).json()
    assert detail["tally"]["yes"] == 1 and detail["tally"]["voters"] == 1
    assert detail["in_electorate"] is True
    assert detail["my_ballot"]["receipt"] == receipt
    listed = voter.get(_url("api-proposals")).json()["proposals"]
    assert [(p["id"], p["state"], p["counts"]) for p in listed] == [
        (pk, "open", {"yes": 1, "no": 0, "abstain": 0})
    ]

    withdrawn = mod.post(_url("api-proposal-withdraw", pk))
    assert withdrawn.status_code == 200 and withdrawn.json()["state"] == "withdrawn"


def test_an_invalid_policy_is_400_with_the_path_of_each_problem(plot) -> None:  # type: ignore[no-untyped-def]
    community, _moderator, _members = plot
    document = changed_policy(community, model={"factors": -3})
    response = _json(
        _client("mo"), "post", _url("api-proposals"), {"title": "Bad", "document": document}
    )
    assert response.status_code == 400
    body = response.json()
    assert body["error"] == "invalid"
    assert any(problem["path"] == "model.factors" for problem in body["detail"]["document"])
    assert not Proposal.objects.exists()


@pytest.mark.parametrize(
    "body",
    [{"title": "x"}, {"title": 3, "document": {}}, {"title": "x", "document": []}, {"title": ""}],
)
def test_schema_violating_input_is_400(plot, body: dict[str, Any]) -> None:  # type: ignore[no-untyped-def]
    response = _json(_client("mo"), "post", _url("api-proposals"), body)
    assert response.status_code == 400
    assert response.json()["error"] == "invalid"


def test_an_outsider_is_403_on_every_endpoint(plot) -> None:  # type: ignore[no-untyped-def]
    community, moderator, _members = plot
    proposal = open_proposal(community, moderator)
    outsider = _client("ou")
    responses = [
        outsider.get(_url("api-proposals")),
        outsider.get(_url("api-proposal", proposal.pk)),
        outsider.post(_url("api-proposal-withdraw", proposal.pk)),
        _json(outsider, "put", _url("api-ballot", proposal.pk), {"choice": "no"}),
    ]
    assert [r.status_code for r in responses] == [403] * 4
    assert {r.json()["error"] for r in responses} == {"forbidden"}


def test_without_a_session_it_is_403(plot) -> None:  # type: ignore[no-untyped-def]
    response = Client().get(_url("api-proposals"))
    assert response.status_code == 403
    assert response.json()["error"] == "not_authenticated"


def test_an_unknown_proposal_or_community_is_404(plot) -> None:  # type: ignore[no-untyped-def]
    mod = _client("mo")
    assert mod.get(_url("api-proposal", 999_999)).json()["error"] == "not_found"
    assert mod.get(_url("api-proposal", 999_999)).status_code == 404
    assert mod.get(reverse("api-proposals", args=["nowhere"])).status_code == 404


def test_a_vote_on_a_closed_proposal_is_409(plot) -> None:  # type: ignore[no-untyped-def]
    community, moderator, _members = plot
    proposal = open_proposal(community, moderator)
    proposal_close(proposal=proposal, now=proposal.closes_at + timedelta(seconds=1))
    response = _json(_client("vi"), "put", _url("api-ballot", proposal.pk), {"choice": "yes"})
    assert response.status_code == 409
    assert response.json()["error"] == "proposal_not_open"


def test_opening_twice_is_409(plot) -> None:  # type: ignore[no-untyped-def]
    community, moderator, _members = plot
    proposal = open_proposal(community, moderator)
    response = _client("mo").post(_url("api-proposal-open", proposal.pk))
    assert response.status_code == 409
    assert response.json()["error"] == "invalid_transition"


def test_a_member_who_joined_after_voting_opened_is_403(plot, django_user_model) -> None:  # type: ignore[no-untyped-def]
    community, moderator, _members = plot
    proposal = open_proposal(community, moderator)
    late = django_user_model.objects.create_user(username="la", password="pw-la")
    membership_create(community=community, external_id="late", actor=None, user=late)
    response = _json(_client("la"), "put", _url("api-ballot", proposal.pk), {"choice": "yes"})
    assert response.status_code == 403
    assert response.json()["error"] == "not_in_electorate"


def test_a_plain_member_may_not_open_someone_elses_proposal(plot) -> None:  # type: ignore[no-untyped-def]
    community, moderator, _members = plot
    proposal = open_proposal(community, moderator)
    response = _client("vi").post(_url("api-proposal-withdraw", proposal.pk))
    assert response.status_code == 403
    assert response.json()["error"] == "forbidden"


def test_a_bad_choice_is_400(plot) -> None:  # type: ignore[no-untyped-def]
    community, moderator, _members = plot
    proposal = open_proposal(community, moderator)
    for choice in ("maybe", 1, None):
        response = _json(_client("vi"), "put", _url("api-ballot", proposal.pk), {"choice": choice})
        assert response.status_code == 400


def test_a_body_over_the_limit_is_413(plot, settings) -> None:  # type: ignore[no-untyped-def]
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1024
    response = _json(
        _client("mo"),
        "post",
        _url("api-proposals"),
        {"title": "Big", "rationale": "x" * 5000, "document": {}},
    )
    assert response.status_code == 413
    assert response.json()["error"] == "payload_too_large"


def test_writes_need_the_csrf_token(plot) -> None:  # type: ignore[no-untyped-def]
    community, moderator, _members = plot
    proposal = open_proposal(community, moderator)
    voter = _client("vi", csrf=True)
    url = _url("api-ballot", proposal.pk)
    refused = _json(voter, "put", url, {"choice": "yes"})
    assert refused.status_code == 403
    assert "CSRF" in refused.json()["detail"]
    assert voter.get(_url("api-proposals")).status_code == 200  # reads need no token
    voter.get(reverse("governance:home", args=["plot"]))  # any page sets the cookie
    token = voter.cookies["csrftoken"].value
    accepted = voter.put(
        url,
        data=json.dumps({"choice": "yes"}),
        content_type="application/json",
        headers={"X-CSRFToken": token},
    )
    assert accepted.status_code == 200, accepted.content


def test_a_charter_change_is_drafted_and_opened_through_the_api(plot) -> None:  # type: ignore[no-untyped-def]
    community, _moderator, _members = plot
    mod = _client("mo")
    charter = charter_version_current(community=community).document
    created = _json(
        mod,
        "post",
        _url("api-proposals"),
        {"title": "Higher quorum", "kind": "charter", "document": {**charter, "quorum": 0.3}},
    )
    assert created.status_code == 201, created.content
    body = created.json()
    assert (body["kind"], body["base_version"], body["document"]["quorum"]) == ("charter", 1, 0.3)
    assert body["changes"] == [{"path": "quorum", "kind": "changed", "old": 0.2, "new": 0.3}]
    opened = mod.post(_url("api-proposal-open", body["id"])).json()
    assert opened["tally"]["approval_threshold"] == 0.66  # the supermajority, frozen
    listed = mod.get(_url("api-proposals")).json()["proposals"]
    assert [(p["kind"], p["state"]) for p in listed] == [("charter", "open")]
    policy = _json(
        mod,
        "post",
        _url("api-proposals"),
        {"title": "Policy", "document": changed_policy(community, model={"factors": 8})},
    )
    assert policy.json()["kind"] == "policy"  # the default kind


def test_an_invalid_charter_is_400_with_the_path_of_each_problem(plot) -> None:  # type: ignore[no-untyped-def]
    mod = _client("mo")
    for document, paths in [
        ({"quorum": 1.5, "voting_period_hours": "soon"}, ["quorum", "voting_period_hours"]),
        ({"quorom": 0.3}, ["quorom"]),
        ({"approval_threshold": 0.9}, [""]),
    ]:
        response = _json(
            mod,
            "post",
            _url("api-proposals"),
            {"title": "Bad", "kind": "charter", "document": document},
        )
        assert response.status_code == 400
        body = response.json()
        assert body["error"] == "invalid"
        assert sorted(p["path"] for p in body["detail"]["document"]) == paths, body
    bad_kind = _json(
        mod, "post", _url("api-proposals"), {"title": "x", "kind": "constitution", "document": {}}
    )
    assert bad_kind.status_code == 400
    assert list(bad_kind.json()["detail"]) == ["kind"]
    assert not Proposal.objects.exists()
