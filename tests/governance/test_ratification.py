"""Ratification: exactly once, three-way merge or conflict, the close task, the signal."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from governance.merge import three_way_merge
from governance.models import AuditEntry, PolicyVersion, Proposal
from governance.selectors import audit_verify, policy_version_current
from governance.services import ballot_cast, proposal_ratify, proposals_close_due
from governance.signals import policy_version_ratified
from governance.tasks import close_due_proposals
from tests.governance.proposal_helpers import make_voting_community, open_proposal, vote_and_close

pytestmark = pytest.mark.django_db


def _passed(community, moderator, members, **sections) -> Proposal:  # type: ignore[no-untyped-def]
    proposal = open_proposal(community, moderator, **sections)
    return vote_and_close(proposal, {members[0]: "yes", members[1]: "yes"})


def test_disjoint_changes_of_two_proposals_drafted_on_one_version_merge() -> None:
    community, moderator, members = make_voting_community("merge")
    first = _passed(community, moderator, members, model={"factors": 32})
    second = _passed(community, moderator, members, ranking={"diversity": 0.3})
    proposal_ratify(proposal=first)
    proposal_ratify(proposal=second)
    second.refresh_from_db()
    assert second.state == "ratified"
    current = policy_version_current(community=community)
    assert current.number == 3 and current.parent.number == 2
    assert current.document["model"]["factors"] == 32
    assert current.document["ranking"]["diversity"] == 0.3
    entry = AuditEntry.objects.get(
        community=community, action="proposal.ratified", object_id=second.pk
    )
    assert (entry.payload["base_version"], entry.payload["merged_onto"]) == (1, 2)


def test_overlapping_changes_conflict_with_their_paths_and_overwrite_nothing() -> None:
    community, moderator, members = make_voting_community("clash")
    first = _passed(community, moderator, members, model={"factors": 32})
    second = _passed(community, moderator, members, model={"factors": 8, "iterations": 20})
    proposal_ratify(proposal=first)
    proposal_ratify(proposal=second)
    second.refresh_from_db()
    assert second.state == "conflicted"
    assert second.conflict_paths == ["model.factors"]
    assert second.ratified_version is None
    assert policy_version_current(community=community).document["model"]["factors"] == 32
    entry = AuditEntry.objects.get(community=community, action="proposal.conflicted")
    assert entry.payload["paths"] == ["model.factors"]
    assert [chain.problem for chain in audit_verify(community=community)] == [None]


def test_the_same_change_made_twice_is_no_conflict() -> None:
    community, moderator, members = make_voting_community("twice")
    first = _passed(community, moderator, members, model={"factors": 32})
    second = _passed(community, moderator, members, model={"factors": 32, "iterations": 20})
    proposal_ratify(proposal=first)
    assert proposal_ratify(proposal=second).state == "ratified"
    document = policy_version_current(community=community).document
    assert (document["model"]["factors"], document["model"]["iterations"]) == (32, 20)


def test_lists_merge_as_a_whole() -> None:
    base = {"refusals": [], "model": {"factors": 1}}
    tag = {"kind": "tag", "tag": "a", "reason": "r"}
    other = {"kind": "tag", "tag": "b", "reason": "r"}
    both = three_way_merge(
        base=base,
        proposed={"refusals": [tag], "model": {"factors": 1}},
        current={"refusals": [other], "model": {"factors": 1}},
    )
    assert both.conflicts == ["refusals"]
    one = three_way_merge(
        base=base,
        proposed={"refusals": [tag], "model": {"factors": 1}},
        current={"refusals": [], "model": {"factors": 2}},
    )
    assert one.document == {"refusals": [tag], "model": {"factors": 2}}


def test_a_merge_that_removes_a_key_removes_it() -> None:
    result = three_way_merge(
        base={"a": {"x": 1, "y": 2}, "b": 1},
        proposed={"a": {"x": 1}, "b": 1},
        current={"a": {"x": 1, "y": 2}, "b": 2},
    )
    assert result.document == {"a": {"x": 1}, "b": 2}


def test_the_close_task_is_idempotent() -> None:
    community, moderator, members = make_voting_community("task")
    proposal = open_proposal(community, moderator)
    for member in members[:2]:
        ballot_cast(proposal=proposal, member=member, choice="yes")
    Proposal.objects.filter(pk=proposal.pk).update(closes_at=timezone.now() - timedelta(1))
    first = close_due_proposals()
    assert first == {"closed": 1, "ratified": 1, "conflicted": 0, "errors": 0}
    state = list(Proposal.objects.values_list("state", "ratified_version_id"))
    entries = AuditEntry.objects.count()
    assert close_due_proposals() == {"closed": 0, "ratified": 0, "conflicted": 0, "errors": 0}
    assert list(Proposal.objects.values_list("state", "ratified_version_id")) == state
    assert AuditEntry.objects.count() == entries
    assert PolicyVersion.objects.filter(community=community).count() == 2


def test_the_close_task_goes_on_after_one_proposal_fails(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    community, moderator, members = make_voting_community("robust")
    first = _passed(community, moderator, members, model={"factors": 32})
    second = _passed(community, moderator, members, ranking={"diversity": 0.3})
    from governance.services import proposals

    real = proposals.proposal_ratify

    def flaky(*, proposal: Proposal) -> Proposal:
        if proposal.pk == first.pk:
            raise RuntimeError("boom")
        return real(proposal=proposal)

    monkeypatch.setattr(proposals, "proposal_ratify", flaky)
    assert proposals_close_due()["errors"] == 1
    second.refresh_from_db()
    first.refresh_from_db()
    assert (first.state, second.state) == ("passed", "ratified")
    monkeypatch.setattr(proposals, "proposal_ratify", real)
    assert proposals_close_due()["ratified"] == 1  # the next run retries it


def test_ratification_is_announced_once_after_commit(
    django_capture_on_commit_callbacks,  # type: ignore[no-untyped-def]
) -> None:
    community, moderator, members = make_voting_community("signal")
    proposal = _passed(community, moderator, members)
    received = []

    def receiver(sender, **kwargs):  # type: ignore[no-untyped-def]
        received.append(kwargs)

    policy_version_ratified.connect(receiver)
    try:
        with django_capture_on_commit_callbacks(execute=False) as callbacks:
            proposal_ratify(proposal=proposal)
        assert received == []  # not before the commit
        for callback in callbacks:
            callback()
    finally:
        policy_version_ratified.disconnect(receiver)
    assert len(received) == 1
    assert received[0]["community"] == community
    assert received[0]["version"] == policy_version_current(community=community)
    assert received[0]["proposal"].pk == proposal.pk


def test_a_conflicted_proposal_announces_nothing(
    django_capture_on_commit_callbacks,  # type: ignore[no-untyped-def]
) -> None:
    community, moderator, members = make_voting_community("quiet")
    first = _passed(community, moderator, members, model={"factors": 32})
    second = _passed(community, moderator, members, model={"factors": 8})
    proposal_ratify(proposal=first)
    received = []

    def receiver(sender, **kwargs):  # type: ignore[no-untyped-def]
        received.append(kwargs)

    policy_version_ratified.connect(receiver)
    try:
        with django_capture_on_commit_callbacks(execute=True):
            proposal_ratify(proposal=second)
    finally:
        policy_version_ratified.disconnect(receiver)
    assert received == []
