from __future__ import annotations

import json
from datetime import timedelta

import pytest
from django.test import Client
from django.urls import reverse
from pydantic import ValidationError

from governance.charter import Charter, default_charter
from governance.errors import InvalidTransition, NotPermitted
from governance.models import (
    AuditEntry,
    CharterVersion,
    Community,
    Membership,
    PolicyVersion,
    Proposal,
)
from governance.selectors import audit_verify, charter_of, charter_version_current
from governance.services import proposal_create, proposal_open, proposal_ratify
from governance.signals import policy_version_ratified
from ranking.policy import PolicyError
from tests.governance.proposal_helpers import make_voting_community, open_proposal, vote_and_close


def test_the_default_charter_spells_out_the_documented_defaults() -> None:
    assert default_charter().model_dump() == {
        "schema_version": 1,
        "quorum": 0.2,
        "approval_threshold": 0.5,
        "voting_period_hours": 168,
        "who_may_propose": "moderators",
        "charter_change_supermajority": 0.66,
    }


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("quorum", -0.1),
        ("quorum", 1.5),
        ("approval_threshold", 0.4),
        ("approval_threshold", 1.01),
        ("voting_period_hours", 0),
        ("voting_period_hours", 2161),
        ("who_may_propose", "anyone"),
        ("charter_change_supermajority", 0.49),
    ],
)
def test_a_value_out_of_range_is_rejected_naming_the_field(field: str, value: object) -> None:
    with pytest.raises(ValidationError) as error:
        Charter.model_validate({field: value})
    assert error.value.errors()[0]["loc"] == (field,)


def test_an_unknown_field_is_rejected() -> None:
    with pytest.raises(ValidationError, match="quorom"):
        Charter.model_validate({"quorom": 0.3})


def test_changing_the_charter_may_not_be_easier_than_changing_the_policy() -> None:
    with pytest.raises(ValidationError, match="may not be easier"):
        Charter(approval_threshold=0.8, charter_change_supermajority=0.7)
    assert Charter(approval_threshold=0.8, charter_change_supermajority=0.8)


def test_a_charter_is_frozen_and_hashes_its_canonical_json() -> None:
    charter = Charter()
    with pytest.raises(ValidationError):
        charter.quorum = 0.9  # type: ignore[misc]
    assert Charter(quorum=0.2).sha256() == charter.sha256()
    assert Charter(quorum=0.3).sha256() != charter.sha256()


# --- Charter amendments through proposals ---------------------------------------------------------


def _charter_document(community: Community, **fields: object) -> dict[str, object]:
    return {**charter_version_current(community=community).document, **fields}


def _open_charter_proposal(
    community: Community, author: Membership, *, title: str = "Rules", **fields: object
) -> Proposal:
    proposal = proposal_create(
        community=community,
        author=author,
        title=title,
        rationale="Better rules.",
        document=_charter_document(community, **fields),
        kind="charter",
    )
    return proposal_open(proposal=proposal, actor=author)


@pytest.mark.django_db
def test_a_charter_proposal_is_based_on_the_current_charter_and_validated_like_one() -> None:
    community, moderator, _ = make_voting_community("amend")
    proposal = proposal_create(
        community=community,
        author=moderator,
        title="Higher quorum",
        rationale="",
        document={"quorum": 0.3},  # the defaults are spelled out, as for a charter version
        kind="charter",
    )
    genesis = charter_version_current(community=community)
    assert (proposal.kind, proposal.base, proposal.base_version) == ("charter", genesis, None)
    assert proposal.document == {**genesis.document, "quorum": 0.3}
    created = AuditEntry.objects.get(community=community, action="proposal.created")
    assert (created.payload["kind"], created.payload["base_version"]) == ("charter", 1)
    assert created.payload["sha256"] == Charter(quorum=0.3).sha256()

    invalid = [
        ({"quorum": 1.5, "who_may_propose": "anyone"}, {"quorum", "who_may_propose"}),
        ({"quorom": 0.3}, {"quorom"}),
        ({"approval_threshold": 0.8}, {""}),  # above the supermajority: a rule between fields
        (genesis.document, {""}),  # changes nothing
    ]
    for document, paths in invalid:
        with pytest.raises(PolicyError) as error:
            proposal_create(
                community=community,
                author=moderator,
                title="Bad",
                rationale="",
                document=document,
                kind="charter",
            )
        assert {e["path"] for e in error.value.errors} == paths, error.value.errors
    with pytest.raises(PolicyError, match="kind"):
        proposal_create(
            community=community,
            author=moderator,
            title="Bad",
            rationale="",
            document={"quorum": 0.3},
            kind="constitution",
        )
    assert Proposal.objects.count() == 1


