"""Feed reads: the one place that turns stored feed rows into what the API and pages show."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from django.db.models import Prefetch

from feeds.models import FeedPointer, FeedRun, Item, ItemCreator, MemberFeed
from governance.models import Community, Membership


class FeedNotReady(Exception):
    """The community has no finished feed run yet."""


@dataclass(frozen=True)
class FeedEntry:
    rank: int
    score: float
    item: Item


@dataclass(frozen=True)
class Feed:
    community: Community
    member: Membership
    run: FeedRun
    entries: list[FeedEntry] = field(default_factory=list)

    @property
    def generated_at(self) -> datetime | None:
        return self.run.finished_at


def current_run(*, community: Community) -> FeedRun | None:
    pointer = FeedPointer.objects.filter(community=community).select_related("run").first()
    return pointer.run if pointer else None


def member_feed_get(*, community: Community, member: Membership, limit: int | None = None) -> Feed:
    """The member's feed from the run the community currently serves.

    Four queries whatever the feed length: pointer + run, the feed row, its items, their credits.
    """
    pointer = (
        FeedPointer.objects.filter(community=community)
        .select_related("run__policy_version")
        .first()
    )
    if pointer is None:
        raise FeedNotReady(community.slug)
    run = pointer.run
    row = MemberFeed.objects.filter(run=run, member=member).first()
    if row is None:
        # A member who joined after the run: an empty feed until the next run.
        return Feed(community=community, member=member, run=run)
    item_ids = row.item_ids[:limit] if limit is not None else row.item_ids
    scores = row.scores[: len(item_ids)]
    items = Item.objects.filter(pk__in=item_ids).prefetch_related(
        Prefetch(
            "credits",
            queryset=ItemCreator.objects.select_related("creator").order_by("position"),
        )
    )
    by_id = {item.pk: item for item in items}
    entries = [
        FeedEntry(rank=rank, score=float(score), item=by_id[item_id])
        for rank, (item_id, score) in enumerate(zip(item_ids, scores, strict=True), start=1)
        if item_id in by_id
    ]
    return Feed(community=community, member=member, run=run, entries=entries)
