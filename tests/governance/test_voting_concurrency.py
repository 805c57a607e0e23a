"""Ballots and ratification under real concurrency: threads with their own connections, on
PostgreSQL (SQLite serialises every write transaction, so there is no race to test there)."""

from __future__ import annotations

import random
import threading
from collections.abc import Callable
from typing import Any

from django.db import connection

from governance.errors import InvalidTransition
from governance.models import AuditEntry, Ballot, Membership, PolicyVersion, Proposal
from governance.proposal_services import ballot_cast, proposal_ratify
from governance.selectors import audit_verify
from tests.governance.conftest import concurrent_on_postgresql
from tests.governance.proposal_helpers import (
    make_voting_community,
    open_proposal,
    vote_and_close,
)

pytestmark = concurrent_on_postgresql


def _in_threads(count: int, work: Callable[[int], Any]) -> list[Any]:
    """Run ``work(i)`` in ``count`` threads started together; return results or exceptions."""
    barrier = threading.Barrier(count)
    results: list[Any] = [None] * count

    def run(index: int) -> None:
        try:
            barrier.wait()
            results[index] = work(index)
        except Exception as exc:
            results[index] = exc
        finally:
            connection.close()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    return results


def test_concurrent_ballots_leave_one_ballot_per_member_equal_to_the_last_committed(
    transactional_db: None,
) -> None:
    community, moderator, members = make_voting_community("crowd", members=199)
    proposals = [
        open_proposal(community, moderator, title=f"p{i}", model={"factors": 8 + i})
        for i in range(3)
    ]
    voters = [moderator, *members]
    pairs = [(proposal, member) for proposal in proposals for member in voters]

    def work(thread: int) -> int:
        rng = random.Random(thread)
        # Every thread walks the pairs in the same order, so first ballots of one member collide
        # (the race the unique constraint settles); each thread votes its own random choices.
        for proposal, member in pairs:
            ballot_cast(
                proposal=proposal, member=member, choice=rng.choice(["yes", "no", "abstain"])
            )
        return len(pairs)

    results = _in_threads(8, work)
    assert results == [len(pairs)] * 8, [r for r in results if isinstance(r, Exception)][:3]
    assert Ballot.objects.count() == len(pairs)  # 600: no duplicates
    last_receipt: dict[tuple[int, str], str] = {}
    for entry in AuditEntry.objects.filter(
        community=community, action__in=["ballot.cast", "ballot.changed"]
    ).order_by("seq"):
        payload = entry.payload
        last_receipt[(payload["proposal"], payload["member"])] = payload["receipt"]
    assert len(last_receipt) == len(pairs)
    assert AuditEntry.objects.filter(community=community, action="ballot.cast").count() == len(
        pairs
    )
    external = dict(Membership.objects.values_list("pk", "external_id"))
    stored = {
        (proposal_id, external[member_id]): receipt
        for proposal_id, member_id, receipt in Ballot.objects.values_list(
            "proposal_id", "member_id", "receipt"
        )
    }
    assert stored == last_receipt
    assert [chain.problem for chain in audit_verify(community=community)] == [None]


def test_twenty_parallel_ratifications_ratify_once(transactional_db: None) -> None:
    community, moderator, members = make_voting_community("twenty")
    proposal = open_proposal(community, moderator)
    vote_and_close(proposal, {members[0]: "yes", members[1]: "yes"})

    results = _in_threads(
        20, lambda _: proposal_ratify(proposal=Proposal.objects.get(pk=proposal.pk))
    )
    winners = [r for r in results if isinstance(r, Proposal)]
    losers = [r for r in results if isinstance(r, InvalidTransition)]
    assert (len(winners), len(losers)) == (1, 19), results
    assert PolicyVersion.objects.filter(community=community).count() == 2
    assert PolicyVersion.objects.filter(community=community, is_current=True).count() == 1
    assert AuditEntry.objects.filter(community=community, action="proposal.ratified").count() == 1
    proposal.refresh_from_db()
    assert proposal.state == "ratified"
    assert [chain.problem for chain in audit_verify(community=community)] == [None]
