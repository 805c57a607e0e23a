"""When runs happen: on demand by moderators (audited) and on a schedule when the data changed;
who may manage a community's runs, and the runs to list."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.core.exceptions import PermissionDenied
from django.db import transaction
from django.db.models import QuerySet
from django.http import Http404
from django.utils import timezone

from feeds.credentials.auth import CREDENTIAL_MANAGER_ROLES
from feeds.models import (
    FeedRun,
    Interaction,
)
from feeds.runs.services import feed_run_request
from governance.models import AuditEntry, Community
from governance.selectors import membership_of_user
from governance.services import audit_append

logger = logging.getLogger(__name__)


IN_PROGRESS = (FeedRun.Status.QUEUED, FeedRun.Status.RUNNING, FeedRun.Status.SCORING)

# Audited changes that alter what a run computes, besides new interactions.
DATA_CHANGE_ACTIONS = ("member.choices_changed", "member.data_deleted", "creator.choices_changed")


def community_for_run_manager(*, slug: str, user: Any) -> Community:
    """The community ``slug`` if ``user`` moderates or administers it (404 unknown, 403 else)."""
    community = Community.objects.filter(slug=slug).first()
    if community is None:
        raise Http404("No such community.")
    membership = membership_of_user(community=community, user=user)
    if membership is None or membership.role not in CREDENTIAL_MANAGER_ROLES:
        raise PermissionDenied("Only the community's moderators and admins see and start runs.")
    return community


def feed_runs_recent(*, community: Community, limit: int = 20) -> QuerySet[FeedRun]:
    """The community's newest runs, newest first, with their policy version."""
    return (
        FeedRun.objects.filter(community=community)
        .select_related("policy_version")
        .defer("fallback_item_ids", "fallback_scores")
        .order_by("-id")[:limit]
    )


@dataclass(frozen=True)
class RunRequested:
    run: FeedRun
    created: bool
    """False: a run was already queued or in progress, and that one is returned."""


def run_in_progress(community: Community) -> FeedRun | None:
    return (
        FeedRun.objects.filter(community=community, status__in=IN_PROGRESS).order_by("-id").first()
    )


def _lock_community(community: Community) -> None:
    # FOR NO KEY UPDATE: serialises the run triggers of this community without blocking the
    # inserts that reference the community row (those take FOR KEY SHARE). SQLite's BEGIN
    # IMMEDIATE already holds the database's write lock.
    Community.objects.select_for_update(no_key=True).filter(pk=community.pk).first()


def feed_run_request_on_demand(*, community: Community, actor: Any) -> RunRequested:
    """A moderator's "Recompute now": queue a run unless one is queued or in progress.

    The caller has checked the actor's role (:func:`community_for_run_manager`). Two clicks at
    once queue one run: both take the community's row lock and the second finds the first's run.
    """
    with transaction.atomic():
        _lock_community(community)
        running = run_in_progress(community)
        if running is not None:
            return RunRequested(run=running, created=False)
        run = feed_run_request(community=community)
        run = FeedRun.objects.select_related("policy_version").get(pk=run.pk)
        audit_append(
            community=community,
            actor=actor,
            action="feed_run.requested",
            obj=run,
            payload={
                "run": run.pk,
                "policy_version": run.policy_version.number,
                "policy_sha256": run.policy_sha256,
                "trigger": "moderator",
            },
        )
    return RunRequested(run=run, created=True)


def _data_changed_since(community: Community, run: FeedRun) -> bool:
    """New interactions past the run's watermark, or audited choices or deletions since it was
    requested (a run reads choices when it starts, so this errs towards one run too many)."""
    if Interaction.objects.filter(community=community, id__gt=run.watermark or 0).exists():
        return True
    return AuditEntry.objects.filter(
        community=community, action__in=DATA_CHANGE_ACTIONS, created_at__gt=run.requested_at
    ).exists()


def _due(community: Community, now: datetime) -> bool:
    runs = FeedRun.objects.filter(community=community)
    if runs.filter(status__in=IN_PROGRESS).exists():
        return False
    interval = timedelta(seconds=settings.COMMONFEED_RECOMPUTE_INTERVAL_SECONDS)
    # The interval counts from the newest run of any outcome, so a run that keeps failing is
    # retried once an interval, not on every tick.
    newest = runs.order_by("-id").first()
    if newest is None or newest.requested_at > now - interval:
        return False
    last_good = runs.filter(status=FeedRun.Status.FINISHED).order_by("-id").first()
    # No finished run yet: the reconciler owns that case (a current version without a run).
    return last_good is not None and _data_changed_since(community, last_good)


def feed_runs_schedule(*, now: datetime | None = None) -> list[int]:
    """Request a run for every community whose data changed since its last finished run, once
    ``COMMONFEED_RECOMPUTE_INTERVAL_SECONDS`` passed since its newest run was requested.

    Never while a run is in progress. Safe to call twice at once (beat delivering a tick twice):
    each community is re-checked under its row lock before a run is requested.
    Returns the ids of the runs requested.
    """
    now = now or timezone.now()
    requested = []
    for community in Community.objects.order_by("id"):
        if not _due(community, now):  # cheap first pass without the lock
            continue
        with transaction.atomic():
            _lock_community(community)
            if not _due(community, now):
                continue
            run = feed_run_request(community=community)
        requested.append(run.pk)
    if requested:
        logger.info("schedule: requested runs %s", requested)
    return requested
