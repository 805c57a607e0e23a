"""The one place ``feeds`` sends Celery tasks: by name, so no module imports ``feeds.tasks``.

``feeds.tasks`` holds thin tasks that call services; services, pages and APIs ask for work
through these functions. Every function here sends after the caller's transaction only when the
caller wraps it in ``transaction.on_commit`` (a task must never look for rows not yet visible).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from celery import current_app
from django.conf import settings

from feeds.serving import cache as feedcache

logger = logging.getLogger(__name__)


def _send(task: str, args: tuple[object, ...], queue: str | None = None) -> None:
    # No queue given: the task's default routing, as ``delay`` would do. A broker that cannot be
    # reached loses the message, not the request: runs and shards are owed in the database and
    # the reconciler (beat, every minute) sends them again; fold-in is redone by the next run.
    options = {"queue": queue} if queue else {}
    try:
        current_app.send_task(f"feeds.tasks.{task}", args=args, **options)
    except Exception:
        logger.exception("could not send %s%s to the broker", task, args)


def run_recompute(*, run_id: int, queue: str | None = None) -> None:
    """Train run ``run_id``, hand its shards out (``feeds.tasks.recompute_community_feeds``)."""
    _send("recompute_community_feeds", (run_id, queue), queue)


def shard_score(*, shard_id: int, queue: str | None = None) -> None:
    """Score one shard of a run (``feeds.tasks.score_feed_shard``)."""
    _send("score_feed_shard", (shard_id,), queue)


def members_refresh(*, community_id: int, member_ids: Sequence[int] | None = None) -> None:
    """Drain the community's fold-in queue, and refresh ``member_ids`` if given
    (``feeds.tasks.refresh_member_feeds``)."""
    args = (community_id,) if member_ids is None else (community_id, list(member_ids))
    _send("refresh_member_feeds", args)


def impact_compute(*, impact_id: int) -> None:
    """Measure a proposal's impact (``feeds.tasks.compute_policy_impact``)."""
    _send("compute_policy_impact", (impact_id,))


def run_metrics_compute(*, run_id: int) -> None:
    """Measure a finished run's feeds (``feeds.tasks.compute_feed_run_metrics``)."""
    _send("compute_feed_run_metrics", (run_id,))


def member_feeds_refresh_request(*, community_id: int, member_ids: Sequence[int]) -> None:
    """Have these members' served feeds refreshed soon (call after the change commits).

    With Redis the members join the community's queue and at most one drain task per community
    is sent, however many batches arrive; without Redis (embedded mode) one task carries the
    ids. Never raises: the change is committed whatever happens here, and the next feed run
    includes it anyway.
    """
    if not settings.COMMONFEED_FOLD_IN or not member_ids:
        return
    try:
        queued = feedcache.foldin_mark(community_id=community_id, member_ids=list(member_ids))
        if queued is None:
            members_refresh(community_id=community_id, member_ids=member_ids)
        elif queued:
            members_refresh(community_id=community_id)
    except Exception:
        logger.exception("could not request a fold-in refresh for community %s", community_id)