@pytest.mark.django_db
def test_who_may_propose_a_charter_change_is_the_charters_rule() -> None:
    community, _moderator, members = make_voting_community("who")
    with pytest.raises(NotPermitted):
        proposal_create(
            community=community,
            author=members[0],
            title="Me too",
            rationale="",
            document={"who_may_propose": "members"},
            kind="charter",
        )


@pytest.mark.django_db
def test_a_charter_proposal_needs_the_supermajority_frozen_at_opening() -> None:
    # Electorate of 7: the moderator and six members. Default charter: threshold 0.5,
    # supermajority 0.66.
    community, moderator, members = make_voting_community("super", members=6)
    charter_change = _open_charter_proposal(community, moderator, quorum=0.3)
    policy_change = open_proposal(community, moderator)
    assert (charter_change.approval_threshold, policy_change.approval_threshold) == (0.66, 0.5)
    opened = AuditEntry.objects.filter(community=community, action="proposal.opened")
    assert [(e.payload["kind"], e.payload["approval_threshold"]) for e in opened] == [
        ("charter", 0.66),
        ("policy", 0.5),
    ]
    # 3 yes of 5 (0.6): enough for the policy, not for the charter.
    votes = dict.fromkeys(members[:3], "yes") | dict.fromkeys(members[3:5], "no")
    assert vote_and_close(charter_change, votes).state == "failed"
    assert vote_and_close(policy_change, votes).state == "passed"
    # 4 yes of 6 (0.667 >= 0.66) passes a charter change.
    again = _open_charter_proposal(community, moderator, quorum=0.3)
    votes = dict.fromkeys([moderator, *members[:3]], "yes") | dict.fromkeys(members[3:5], "no")
    assert vote_and_close(again, votes).state == "passed"


@pytest.mark.django_db
def test_ratifying_a_charter_proposal_makes_a_new_current_charter_once_audited() -> None:
    community, moderator, members = make_voting_community("ratify")
    genesis = charter_version_current(community=community)
    proposal = _open_charter_proposal(community, moderator, voting_period_hours=24)
    vote_and_close(proposal, {members[0]: "yes", members[1]: "yes"})
    before = AuditEntry.objects.filter(community=community).count()
    received = []

    def receiver(sender, **kwargs):  # type: ignore[no-untyped-def]
        received.append(kwargs)

    policy_version_ratified.connect(receiver)
    try:
        proposal_ratify(proposal=proposal)
        with pytest.raises(InvalidTransition):
            proposal_ratify(proposal=proposal)
    finally:
        policy_version_ratified.disconnect(receiver)
    proposal.refresh_from_db()
    current = charter_version_current(community=community)
    assert proposal.state == "ratified"
    assert (proposal.ratified, proposal.ratified_version) == (current, None)
    assert (current.number, current.parent, current.document["voting_period_hours"]) == (
        2,
        genesis,
        24,
    )
    assert current.sha256 == charter_of(current).sha256()
    assert CharterVersion.objects.filter(community=community, is_current=True).count() == 1
    assert PolicyVersion.objects.filter(community=community).count() == 1  # the policy is untouched
    new = AuditEntry.objects.filter(community=community).order_by("seq")[before:]
    assert [e.action for e in new] == [
        "charter_version.created",
        "charter_version.made_current",
        "proposal.ratified",
    ]
    assert new[2].payload == {
        "kind": "charter",
        "version": 2,
        "base_version": 1,
        "merged_onto": None,
        "sha256": current.sha256,
    }
    assert received == []  # no feed recomputes for a charter change
    assert [chain.problem for chain in audit_verify(community=community)] == [None]
    # The new rules apply to proposals opened from now on.
    later = open_proposal(community, moderator)
    assert later.closes_at - later.opens_at == timedelta(hours=24)
    assert later.charter_version == current


@pytest.mark.django_db
def test_proposals_already_open_keep_the_rules_frozen_at_their_opening() -> None:
    community, moderator, members = make_voting_community("frozen", members=6)
    running = open_proposal(community, moderator)
    charter_change = _open_charter_proposal(
        community, moderator, approval_threshold=0.8, charter_change_supermajority=0.8, quorum=0.5
    )
    vote_and_close(charter_change, dict.fromkeys(members[:5], "yes"))
    proposal_ratify(proposal=charter_change)
    assert charter_of(charter_version_current(community=community)).approval_threshold == 0.8
    running.refresh_from_db()
    assert (running.quorum, running.approval_threshold, running.charter_version.number) == (
        0.2,
        0.5,
        1,
    )
    # 2 yes, 1 no: 0.67 passes under the frozen 0.5 (it would fail 0.8), turnout 3/7 >= 0.2
    # (it would miss 0.5).
    votes = {members[0]: "yes", members[1]: "yes", members[2]: "no"}
    assert vote_and_close(running, votes).state == "passed"
    newer = open_proposal(community, moderator, model={"factors": 16})
    assert (newer.quorum, newer.approval_threshold, newer.charter_version.number) == (0.5, 0.8, 2)


