"""Ballots and ratification under real concurrency: threads with their own connections, on
PostgreSQL (SQLite serialises every write transaction, so there is no race to test there)."""

from __future__ import annotations

import json
import random
import threading
from collections.abc import Callable
from typing import Any

import pytest
from django.db import connection

from governance.errors import InvalidTransition
from governance.models import (
    AuditEntry,
    Ballot,
    CharterVersion,
    Community,
    Membership,
    PolicyVersion,
    Proposal,
)
from governance.selectors import audit_verify, charter_version_current
from governance.services import (
    ballot_cast,
    ballot_receipt,
    proposal_create,
    proposal_open,
    proposal_ratify,
)
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
        thread.join(timeout=1_200)
    return results


def _ballot_race(
    *, members: int, proposals: int, threads: int, raced_firsts: int, changes: int
) -> tuple[list[list[tuple[int, int, str]]], list[list[tuple[int, int, str]]]]:
    """Plan the ballots of ``threads`` threads, as lists of (proposal, member, choice).

    Threads work in twos. Phase 1 casts a first ballot on every (proposal, member) pair, each
    pair in one thread's list, except that both threads of a two start with the same
    ``raced_firsts`` pairs in the same order: their first ballots collide (the race the unique
    constraint settles) and the later one becomes a change. Phase 2 changes a seeded random
    subset of ``changes`` pairs, both threads of a two walking the same pairs in the same order
    with their own random choices (the race the row lock orders).
    """
    rng = random.Random(20261122)
    community, moderator, plain = make_voting_community("crowd", members=members - 1)
    opened = [
        open_proposal(community, moderator, title=f"p{i}", model={"factors": 8 + i})
        for i in range(proposals)
    ]
    pairs = [(p.pk, m.pk) for p in opened for m in (moderator, *plain)]
    rng.shuffle(pairs)
    choices = ["yes", "no", "abstain"]
    first: list[list[tuple[int, int, str]]] = [[] for _ in range(threads)]
    per_two = len(pairs) // (threads // 2)
    for two in range(threads // 2):
        mine = pairs[two * per_two : (two + 1) * per_two if two < threads // 2 - 1 else None]
        shared, own = mine[:raced_firsts], mine[raced_firsts:]
        for thread in (2 * two, 2 * two + 1):
            first[thread] = [(p, m, rng.choice(choices)) for p, m in shared]
        half = len(own) // 2
        first[2 * two] += [(p, m, rng.choice(choices)) for p, m in own[:half]]
        first[2 * two + 1] += [(p, m, rng.choice(choices)) for p, m in own[half:]]
    changed = rng.sample(pairs, changes)
    second: list[list[tuple[int, int, str]]] = [[] for _ in range(threads)]
    per_two = changes // (threads // 2)
    for two in range(threads // 2):
        chunk = changed[two * per_two : (two + 1) * per_two]
        for thread in (2 * two, 2 * two + 1):
            second[thread] = [(p, m, rng.choice(choices)) for p, m in chunk]
    return first, second


@pytest.mark.parametrize(
    ("members", "proposals", "raced_firsts", "changes"),
    [
        pytest.param(200, 3, 100, 200, id="200x3"),
        # The size: a first ballot on each of the 10,000 pairs (500 of them raced) and
        # 1,000 raced changes, about 12,500 ballot calls through one community's audit lock:
        # minutes on a small machine, hence ``slow`` (CI still runs it).
        pytest.param(1_000, 10, 125, 1_000, id="1000x10", marks=pytest.mark.slow),
    ],
)
def test_concurrent_ballots_leave_one_ballot_per_member_equal_to_the_last_committed(
    transactional_db: None, members: int, proposals: int, raced_firsts: int, changes: int
) -> None:
    threads = 8
    first, second = _ballot_race(
        members=members,
        proposals=proposals,
        threads=threads,
        raced_firsts=raced_firsts,
        changes=changes,
    )
    community = Community.objects.get(slug="crowd")
    by_pk = {p.pk: p for p in Proposal.objects.filter(community=community)}
    voters = {m.pk: m for m in Membership.objects.filter(community=community)}
    returned: list[set[str]] = [set() for _ in range(threads)]
    phase = threading.Barrier(threads)

    def work(thread: int) -> int:
        done = 0
        for plan in (first[thread], second[thread]):
            phase.wait(timeout=1_200)  # the two threads of a two start each phase together
            for proposal, member, choice in plan:
                ballot = ballot_cast(proposal=by_pk[proposal], member=voters[member], choice=choice)
                returned[thread].add(ballot.receipt)
                done += 1
        return done

    results = _in_threads(threads, work)
    expected = [len(first[t]) + len(second[t]) for t in range(threads)]
    assert results == expected, [r for r in results if isinstance(r, Exception)][:3]
    pairs = members * proposals
    assert Ballot.objects.filter(proposal__community=community).count() == pairs  # no duplicates
    last_receipt: dict[tuple[int, str], str] = {}
    audited: set[str] = set()
    for payload_json in (
        AuditEntry.objects.filter(community=community, action__in=["ballot.cast", "ballot.changed"])
        .order_by("seq")
        .values_list("payload_json", flat=True)
        .iterator(chunk_size=5_000)
    ):
        payload = json.loads(payload_json)
        last_receipt[(payload["proposal"], payload["member"])] = payload["receipt"]
        audited.add(payload["receipt"])
    assert len(last_receipt) == pairs
    assert AuditEntry.objects.filter(community=community, action="ballot.cast").count() == pairs
    assert set().union(*returned) <= audited  # every ballot a caller was given was committed
    external = {pk: m.external_id for pk, m in voters.items()}
    stored = {}
    for proposal_id, member_id, choice, cast_at, nonce, receipt in Ballot.objects.filter(
        proposal__community=community
    ).values_list("proposal_id", "member_id", "choice", "cast_at", "nonce", "receipt"):
        # The stored choice is the one its receipt was made from...
        assert receipt == ballot_receipt(
            proposal_id=proposal_id,
            external_id=external[member_id],
            choice=choice,
            cast_at=cast_at,
            nonce=nonce,
        )
        stored[(proposal_id, external[member_id])] = receipt
    # ... and that receipt is the last one committed for the pair: no ballot lost.
    assert stored == last_receipt
    assert [chain.problem for chain in audit_verify(community=community)] == [None]


def test_fifty_parallel_ratifications_ratify_once(transactional_db: None) -> None:
    community, moderator, members = make_voting_community("fifty")
    proposal = open_proposal(community, moderator)
    vote_and_close(proposal, {members[0]: "yes", members[1]: "yes"})

    results = _in_threads(
        50, lambda _: proposal_ratify(proposal=Proposal.objects.get(pk=proposal.pk))
    )
    winners = [r for r in results if isinstance(r, Proposal)]
    losers = [r for r in results if isinstance(r, InvalidTransition)]
    assert (len(winners), len(losers)) == (1, 49), results
    assert PolicyVersion.objects.filter(community=community).count() == 2
    assert PolicyVersion.objects.filter(community=community, is_current=True).count() == 1
    assert AuditEntry.objects.filter(community=community, action="proposal.ratified").count() == 1
    assert (
        AuditEntry.objects.filter(community=community, action="policy_version.made_current").count()
        == 2
    )  # genesis and the ratified one
    proposal.refresh_from_db()
    assert proposal.state == "ratified"
    assert [chain.problem for chain in audit_verify(community=community)] == [None]


def test_fifty_parallel_ratifications_of_a_charter_change_ratify_once(
    transactional_db: None,
) -> None:
    community, moderator, members = make_voting_community("charter50", members=3)
    charter = charter_version_current(community=community)
    proposal = proposal_create(
        community=community,
        author=moderator,
        title="Shorter votes",
        rationale="",
        document={**charter.document, "voting_period_hours": 24},
        kind="charter",
    )
    proposal_open(proposal=proposal, actor=moderator)
    vote_and_close(proposal, dict.fromkeys(members, "yes"))

    results = _in_threads(
        50, lambda _: proposal_ratify(proposal=Proposal.objects.get(pk=proposal.pk))
    )
    assert sum(isinstance(r, Proposal) for r in results) == 1, results
    assert sum(isinstance(r, InvalidTransition) for r in results) == 49
    assert CharterVersion.objects.filter(community=community).count() == 2
    current = CharterVersion.objects.get(community=community, is_current=True)
    assert (current.number, current.document["voting_period_hours"]) == (2, 24)
    assert AuditEntry.objects.filter(community=community, action="proposal.ratified").count() == 1
    assert [chain.problem for chain in audit_verify(community=community)] == [None]


def test_a_close_that_commits_while_a_ballot_waits_for_the_lock_wins(
    transactional_db: None,
) -> None:
    # The ballot checks the proposal while it writes its row, then waits for the community lock;
    # it must check again once it has the lock, or a close that counted without it would leave
    # an accepted ballot outside the count.
    import time
    from datetime import timedelta

    from django.db import transaction

    from governance.errors import ProposalNotOpen
    from governance.services import community_lock, proposal_close

    community, moderator, members = make_voting_community("closing", members=2)
    proposal = open_proposal(community, moderator)
    locked, waiting = threading.Event(), threading.Event()

    def close(_: int) -> str:
        with transaction.atomic():
            community_lock(community=community)
            locked.set()
            assert waiting.wait(timeout=60)
            with connection.cursor() as cursor:  # pg_locks is live, not a snapshot
                for _ in range(600):
                    cursor.execute(
                        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
                    )
                    if cursor.fetchone()[0]:
                        break
                    time.sleep(0.05)
                else:
                    raise AssertionError("the ballot never waited for the community lock")
            return proposal_close(
                proposal=proposal, now=proposal.closes_at + timedelta(seconds=1)
            ).state

    def vote(_: int) -> Any:
        assert locked.wait(timeout=60)
        waiting.set()
        return ballot_cast(proposal=proposal, member=members[0], choice="yes")

    results = _in_threads(2, lambda i: (close, vote)[i](i))
    assert results[0] == "failed", results
    assert isinstance(results[1], ProposalNotOpen), results
    assert not Ballot.objects.filter(proposal=proposal).exists()
    assert not AuditEntry.objects.filter(community=community, action__startswith="ballot.").exists()
    assert [chain.problem for chain in audit_verify(community=community)] == [None]
