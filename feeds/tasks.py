"""Celery tasks: thin, idempotent, take ids and call one service.

Every task here is safe to deliver twice and to redeliver after a killed worker (``acks_late``
with ``reject_on_worker_lost``): the services claim their run or shard in the database first.
"""

from __future__ import annotations

from celery import shared_task

from feeds.foldin import services as foldin
from feeds.insights import impact, run_metrics
from feeds.runs import schedule
from feeds.runs import services as runs


@shared_task(acks_late=True, reject_on_worker_lost=True)
def recompute_community_feeds(run_id: int, queue: str | None = None) -> None:
    # Trains once and sends one score_feed_shard task per shard to ``queue`` (None: the default
    # queue). Failures are recorded on the FeedRun (status "failed", error); the worker's log
    # has the traceback. Not retried automatically: a failing run usually fails the same way.
    runs.feed_run_execute(run_id=run_id, queue=queue)


@shared_task(acks_late=True, reject_on_worker_lost=True)
def score_feed_shard(shard_id: int) -> None:
    # The shard's rows and its completion commit together; the last shard swaps the run in.
    runs.feed_run_shard_execute(shard_id=shard_id)


@shared_task(acks_late=True, reject_on_worker_lost=True)
def refresh_member_feeds(community_id: int, member_ids: list[int] | None = None) -> None:
    # Fold-in: re-ranks the given members (embedded mode) and drains the community's queue of
    # owed refreshes (Redis) against the served run. Idempotent: a refresh recomputes from the
    # data as it is, and members leave the queue only once their refresh committed.
    foldin.member_feeds_refresh_drain(community_id=community_id, member_ids=member_ids)


@shared_task
def fold_in_published_items() -> None:
    # Beat, every minute: items published since the served run reach members' feeds by
    # fold-in when the policy takes new items (feeds.foldin.services); asks once per newest item.
    foldin.published_items_fold_in()


@shared_task
def reconcile_feed_runs() -> None:
    runs.feed_runs_reconcile()
    foldin.member_feeds_refresh_reconcile()


@shared_task(acks_late=True, reject_on_worker_lost=True)
def compute_policy_impact(impact_id: int) -> None:
    # A proposal's before-the-vote comparison; a redelivered message finds it done and stops.
    impact.policy_impact_compute(impact_id=impact_id)


@shared_task
def schedule_feed_runs() -> None:
    # Beat, every minute: recompute communities whose data changed once the interval passed,
    # then hand finished runs without metrics to workers. Safe twice (feeds.runs.schedule re-checks
    # under the community's lock; metrics are claimed).
    schedule.feed_runs_schedule()
    for run_id in run_metrics.feed_run_metrics_pending():
        compute_feed_run_metrics.delay(run_id)


@shared_task(acks_late=True, reject_on_worker_lost=True)
def compute_feed_run_metrics(run_id: int) -> None:
    # A finished run's two-sided metrics; a redelivered message finds them claimed or done.
    run_metrics.feed_run_metrics_compute(run_id=run_id)