@pytest.mark.django_db
def test_charter_proposals_merge_three_ways_and_conflict_like_policy_ones() -> None:
    community, moderator, members = make_voting_community("merge", members=4)
    yes = dict.fromkeys(members[:3], "yes")
    quorum = vote_and_close(_open_charter_proposal(community, moderator, quorum=0.3), yes)
    period = vote_and_close(
        _open_charter_proposal(community, moderator, voting_period_hours=48), yes
    )
    clash = vote_and_close(_open_charter_proposal(community, moderator, quorum=0.4), yes)
    # Each side valid, the merge not: 0.66 threshold with a 0.6 supermajority.
    stricter = vote_and_close(
        _open_charter_proposal(community, moderator, approval_threshold=0.66), yes
    )
    laxer = vote_and_close(
        _open_charter_proposal(community, moderator, charter_change_supermajority=0.6), yes
    )
    policy = vote_and_close(open_proposal(community, moderator), yes)
    for proposal in (quorum, period, clash, stricter, laxer, policy):
        proposal_ratify(proposal=proposal)
        proposal.refresh_from_db()
    assert [p.state for p in (quorum, period, clash, stricter, laxer, policy)] == [
        "ratified",
        "ratified",
        "conflicted",
        "ratified",
        "conflicted",
        "ratified",  # a charter change never conflicts with a policy change
    ]
    current = charter_of(charter_version_current(community=community))
    assert (current.quorum, current.voting_period_hours, current.approval_threshold) == (
        0.3,
        48,
        0.66,
    )
    assert current.charter_change_supermajority == 0.66
    assert clash.conflict_paths == ["quorum"]
    # A rule between fields has no path: the proposal's own change is reported.
    assert laxer.conflict_paths == ["charter_change_supermajority"]
    assert period.ratified.parent == quorum.ratified
    merged = AuditEntry.objects.get(action="proposal.ratified", object_id=period.pk)
    assert (merged.payload["base_version"], merged.payload["merged_onto"]) == (1, 2)
    conflicted = AuditEntry.objects.filter(action="proposal.conflicted").order_by("seq")
    assert [(e.payload["kind"], e.payload["paths"]) for e in conflicted] == [
        ("charter", ["quorum"]),
        ("charter", ["charter_change_supermajority"]),
    ]
    assert CharterVersion.objects.filter(community=community).count() == 4
    assert [chain.problem for chain in audit_verify(community=community)] == [None]


# --- In the browser ------------------------------------------------------------------------------


@pytest.fixture
def signed_in_moderator(django_user_model):  # type: ignore[no-untyped-def]
    community, moderator, _members = make_voting_community("pages", members=3)
    user = django_user_model.objects.create_user(username="mo", password="pw-mo")
    Membership.objects.filter(pk=moderator.pk).update(user=user)
    client = Client()
    client.force_login(user)
    return community, client


@pytest.mark.django_db
def test_a_charter_change_is_drafted_in_the_browser_and_its_diff_shown(  # type: ignore[no-untyped-def]
    signed_in_moderator,
) -> None:
    community, client = signed_in_moderator
    home = client.get(reverse("governance:home", args=[community.slug])).content.decode()
    new_url = reverse("governance:proposal-new", args=[community.slug])
    assert f"{new_url}?kind=charter" in home
    assert "needs at least 66&nbsp;%" in home
    form = client.get(new_url, {"kind": "charter"})
    body = form.content.decode()
    assert "Propose a charter change" in body and 'name="kind" value="charter"' in body
    assert "&quot;charter_change_supermajority&quot;: 0.66" in body  # prefilled, escaped
    document = _charter_document(community, quorum=0.35)

    bad = client.post(
        new_url,
        {"kind": "charter", "title": "T", "rationale": "", "document": '{"quorum": 2}'},
    )
    assert bad.status_code == 400
    assert "<code>quorum</code>" in bad.content.decode()
    assert Proposal.objects.count() == 0

    created = client.post(
        new_url,
        {"kind": "charter", "title": "Quorum", "rationale": "", "document": json.dumps(document)},
    )
    assert created.status_code == 302
    proposal = Proposal.objects.get()
    assert (proposal.kind, proposal.document["quorum"]) == ("charter", 0.35)
    page = client.get(created["Location"]).content.decode()
    assert "drafted on charter version 1" in page
    assert "<code>quorum</code>" in page and "<code>0.2</code>" in page
    assert "<code>0.35</code>" in page
    assert "No changes." not in page
