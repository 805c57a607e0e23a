"""Feed runs survive lost messages and dead workers; a worker presumed dead cannot swap."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone

from feeds.models import FeedPointer, FeedRun
from feeds.runs import services
from feeds.runs.services import feed_run_execute, feed_run_request, feed_runs_reconcile
from tests.factories import make_community, small_catalogue

pytestmark = pytest.mark.django_db


@pytest.fixture
def sent(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Messages the reconciler sends, instead of a broker."""
    from feeds import enqueue

    messages: list[int] = []
    monkeypatch.setattr(enqueue, "run_recompute", lambda **kw: messages.append(kw["run_id"]))
    return messages


def _age(run: FeedRun, **fields: Any) -> None:
    FeedRun.objects.filter(pk=run.pk).update(**fields)


def test_a_queued_run_whose_message_was_lost_is_sent_again(sent: list[int]) -> None:
    community = make_community()
    run = feed_run_request(community=community)
    assert feed_runs_reconcile().resent == []  # still within the grace period
    _age(run, requested_at=timezone.now() - timedelta(hours=1))
    assert feed_runs_reconcile().resent == [run.pk]
    assert sent[-1] == run.pk


def test_a_run_whose_worker_stopped_beating_is_taken_over(sent: list[int], settings: Any) -> None:
    community = make_community()
    small_catalogue(community)
    run = feed_run_request(community=community)
    assert services._claim(run.pk) is not None  # a worker claims it, then dies
    assert services._claim(run.pk) is None  # its lease is fresh: nobody else may take it
    _age(
        run,
        heartbeat_at=timezone.now() - timedelta(seconds=settings.COMMONFEED_RUN_LEASE_SECONDS + 1),
    )
    assert feed_runs_reconcile().resent == [run.pk]
    finished = feed_run_execute(run_id=run.pk)
    assert finished.status == FeedRun.Status.FINISHED
    assert finished.attempts == 2
    assert FeedPointer.objects.get(community=community).run_id == run.pk


def test_a_worker_presumed_dead_cannot_swap_its_run_in(monkeypatch: pytest.MonkeyPatch) -> None:
    community = make_community()
    small_catalogue(community)
    first = feed_run_request(community=community)
    feed_run_execute(run_id=first.pk)
    run = feed_run_request(community=community)
    real_claim = services._claim

    def claim_then_lose_it(run_id: int) -> str | None:
        token = real_claim(run_id)
        # Meanwhile another worker took the run over with a token of its own.
        FeedRun.objects.filter(pk=run_id).update(claim="someone-else")
        return token

    monkeypatch.setattr(services, "_claim", claim_then_lose_it)
    result = feed_run_execute(run_id=run.pk)
    assert result.status == FeedRun.Status.RUNNING  # left to its new holder
    assert FeedPointer.objects.get(community=community).run_id == first.pk


def test_a_current_policy_without_any_run_gets_one(sent: list[int]) -> None:
    community = make_community()  # e.g. a ratification whose announcement was lost
    requested = feed_runs_reconcile().requested
    assert len(requested) == 1
    assert FeedRun.objects.get(pk=requested[0]).community == community
    assert feed_runs_reconcile().requested == []  # one queued run is enough


def test_a_version_that_keeps_failing_is_not_retried_forever(sent: list[int]) -> None:
    community = make_community()
    for _ in range(services.MAX_FAILED_RUNS):
        run = feed_run_request(community=community)
        _age(run, status=FeedRun.Status.FAILED)
    assert feed_runs_reconcile().requested == []
