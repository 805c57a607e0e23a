"""The proposal life cycle: drafting, opening with a frozen electorate, ballots, closing."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.db import IntegrityError, transaction
from django.utils import timezone

from governance.charter import Charter
from governance.errors import (
    InvalidTransition,
    NotInElectorate,
    NotPermitted,
    ProposalNotOpen,
    VotingNotOver,
    http_status,
)
from governance.models import AuditEntry, Ballot, ElectorateEntry, Proposal
from governance.selectors import audit_verify, policy_version_current, proposal_tally
from governance.services import (
    ballot_cast,
    ballot_receipt,
    membership_create,
    proposal_close,
    proposal_create,
    proposal_open,
    proposal_ratify,
    proposal_withdraw,
)
from ranking.policy import PolicyError
from tests.governance.proposal_helpers import (
    changed_policy,
    make_voting_community,
    open_proposal,
    set_charter,
    vote_and_close,
)

pytestmark = pytest.mark.django_db


def test_a_proposal_goes_from_draft_to_open_to_passed_to_ratified() -> None:
    community, moderator, members = make_voting_community("happy")
    genesis = policy_version_current(community=community)
    proposal = proposal_create(
        community=community,
        author=moderator,
        title="More factors",
        rationale="Finer taste.",
        document=changed_policy(community, model={"factors": 32}),
    )
    assert proposal.state == "draft"
    assert proposal.base_version == genesis
    proposal_open(proposal=proposal, actor=moderator)
    proposal.refresh_from_db()
    assert proposal.state == "open"
    assert proposal.electorate_size == 5
    assert proposal.closes_at - proposal.opens_at == timedelta(hours=168)
    assert (proposal.quorum, proposal.approval_threshold) == (0.2, 0.5)
    vote_and_close(proposal, {members[0]: "yes", members[1]: "yes", members[2]: "no"})
    proposal.refresh_from_db()
    assert (proposal.state, proposal.yes_count, proposal.no_count) == ("passed", 2, 1)
    proposal_ratify(proposal=proposal)
    proposal.refresh_from_db()
    current = policy_version_current(community=community)
    assert proposal.state == "ratified"
    assert proposal.ratified_version == current
    assert current.parent == genesis
    assert current.document["model"]["factors"] == 32
    actions = list(
        AuditEntry.objects.filter(community=community, seq__gt=10).values_list("action", flat=True)
    )
    assert actions == [
        "proposal.created",
        "proposal.opened",
        "ballot.cast",
        "ballot.cast",
        "ballot.cast",
        "proposal.closed",
        "policy_version.created",
        "policy_version.made_current",
        "proposal.ratified",
    ]
    assert [chain.problem for chain in audit_verify(community=community)] == [None]


def test_it_rejects_an_invalid_document_with_field_paths() -> None:
    community, moderator, _ = make_voting_community("invalid")
    document = changed_policy(community, model={"factors": 0})
    document["refusals"] = [{"kind": "tag", "tag": "x", "reason": ""}]
    with pytest.raises(PolicyError) as failure:
        proposal_create(
            community=community, author=moderator, title="t", rationale="", document=document
        )
    assert {e["path"] for e in failure.value.errors} == {"model.factors", "refusals.0.reason"}
    assert not Proposal.objects.exists()


def test_it_rejects_a_proposal_that_changes_nothing() -> None:
    community, moderator, _ = make_voting_community("noop")
    with pytest.raises(PolicyError):
        proposal_create(
            community=community,
            author=moderator,
            title="t",
            rationale="",
            document=changed_policy(community),
        )


def test_plain_members_may_propose_only_if_the_charter_says_members() -> None:
    community, _, members = make_voting_community("who")
    document = changed_policy(community, model={"factors": 8})
    with pytest.raises(NotPermitted) as failure:
        proposal_create(
            community=community, author=members[0], title="t", rationale="", document=document
        )
    assert http_status(failure.value) == 403
    set_charter(community, who_may_propose="members")
    proposal = proposal_create(
        community=community, author=members[0], title="t", rationale="", document=document
    )
    assert proposal.state == "draft"


def test_another_plain_member_cannot_open_or_withdraw_someone_elses_proposal() -> None:
    community, moderator, members = make_voting_community("manage")
    proposal = proposal_create(
        community=community,
        author=moderator,
        title="t",
        rationale="",
        document=changed_policy(community, model={"factors": 8}),
    )
    with pytest.raises(NotPermitted):
        proposal_open(proposal=proposal, actor=members[0])
    with pytest.raises(NotPermitted):
        proposal_withdraw(proposal=proposal, actor=members[0])


def test_the_electorate_is_frozen_when_voting_opens() -> None:
    community, moderator, members = make_voting_community("frozen", members=4)
    proposal = open_proposal(community, moderator)
    latecomer = membership_create(community=community, external_id="late", actor=None)
    assert ElectorateEntry.objects.filter(proposal=proposal).count() == 5
    with pytest.raises(NotInElectorate) as failure:
        ballot_cast(proposal=proposal, member=latecomer, choice="yes")
    assert http_status(failure.value) == 403
    ballot_cast(proposal=proposal, member=members[0], choice="yes")
    tally = proposal_tally(proposal=proposal)
    # 1 of the 5 frozen voters: the latecomer does not grow the denominator.
    assert (tally["electorate_size"], tally["turnout"], tally["quorum_met"]) == (5, 0.2, True)


def test_a_member_of_another_community_cannot_vote() -> None:
    community, moderator, _ = make_voting_community("home")
    _, _, strangers = make_voting_community("away")
    proposal = open_proposal(community, moderator)
    with pytest.raises(NotInElectorate):
        ballot_cast(proposal=proposal, member=strangers[0], choice="yes")
    assert not Ballot.objects.exists()


def test_it_rejects_votes_after_close() -> None:
    community, moderator, members = make_voting_community("late")
    proposal = open_proposal(community, moderator)
    vote_and_close(proposal, {members[0]: "yes"})
    with pytest.raises(ProposalNotOpen) as failure:
        ballot_cast(proposal=proposal, member=members[1], choice="yes")
    assert http_status(failure.value) == 409


def test_it_rejects_votes_once_the_period_has_ended_even_before_the_close_runs() -> None:
    community, moderator, members = make_voting_community("ended")
    proposal = open_proposal(community, moderator)
    Proposal.objects.filter(pk=proposal.pk).update(closes_at=timezone.now())
    with pytest.raises(ProposalNotOpen):
        ballot_cast(proposal=proposal, member=members[0], choice="yes")


def test_it_rejects_votes_on_a_draft() -> None:
    community, moderator, members = make_voting_community("draft")
    proposal = proposal_create(
        community=community,
        author=moderator,
        title="t",
        rationale="",
        document=changed_policy(community, model={"factors": 8}),
    )
    with pytest.raises(ProposalNotOpen):
        ballot_cast(proposal=proposal, member=members[0], choice="yes")


def test_a_second_ballot_changes_the_first_and_the_log_keeps_both() -> None:
    community, moderator, members = make_voting_community("change")
    proposal = open_proposal(community, moderator)
    first = ballot_cast(proposal=proposal, member=members[0], choice="yes")
    second = ballot_cast(proposal=proposal, member=members[0], choice="no")
    assert Ballot.objects.filter(proposal=proposal).count() == 1
    assert Ballot.objects.get(proposal=proposal).choice == "no"
    assert first.receipt != second.receipt
    entries = AuditEntry.objects.filter(community=community, action__startswith="ballot.")
    assert [(e.action, e.payload["receipt"]) for e in entries] == [
        ("ballot.cast", first.receipt),
        ("ballot.changed", second.receipt),
    ]
    assert "choice" not in entries[0].payload


def test_the_receipt_can_be_recomputed_from_the_ballot_and_its_nonce() -> None:
    community, moderator, members = make_voting_community("receipt")
    proposal = open_proposal(community, moderator)
    ballot = ballot_cast(proposal=proposal, member=members[0], choice="abstain")
    ballot.refresh_from_db()
    assert ballot.receipt == ballot_receipt(
        proposal_id=proposal.pk,
        external_id=members[0].external_id,
        choice="abstain",
        cast_at=ballot.cast_at,
        nonce=ballot.nonce,
    )
    assert AuditEntry.objects.filter(payload_json__contains=ballot.receipt).count() == 1


def test_the_database_refuses_a_second_ballot_row_for_one_member() -> None:
    community, moderator, members = make_voting_community("unique")
    proposal = open_proposal(community, moderator)
    ballot = ballot_cast(proposal=proposal, member=members[0], choice="yes")
    with pytest.raises(IntegrityError), transaction.atomic():
        Ballot.objects.create(
            proposal=proposal,
            member=members[0],
            choice="no",
            cast_at=ballot.cast_at,
            nonce="n",
            receipt="r",
        )


def test_the_database_refuses_an_unknown_state_or_choice() -> None:
    community, moderator, members = make_voting_community("checks")
    proposal = open_proposal(community, moderator)
    with pytest.raises(IntegrityError), transaction.atomic():
        Proposal.objects.filter(pk=proposal.pk).update(state="adopted")
    ballot = ballot_cast(proposal=proposal, member=members[0], choice="yes")
    with pytest.raises(IntegrityError), transaction.atomic():
        Ballot.objects.filter(pk=ballot.pk).update(choice="maybe")


def test_it_refuses_to_close_before_the_period_ends() -> None:
    community, moderator, _ = make_voting_community("early")
    proposal = open_proposal(community, moderator)
    with pytest.raises(VotingNotOver):
        proposal_close(proposal=proposal)


def test_a_proposal_closes_and_ratifies_exactly_once() -> None:
    community, moderator, members = make_voting_community("once")
    proposal = open_proposal(community, moderator)
    vote_and_close(proposal, {members[0]: "yes"})
    with pytest.raises(InvalidTransition):
        proposal_close(proposal=proposal, now=proposal.closes_at + timedelta(hours=1))
    proposal_ratify(proposal=proposal)
    with pytest.raises(InvalidTransition):
        proposal_ratify(proposal=proposal)
    assert AuditEntry.objects.filter(community=community, action="proposal.ratified").count() == 1


def test_a_failed_proposal_cannot_be_ratified() -> None:
    community, moderator, members = make_voting_community("failed")
    proposal = open_proposal(community, moderator)
    vote_and_close(proposal, {members[0]: "no"})
    with pytest.raises(InvalidTransition):
        proposal_ratify(proposal=proposal)
    assert policy_version_current(community=community).number == 1


def test_withdrawing_stops_voting() -> None:
    community, moderator, members = make_voting_community("withdraw")
    proposal = open_proposal(community, moderator)
    proposal_withdraw(proposal=proposal, actor=moderator)
    with pytest.raises(ProposalNotOpen):
        ballot_cast(proposal=proposal, member=members[0], choice="yes")
    with pytest.raises(InvalidTransition):
        proposal_withdraw(proposal=proposal, actor=moderator)
    with pytest.raises(InvalidTransition):
        proposal_open(proposal=proposal, actor=moderator)


# --- Quorum and threshold ------------------------------------------------------------------


def _closed(slug: str, *, members: int, votes: list[str], **charter: float) -> Proposal:
    community, moderator, plain = make_voting_community(
        slug, members=members - 1, charter=Charter(**charter)
    )
    voters = [moderator, *plain]
    proposal = open_proposal(community, moderator)
    vote_and_close(proposal, dict(zip(voters, votes, strict=False)))
    proposal.refresh_from_db()
    return proposal


@pytest.mark.parametrize(
    ("members", "votes", "charter", "expected"),
    [
        # Quorum 0.2 of 10 is exactly 2 voters; abstentions count towards it.
        (10, ["yes", "abstain"], {"quorum": 0.2}, "passed"),
        (10, ["yes"], {"quorum": 0.2}, "failed"),
        # Quorum 0.3 of 10: 0.3 is not exactly representable; 3 voters still meet it.
        (10, ["yes", "yes", "no"], {"quorum": 0.3}, "passed"),
        # At 0.5, exactly half is not enough; abstentions do not count against.
        (10, ["yes", "no", "abstain"], {"quorum": 0.2}, "failed"),
        (10, ["yes", "yes", "no", "abstain", "abstain"], {"quorum": 0.2}, "passed"),
        # Above 0.5, the share must be at least the threshold.
        (
            10,
            ["yes", "yes", "no"],
            {"quorum": 0.2, "approval_threshold": 0.75, "charter_change_supermajority": 0.8},
            "failed",
        ),
        (
            10,
            ["yes", "yes", "yes", "no"],
            {"quorum": 0.2, "approval_threshold": 0.75, "charter_change_supermajority": 0.8},
            "passed",
        ),
        # Only abstentions: quorum met, but nobody approved.
        (4, ["abstain", "abstain"], {"quorum": 0.5}, "failed"),
        # Quorum 0 with no votes at all: no approval.
        (4, [], {"quorum": 0.0}, "failed"),
        # Unanimity required and met.
        (
            3,
            ["yes", "yes", "yes"],
            {"quorum": 1.0, "approval_threshold": 1.0, "charter_change_supermajority": 1.0},
            "passed",
        ),
    ],
)
def test_quorum_and_threshold_decide_the_result(
    members: int, votes: list[str], charter: dict[str, float], expected: str
) -> None:
    slug = f"q{abs(hash((members, tuple(votes), tuple(charter.items())))) % 10**8}"
    assert _closed(slug, members=members, votes=votes, **charter).state == expected


def test_the_tally_reports_turnout_quorum_and_approval() -> None:
    community, moderator, members = make_voting_community("tally", members=7)
    proposal = open_proposal(community, moderator)
    for member, choice in zip(members, ["yes", "yes", "yes", "no", "abstain"], strict=False):
        ballot_cast(proposal=proposal, member=member, choice=choice)
    tally = proposal_tally(proposal=proposal)
    assert tally == {
        "yes": 3,
        "no": 1,
        "abstain": 1,
        "voters": 5,
        "electorate_size": 8,
        "turnout": 5 / 8,
        "quorum": 0.2,
        "quorum_met": True,
        "approval": 0.75,
        "approval_threshold": 0.5,
    }


def test_the_frozen_rules_apply_even_if_the_charter_changes_during_the_vote() -> None:
    community, moderator, members = make_voting_community("rules", members=9)
    proposal = open_proposal(community, moderator)
    set_charter(community, quorum=0.9)
    proposal = vote_and_close(proposal, {members[0]: "yes", members[1]: "yes"})
    assert proposal.state == "passed"
