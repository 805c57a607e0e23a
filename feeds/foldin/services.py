"""Fold-in: re-rank members' served feeds between runs from their current data, against the
served run's model, and fold in items published since the run."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import timedelta

import numpy as np
from django.conf import settings
from django.db import connection, transaction
from django.db.models import Exists, Max, OuterRef, Q
from django.utils import timezone

from feeds import enqueue
from feeds.choices.services import ranking_choices_load
from feeds.models import (
    FeedPointer,
    FeedRun,
    Interaction,
    Item,
    ItemCreator,
    MemberChoices,
    MemberFeed,
)
from feeds.runs.artifacts import artifact_load
from feeds.runs.inputs import _load_item_attributes
from feeds.runs.store import _bulk_create_rows, _feed_rows
from feeds.serving import cache as feedcache
from feeds.serving import selectors
from governance.models import AuditEntry, Community, Membership
from governance.selectors import policy_of
from ranking.pipeline import refresh_feeds
from ranking.policy import (
    CreatorRefusal,
    ItemRefusal,
    OlderThanRefusal,
    Policy,
    ProvenanceRefusal,
    TagRefusal,
)

logger = logging.getLogger(__name__)


# Members re-ranked per refresh transaction when a drain task empties a community's queue.
FOLD_IN_BATCH = 500


@dataclass(frozen=True)
class FeedsRefreshed:
    """What :func:`member_feeds_refresh` did."""

    run_id: int | None
    members: int
    written: int
    skipped: str = ""
    """Why nothing was written: ``no_run`` (no served run yet), ``no_artifact`` (the served
    run's model is missing from the storage), ``pointer_moved`` (a newer run was swapped in
    meanwhile; it or a later refresh has the members' events), or ``""``."""
    seconds: dict[str, float] = field(default_factory=dict)


def member_feeds_refresh(*, community: Community, member_ids: Iterable[int]) -> FeedsRefreshed:
    """Re-rank these members' feeds in the served run from their current data (fold-in).

    Loads the served run's artifact (the model, catalogue and policy it was scored with), then
    in one transaction: locks the community's pointer row and checks it still names that run
    (a swap waits for the lock; if the pointer moved, nothing is written), reads the members'
    interactions and choices as they are now, ranks them (:func:`ranking.pipeline.refresh_feeds`)
    and replaces their rows of that run. Their cached pages are dropped after the commit.

    Safe to run twice and concurrently: refreshes of a community serialise on the pointer row
    and each reads the data after taking it, so the last writer has the newest data.
    """
    started = time.perf_counter()
    wanted = sorted({int(m) for m in member_ids})
    run = FeedRun.objects.filter(pointed_by__community=community).only("id", "artifact").first()
    if not wanted:
        return FeedsRefreshed(run_id=None, members=0, written=0)
    if run is None or not run.artifact:
        return FeedsRefreshed(run_id=None, members=0, written=0, skipped="no_run")
    try:
        prepared = artifact_load(run.artifact)
    except FileNotFoundError:
        # The served run's model is gone from the storage (lost, or a wrongly shared folder):
        # nothing to rank against; the members' data is committed and the next run has it.
        logger.error("fold-in: the artifact %s of run %s is missing", run.artifact, run.pk)
        return FeedsRefreshed(run_id=run.pk, members=0, written=0, skipped="no_artifact")
    loaded = time.perf_counter()
    # Outside the pointer lock: a change that lands meanwhile bumps the pointer's revision, and
    # the next page withdraws it and asks for another refresh.
    refused = _refused_by_policy_now(community, prepared.policy)
    with transaction.atomic():
        held = list(
            FeedPointer.objects.select_for_update()
            .filter(community=community, run_id=run.pk)
            .values_list("run_id", flat=True)
        )
        if not held:
            return FeedsRefreshed(run_id=run.pk, members=0, written=0, skipped="pointer_moved")
        members = dict(
            Membership.objects.filter(community=community, pk__in=wanted).values_list(
                "pk", "external_id"
            )
        )
        ids = sorted(members)
        published = None
        if prepared.estimator is not None and prepared.policy.candidates.new_items:
            after = int(np.max(prepared.space_ids, initial=0))
            published = _load_item_attributes(community, after_id=after)[0]
        batch = refresh_feeds(
            prepared, **_refresh_inputs(community, ids, refused), published_items=published
        )
        ranked = time.perf_counter()
        MemberFeed.objects.filter(run_id=run.pk, member_id__in=ids).delete()
        _bulk_create_rows(run.pk, _feed_rows(batch))
        slug, external_ids = community.slug, [members[m] for m in ids]
        transaction.on_commit(
            lambda: feedcache.member_pages_invalidate(slug=slug, members=external_ids)
        )
    written = time.perf_counter()
    seconds = {
        "artifact_load": round(loaded - started, 4),
        "read_and_rank": round(ranked - loaded, 4),
        "write": round(written - ranked, 4),
    }
    logger.info(
        "fold-in: %s members of %s refreshed in run %s (%s)", len(ids), slug, run.pk, seconds
    )
    return FeedsRefreshed(run_id=run.pk, members=len(ids), written=len(ids), seconds=seconds)


def _refused_by_policy_now(community: Community, policy: Policy) -> np.ndarray:
    """Active items the run's policy refuses by their attributes *now*, as
    ``ranking.effects.ItemAttributes.refused_by`` and the excluded provenance classes decide
    (``feeds.serving.selectors.withdrawn_items`` applies the same when serving): a refresh must not
    rank again what the page would withdraw. One query, the rules as SQL conditions (tags by
    JSON containment on PostgreSQL; elsewhere the tag rules are checked here)."""
    excluded = selectors.excluded_provenance(policy)
    tags = {r.tag for r in policy.refusals if isinstance(r, TagRefusal)}
    creators = [r.creator for r in policy.refusals if isinstance(r, CreatorRefusal)]
    items = [r.item for r in policy.refusals if isinstance(r, ItemRefusal)]
    provenance = excluded | {
        r.provenance for r in policy.refusals if isinstance(r, ProvenanceRefusal)
    }
    days = [r.days for r in policy.refusals if isinstance(r, OlderThanRefusal)]
    if not (tags or creators or items or provenance or days):
        return np.zeros(0, dtype=np.int64)
    condition = Q(pk__in=[])
    if items:
        condition |= Q(external_id__in=items)
    if provenance:
        condition |= Q(provenance__in=sorted(provenance))
    if days:
        condition |= Q(published_at__lt=timezone.now() - timedelta(days=min(days)))
    if creators:
        condition |= Q(
            Exists(
                ItemCreator.objects.filter(
                    item=OuterRef("pk"), position=0, creator__external_id__in=creators
                )
            )
        )
    in_sql = tags and connection.vendor == "postgresql"
    for tag in tags if in_sql else ():
        condition |= Q(tags__contains=[tag])
    active = Item.objects.filter(community=community, active=True)
    refused = set(active.filter(condition).values_list("pk", flat=True))
    if tags and not in_sql:
        refused.update(
            pk for pk, item_tags in active.values_list("pk", "tags") if tags & set(item_tags or [])
        )
    return np.fromiter(sorted(refused), dtype=np.int64, count=len(refused))


def _refresh_inputs(
    community: Community, member_ids: list[int], refused_by_policy: np.ndarray
) -> dict[str, object]:
    """The members' current interactions and choices, as refresh_feeds takes them.

    Read by the same rules as a run (interaction weights, mutes resolved to items, refusals);
    besides, items deactivated since the run and ``refused_by_policy`` are refused.
    """
    # By member alone: the ids are this community's memberships (the caller read them so), and
    # a filter on the community as well can lead the planner to bitmap-AND the community's
    # whole index range with the members' (seconds at 20M interactions, milliseconds without).
    rows = np.array(
        list(
            Interaction.objects.filter(member_id__in=member_ids).values_list(
                "member_id", "item_id", "weight"
            )
        ),
        dtype=np.float64,
    ).reshape(-1, 3)
    item_tags: dict[int, list[str]] = {}
    if MemberChoices.objects.filter(member_id__in=member_ids).exclude(muted_tags=[]).exists():
        item_tags = {
            pk: tags or []
            for pk, tags in Item.objects.filter(community=community, active=True).values_list(
                "id", "tags"
            )
        }
    choices = ranking_choices_load(community=community, item_tags=item_tags, members=member_ids)
    inactive = np.fromiter(
        Item.objects.filter(community=community, active=False).values_list("id", flat=True),
        dtype=np.int64,
    )
    return {
        "feed_members": np.asarray(member_ids, dtype=np.int64),
        "member_ids": rows[:, 0].astype(np.int64),
        "item_ids": rows[:, 1].astype(np.int64),
        "weights": rows[:, 2].astype(np.float32),
        "member_blocks": choices.member_blocks,
        "no_personalisation_members": choices.no_personalisation_members,
        "refused_items": np.concatenate([choices.refused_items, inactive, refused_by_policy]),
    }


def member_feeds_refresh_drain(*, community_id: int, member_ids: list[int] | None = None) -> int:
    """Refresh the given members and every member queued for the community; returns how many
    refreshes ran. Members are forgotten only after their refresh committed, and only if they
    were not queued again meanwhile, so a killed worker or a concurrent event loses nothing."""
    community = Community.objects.filter(pk=community_id).first()
    done = 0
    if community is not None and member_ids:
        done += member_feeds_refresh(community=community, member_ids=member_ids).members
    while True:
        taken = feedcache.foldin_take(community_id=community_id, limit=FOLD_IN_BATCH) or []
        if taken and community is not None:
            done += member_feeds_refresh(
                community=community, member_ids=[member for member, _ in taken]
            ).members
        if not feedcache.foldin_done(community_id=community_id, taken=taken):
            return done


def published_items_fold_in() -> list[int]:
    """Ask for every member's feed to be refreshed in communities where items were published
    since the served run, when its policy takes new items as candidates; returns those
    communities.

    Beat runs it every minute, so a new item reaches members' feeds within minutes, without a
    run: each refresh ranks it as the run ranks its own new items (``candidates.new_items``),
    through the same refusals. Asked once per newest item: the pointer remembers the largest
    id asked for (compare-and-set, so two beats ask once).
    """
    if not settings.COMMONFEED_FOLD_IN:
        return []
    asked = []
    pointers = FeedPointer.objects.select_related("run__policy_version").only(
        "community_id", "published_through", "run__id", "run__stats", "run__policy_version"
    )
    for pointer in pointers:
        run = pointer.run
        if not policy_of(run.policy_version).candidates.new_items:
            continue
        known = (run.stats or {}).get("max_item_id")
        if known is None:
            continue
        through = max(int(known), pointer.published_through or 0)
        newest = Item.objects.filter(
            community_id=pointer.community_id, active=True, pk__gt=through
        ).aggregate(newest=Max("pk"))["newest"]
        if newest is None:
            continue
        claimed = FeedPointer.objects.filter(
            community_id=pointer.community_id,
            run_id=run.pk,
            published_through=pointer.published_through,
        ).update(published_through=newest)
        if not claimed:
            continue
        members = list(
            Membership.objects.filter(community_id=pointer.community_id)
            .order_by("pk")
            .values_list("pk", flat=True)
        )
        enqueue.member_feeds_refresh_request(community_id=pointer.community_id, member_ids=members)
        asked.append(pointer.community_id)
    return asked


def member_feeds_refresh_reconcile() -> list[int]:
    """Re-send drain tasks for communities whose queued refreshes lost their task."""
    stranded = feedcache.foldin_stranded()
    for community_id in stranded:
        enqueue.members_refresh(community_id=community_id)
    return stranded


def _refresh_after_swap(run: FeedRun) -> None:
    """Fold into a freshly swapped-in run what happened while it trained.

    The run read interactions up to its watermark and choices when it started: members with
    later interactions, choice changes or data deletions get refreshed against it.
    """
    if not settings.COMMONFEED_FOLD_IN:
        return
    watermark, started_at = FeedRun.objects.filter(pk=run.pk).values_list(
        "watermark", "started_at"
    )[0]
    members = set(
        Interaction.objects.filter(community_id=run.community_id, id__gt=watermark or 0)
        .values_list("member_id", flat=True)
        .distinct()
    )
    if started_at is not None:
        members |= set(
            MemberChoices.objects.filter(
                member__community_id=run.community_id, updated_at__gte=started_at
            ).values_list("member_id", flat=True)
        )
        members |= {
            int(pk)
            for pk in AuditEntry.objects.filter(
                community_id=run.community_id,
                action="member.data_deleted",
                created_at__gte=started_at,
            ).values_list("object_id", flat=True)
        }
    if members:
        enqueue.member_feeds_refresh_request(
            community_id=run.community_id, member_ids=sorted(members)
        )
