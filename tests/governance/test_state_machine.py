"""The proposal rules, checked by a Hypothesis state machine against a plain-Python model.

Each example gets a fresh community (moderator plus three members) and runs random steps: draft
and open policy or charter proposals, members join, members of the frozen electorate (and
others, who are refused) cast and change ballots, proposals close at their deadline, are
ratified (twice over, the second call with a stale copy, as a concurrent caller would), and are
withdrawn. After every step the database must agree with the model: states, ballots, counted
tallies, which policy and charter versions are current, exactly one ``proposal.ratified`` entry per
ratified proposal, and an audit chain that verifies.

Policy proposals change only ``model.factors`` and charter proposals only ``quorum``, so the
model's three-way merge is one comparison: a proposal drafted on an older version still applies
if the value it changes was not changed meanwhile, or was changed to the same value; otherwise it
is conflicted. No sleeping: closing passes ``now`` just past ``closes_at``.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from datetime import timedelta
from fractions import Fraction

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from governance.errors import InvalidTransition, NotInElectorate, ProposalNotOpen, VotingNotOver
from governance.models import (
    AuditEntry,
    Ballot,
    CharterVersion,
    ElectorateEntry,
    PolicyVersion,
    Proposal,
)
from governance.selectors import audit_verify, charter_version_current, policy_version_current
from governance.services import (
    ballot_cast,
    membership_create,
    proposal_close,
    proposal_create,
    proposal_open,
    proposal_ratify,
    proposal_withdraw,
)
from ranking.policy import PolicyError
from tests.governance.proposal_helpers import make_voting_community

FACTORS = (16, 32, 64)  # 64 is the default policy's
QUORUMS = (0.2, 0.4, 0.6)  # 0.2 is the default charter's
THRESHOLD, SUPERMAJORITY = Fraction(1, 2), Fraction(66, 100)  # the default charter's, unchanged
KINDS = st.sampled_from(["policy", "charter"])
# Mostly a proposal in a state the step starts from; sometimes any proposal, to be refused.
ANYONE = st.sampled_from([False, False, False, True])
_communities = itertools.count()


@dataclass
class ModelProposal:
    kind: str
    value: float  # the proposed factors or quorum
    base_number: int
    base_value: float
    state: str = "draft"
    electorate: frozenset[int] = frozenset()
    quorum: Fraction = Fraction(0)
    threshold: Fraction = Fraction(0)
    ballots: dict[int, str] = field(default_factory=dict)
    counted: tuple[int, int, int] | None = None
    ratified_number: int | None = None


def _passes(p: ModelProposal) -> bool:
    yes = sum(choice == "yes" for choice in p.ballots.values())
    no = sum(choice == "no" for choice in p.ballots.values())
    if not p.electorate or Fraction(len(p.ballots), len(p.electorate)) < p.quorum:
        return False
    if yes + no == 0:
        return False
    share = Fraction(yes, yes + no)
    return share > p.threshold if p.threshold == Fraction(1, 2) else share >= p.threshold


class ProposalRules(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        slug = f"sm{next(_communities)}"
        self.community, self.moderator, plain = make_voting_community(slug, members=3)
        self.members = [self.moderator, *plain]
        # The model: the versions' values by number, and which number is current.
        self.policy = {1: 64.0}
        self.charter = {1: 0.2}
        self.policy_current = self.charter_current = 1
        self.model: dict[int, ModelProposal] = {}
        self.withdrawals = 0

    def _current(self, kind: str) -> tuple[int, float]:
        if kind == "policy":
            return self.policy_current, self.policy[self.policy_current]
        return self.charter_current, self.charter[self.charter_current]

    def _pick(
        self, states: tuple[str, ...], index: int, anyone: bool, voted: bool = False
    ) -> int | None:
        """A proposal in one of ``states`` (with ``voted``: one with ballots), or with
        ``anyone`` any proposal at all (mostly to be refused)."""
        pks = [
            pk
            for pk, p in sorted(self.model.items())
            if anyone or (p.state in states and (p.ballots or not voted))
        ]
        return pks[index % len(pks)] if pks else None

    # --- Rules ----------------------------------------------------------------------------------

    @initialize(kind=KINDS, same=st.booleans())
    def first(self, kind: str, same: bool) -> None:
        # Every example starts with two open proposals of one kind on one base, so that more of
        # them reach a decision, and some a merge (same change) or a conflict (different ones).
        index = 0 if kind == "policy" else 1  # not the current value
        self.draft(kind=kind, index=index, open_now=True)
        self.draft(kind=kind, index=index if same else index + 1, open_now=True)

    @precondition(
        lambda self: (
            len(self.model) < 8
            and sum(p.state in ("draft", "open") for p in self.model.values()) < 3
        )
    )
    @rule(kind=KINDS, index=st.integers(0, 2), open_now=st.sampled_from([True, True, False]))
    def draft(self, kind: str, index: int, open_now: bool) -> None:
        value = FACTORS[index] if kind == "policy" else QUORUMS[index]
        number, current = self._current(kind)
        if kind == "policy":
            document = dict(policy_version_current(community=self.community).document)
            document["model"] = {**document["model"], "factors": value}
        else:
            document = {**charter_version_current(community=self.community).document}
            document["quorum"] = value
        if value == current:
            with pytest.raises(PolicyError, match="current"):
                proposal_create(
                    community=self.community,
                    author=self.moderator,
                    title="No change",
                    rationale="",
                    document=document,
                    kind=kind,
                )
            return
        proposal = proposal_create(
            community=self.community,
            author=self.moderator,
            title=f"{kind} {value}",
            rationale="",
            document=document,
            kind=kind,
        )
        self.model[proposal.pk] = ModelProposal(
            kind=kind, value=value, base_number=number, base_value=current
        )
        if open_now:
            self._open(proposal.pk)

    def _open(self, pk: int) -> None:
        p = self.model[pk]
        proposal = Proposal.objects.get(pk=pk)
        if p.state != "draft":
            with pytest.raises(InvalidTransition):
                proposal_open(proposal=proposal, actor=self.moderator)
            return
        proposal_open(proposal=proposal, actor=self.moderator)
        p.state = "open"
        p.electorate = frozenset(m.pk for m in self.members)
        p.quorum = Fraction(str(self.charter[self.charter_current]))
        p.threshold = SUPERMAJORITY if p.kind == "charter" else THRESHOLD

    @rule(index=st.integers(0, 4), anyone=ANYONE)
    def open(self, index: int, anyone: bool) -> None:
        pk = self._pick(("draft",), index, anyone)
        if pk is not None:
            self._open(pk)

    @precondition(lambda self: len(self.members) < 8)
    @rule()
    def join(self) -> None:
        self.members.append(
            membership_create(
                community=self.community,
                external_id=f"{self.community.slug}-j{len(self.members)}",
                actor=None,
            )
        )

    @rule(
        index=st.integers(0, 4),
        anyone=ANYONE,
        who=st.integers(0, 7),
        choices=st.lists(st.sampled_from(["yes", "no", "abstain"]), min_size=1, max_size=8),
        then_close=st.booleans(),
        then_ratify=st.booleans(),
    )
    def vote(
        self,
        index: int,
        anyone: bool,
        who: int,
        choices: list[str],
        then_close: bool,
        then_ratify: bool,
    ) -> None:
        """Member ``who`` and the members after it cast (or change) ballots, one choice each, in
        turn; late joiners are among them once there are any. Then, perhaps, the vote ends."""
        pk = self._pick(("open",), index, anyone)
        if pk is None:
            return
        p = self.model[pk]
        proposal = Proposal.objects.get(pk=pk)
        for offset, choice in enumerate(choices):
            member = self.members[(who + offset) % len(self.members)]
            if p.state != "open":
                with pytest.raises(ProposalNotOpen):
                    ballot_cast(proposal=proposal, member=member, choice=choice)
            elif member.pk not in p.electorate:
                with pytest.raises(NotInElectorate):
                    ballot_cast(proposal=proposal, member=member, choice=choice)
            else:
                ballot = ballot_cast(proposal=proposal, member=member, choice=choice)
                assert ballot.choice == choice
                p.ballots[member.pk] = choice
        if then_close and p.state == "open":
            self._close(pk)
            if then_ratify and p.state == "passed":
                self._ratify(pk)

    @rule(
        index=st.integers(0, 4), anyone=ANYONE, early=st.sampled_from([False, False, False, True])
    )
    def close(self, index: int, anyone: bool, early: bool) -> None:
        # A vote without ballots fails; closing one needs ``anyone``, so that most votes count.
        pk = self._pick(("open",), index, anyone, voted=True)
        if pk is None:
            return
        p = self.model[pk]
        proposal = Proposal.objects.get(pk=pk)
        if p.state == "open" and early:
            with pytest.raises(VotingNotOver):
                proposal_close(proposal=proposal, now=proposal.closes_at - timedelta(seconds=1))
            return
        self._close(pk)

    def _close(self, pk: int) -> None:
        p = self.model[pk]
        proposal = Proposal.objects.get(pk=pk)
        deadline = (proposal.closes_at or proposal.created_at) + timedelta(seconds=1)
        if p.state != "open":
            with pytest.raises(InvalidTransition):
                proposal_close(proposal=proposal, now=deadline)
            return
        proposal_close(proposal=proposal, now=deadline)
        p.state = "passed" if _passes(p) else "failed"
        choices = list(p.ballots.values())
        p.counted = (choices.count("yes"), choices.count("no"), choices.count("abstain"))

    @rule(index=st.integers(0, 4), anyone=ANYONE)
    def ratify(self, index: int, anyone: bool) -> None:
        pk = self._pick(("passed",), index, anyone)
        if pk is not None:
            self._ratify(pk)

    def _ratify(self, pk: int) -> None:
        p = self.model[pk]
        # Two callers that both loaded the proposal while it was passed.
        first, second = Proposal.objects.get(pk=pk), Proposal.objects.get(pk=pk)
        if p.state != "passed":
            with pytest.raises(InvalidTransition):
                proposal_ratify(proposal=first)
            return
        number, current = self._current(p.kind)
        if number == p.base_number or current in (p.base_value, p.value):
            versions = self.policy if p.kind == "policy" else self.charter
            new = max(versions) + 1
            versions[new] = p.value
            if p.kind == "policy":
                self.policy_current = new
            else:
                self.charter_current = new
            p.state, p.ratified_number = "ratified", new
        else:
            p.state = "conflicted"
        assert proposal_ratify(proposal=first).state == p.state
        with pytest.raises(InvalidTransition):
            proposal_ratify(proposal=second)

    # Twice per example at most, or withdrawals would end most proposals before their vote.
    @precondition(lambda self: self.withdrawals < 2)
    @rule(index=st.integers(0, 4), anyone=ANYONE)
    def withdraw(self, index: int, anyone: bool) -> None:
        self.withdrawals += 1
        pk = self._pick(("draft", "open"), index, anyone)
        if pk is None:
            return
        p = self.model[pk]
        proposal = Proposal.objects.get(pk=pk)
        if p.state not in ("draft", "open"):
            with pytest.raises(InvalidTransition):
                proposal_withdraw(proposal=proposal, actor=self.moderator)
            return
        proposal_withdraw(proposal=proposal, actor=self.moderator)
        p.state = "withdrawn"

    # --- Checks after every step ----------------------------------------------------------------

    @invariant()
    def proposals_agree_with_the_model(self) -> None:
        rows = Proposal.objects.filter(community=self.community).select_related(
            "ratified_version", "ratified_charter_version"
        )
        assert {row.pk for row in rows} == set(self.model)
        ballots: dict[int, dict[int, str]] = {pk: {} for pk in self.model}
        for proposal_id, member_id, choice in Ballot.objects.filter(
            proposal__community=self.community
        ).values_list("proposal_id", "member_id", "choice"):
            ballots[proposal_id][member_id] = choice
        electorates: dict[int, set[int]] = {pk: set() for pk in self.model}
        for proposal_id, member_id in ElectorateEntry.objects.filter(
            proposal__community=self.community
        ).values_list("proposal_id", "member_id"):
            electorates[proposal_id].add(member_id)
        for row in rows:
            p = self.model[row.pk]
            assert (row.kind, row.state) == (p.kind, p.state)
            if p.electorate:
                assert row.electorate_size == len(p.electorate)
                assert Fraction(str(row.quorum)) == p.quorum
                assert Fraction(str(row.approval_threshold)) == p.threshold
            if p.counted is not None:
                assert (row.yes_count, row.no_count, row.abstain_count) == p.counted
            ratified = row.ratified
            assert (ratified.number if ratified else None) == p.ratified_number
            assert ballots[row.pk] == p.ballots
            assert electorates[row.pk] == p.electorate

    @invariant()
    def the_model_versions_are_current(self) -> None:
        for model, versions, number, key in (
            (PolicyVersion, self.policy, self.policy_current, "factors"),
            (CharterVersion, self.charter, self.charter_current, "quorum"),
        ):
            current = model.objects.filter(community=self.community, is_current=True)
            assert [v.number for v in current] == [number]
            document = current[0].document
            assert (document["model"][key] if key == "factors" else document[key]) == versions[
                number
            ]
            assert model.objects.filter(community=self.community).count() == len(versions)

    @invariant()
    def each_ratification_is_audited_once_and_the_chain_verifies(self) -> None:
        ratified = AuditEntry.objects.filter(community=self.community, action="proposal.ratified")
        by_proposal = sorted(int(pk) for pk in ratified.values_list("object_id", flat=True))
        assert by_proposal == sorted(pk for pk, p in self.model.items() if p.state == "ratified")
        assert [chain.problem for chain in audit_verify(community=self.community)] == [None]


@pytest.mark.django_db
def test_the_proposal_rules_hold_under_random_steps() -> None:
    # Bounded so that it runs in well under a minute on SQLite and PostgreSQL on a small machine.
    run_state_machine_as_test(
        ProposalRules,
        settings=settings(
            max_examples=30,
            stateful_step_count=30,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )
