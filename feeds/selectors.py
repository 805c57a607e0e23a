"""Feed reads: the one place that turns stored feed rows into what the API and pages show."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from django.db.models import OuterRef, Prefetch, Subquery

from feeds.models import FeedPointer, FeedRun, Item, ItemCreator, MemberFeed
from governance.models import Community, Membership
from ranking.reasons import explain


class FeedNotReady(Exception):
    """The community has no finished feed run yet."""


class FeedRunGone(Exception):
    """The run a cursor was pinned to has been replaced and its feeds deleted."""


@dataclass(frozen=True)
class FeedEntry:
    rank: int
    score: float
    item: Item
    reasons: int = 0
    """Bitmask of ranking.reasons.Reason: why the entry is there, for people to read."""

    @property
    def explanations(self) -> list[str]:
        return explain(self.reasons)


@dataclass(frozen=True)
class Feed:
    community: Community
    member: Membership
    run: FeedRun
    entries: list[FeedEntry] = field(default_factory=list)
    next_offset: int | None = None

    @property
    def generated_at(self) -> datetime | None:
        return self.run.finished_at


def current_run(*, community: Community) -> FeedRun | None:
    pointer = FeedPointer.objects.filter(community=community).select_related("run").first()
    return pointer.run if pointer else None


# What serving a feed needs of its run: reading stats, the stored fallback feed or the policy
# document on every request would cost more than the rest of the request.
_RUN_READ_FIELDS = (
    "id",
    "community_id",
    "claim",
    "status",
    "finished_at",
    "policy_sha256",
    "policy_version__id",
    "policy_version__number",
)


def feed_run_for_read(
    *, community: Community, run_id: int | None = None, member: Membership | None = None
) -> FeedRun:
    """The run to read feeds from: the one the community serves now, or a pinned one.

    A pinned run (from a pagination cursor) keeps being served after a swap, so a client paging
    through a feed never sees a mix of two generations, until its feeds are pruned.

    With ``member``, the run carries ``member_feed_id`` too, read in the same query: the id of
    the member's feed row in it (None without one), i.e. the feed's revision (member_feed_row).
    """
    runs = FeedRun.objects.select_related("policy_version").only(*_RUN_READ_FIELDS)
    if member is not None:
        runs = runs.annotate(
            member_feed_id=Subquery(
                MemberFeed.objects.filter(run=OuterRef("pk"), member=member).values("pk")[:1]
            )
        )
    if run_id is None:
        run = runs.filter(pointed_by__community=community).first()
        if run is None:
            raise FeedNotReady(community.slug)
        return run
    run = runs.filter(pk=run_id, community=community, status=FeedRun.Status.FINISHED).first()
    if run is None or not MemberFeed.objects.filter(run=run).exists():
        raise FeedRunGone(run_id)
    return run


def member_feed_row(*, run: FeedRun, member: Membership) -> MemberFeed | None:
    """The member's stored feed row in ``run``. A fold-in refresh replaces the row, so its id
    is also the feed's revision within the run (ETags name it)."""
    return MemberFeed.objects.filter(run=run, member=member).first()


def member_feed_get(
    *,
    community: Community,
    member: Membership,
    run: FeedRun,
    limit: int | None = None,
    offset: int = 0,
    row: MemberFeed | None = None,
) -> Feed:
    """The member's feed in ``run``, entries ``offset`` to ``offset + limit``.

    Three queries whatever the feed length: the feed row (unless ``row`` is given, from
    :func:`member_feed_row`), its items, their credits.
    """
    if row is None:
        row = member_feed_row(run=run, member=member)
    if row is None:
        # A member who joined after the run: an empty feed until the next run.
        return Feed(community=community, member=member, run=run)
    stop = len(row.item_ids) if limit is None else min(offset + limit, len(row.item_ids))
    item_ids = row.item_ids[offset:stop]
    scores = row.scores[offset:stop]
    reasons = row.reasons[offset:stop] if row.reasons else [0] * len(item_ids)
    items = Item.objects.filter(pk__in=item_ids).prefetch_related(
        Prefetch(
            "credits",
            queryset=ItemCreator.objects.select_related("creator").order_by("position"),
        )
    )
    by_id = {item.pk: item for item in items}
    entries = [
        FeedEntry(rank=rank, score=float(score), item=by_id[item_id], reasons=int(mask))
        for rank, (item_id, score, mask) in enumerate(
            zip(item_ids, scores, reasons, strict=True), start=offset + 1
        )
        if item_id in by_id
    ]
    return Feed(
        community=community,
        member=member,
        run=run,
        entries=entries,
        next_offset=stop if stop < len(row.item_ids) else None,
    )
