"""Real threads with their own database connections, against PostgreSQL."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from django.db import connection

from governance.errors import StaleVersion
from governance.models import AuditEntry, PolicyVersion
from governance.selectors import audit_verify, policy_version_current
from governance.services import (
    membership_create,
    policy_version_create,
    policy_version_make_current,
)
from ranking.policy import Policy
from tests.factories import make_community
from tests.governance.conftest import concurrent_on_postgresql

pytestmark = concurrent_on_postgresql


def _race(jobs: list[Callable[[], Any]]) -> list[Any]:
    """Start every job at the same moment, each in its own thread; return results or errors."""
    barrier = threading.Barrier(len(jobs))
    results: list[Any] = [None] * len(jobs)

    def run(index: int, job: Callable[[], Any]) -> None:
        try:
            barrier.wait()
            results[index] = job()
        except Exception as exc:
            results[index] = exc
        finally:
            connection.close()

    threads = [threading.Thread(target=run, args=(i, job)) for i, job in enumerate(jobs)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    return results


def test_two_concurrent_make_current_calls_leave_exactly_one_current_version(
    transactional_db: None,
) -> None:
    community = make_community("race")
    genesis = policy_version_current(community=community)
    drafts = [
        policy_version_create(
            community=community,
            policy=Policy.model_validate({"model": {"factors": factors}}),
            parent=genesis,
            actor=None,
            make_current=False,
        )
        for factors in (8, 16)
    ]
    results = _race(
        [lambda d=draft: policy_version_make_current(version=d, actor=None) for draft in drafts]
    )
    winners = [r for r in results if isinstance(r, PolicyVersion)]
    losers = [r for r in results if isinstance(r, StaleVersion)]
    assert (len(winners), len(losers)) == (1, 1), results
    assert list(
        PolicyVersion.objects.filter(community=community, is_current=True).values_list(
            "pk", flat=True
        )
    ) == [winners[0].pk]
    assert (
        AuditEntry.objects.filter(community=community, action="policy_version.made_current").count()
        == 2
    )  # genesis and the winner
    assert [chain.problem for chain in audit_verify(community=community)] == [None]


def test_concurrent_creates_with_make_current_leave_exactly_one_current_version(
    transactional_db: None,
) -> None:
    community = make_community("race")
    genesis = policy_version_current(community=community)
    results = _race(
        [
            lambda n=n: policy_version_create(
                community=community,
                policy=Policy.model_validate({"model": {"factors": n}}),
                parent=genesis,
                actor=None,
                make_current=True,
            )
            for n in range(1, 7)
        ]
    )
    assert sum(isinstance(r, PolicyVersion) for r in results) == 1, results
    assert sum(isinstance(r, StaleVersion) for r in results) == 5
    assert PolicyVersion.objects.filter(community=community, is_current=True).count() == 1
    assert PolicyVersion.objects.filter(community=community).count() == 2


def test_appends_from_parallel_threads_produce_one_unbroken_chain(transactional_db: None) -> None:
    community = make_community("busy")
    other = make_community("quiet")

    def add_members(thread: int) -> None:
        for n in range(10):
            target = community if n % 5 else other
            membership_create(community=target, external_id=f"t{thread}-{n}", actor=None)

    results = _race([lambda t=t: add_members(t) for t in range(8)])
    assert results == [None] * 8
    seqs = list(
        AuditEntry.objects.filter(community=community).order_by("seq").values_list("seq", flat=True)
    )
    assert seqs == list(range(1, 5 + 64 + 1))
    chains = audit_verify()
    assert [(chain.problem, chain.count) for chain in chains] == [(None, 69), (None, 21)]
