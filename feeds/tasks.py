"""Celery tasks: thin, idempotent, take ids and call one service."""

from __future__ import annotations

from celery import shared_task

from feeds import services


@shared_task(acks_late=True, reject_on_worker_lost=True)
def recompute_community_feeds(run_id: int) -> None:
    # Failures are recorded on the FeedRun (status "failed", error); the worker's log has the
    # traceback. Not retried automatically: a failing run usually fails the same way again.
    services.feed_run_execute(run_id=run_id)


@shared_task
def reconcile_feed_runs() -> None:
    services.feed_runs_reconcile()
