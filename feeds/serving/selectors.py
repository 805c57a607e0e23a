"""Feed reads: the one place that turns stored feed rows into what the API and pages show."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from django.db.models import OuterRef, Prefetch, Q, QuerySet, Subquery
from django.db.models.functions import Coalesce
from django.utils import timezone

from feeds.models import (
    Creator,
    FeedPointer,
    FeedRun,
    Interaction,
    Item,
    ItemCreator,
    MemberChoices,
    MemberFeed,
)
from governance.models import Community, Membership, PolicyVersion
from governance.selectors import policy_of
from ranking.effects import ItemAttributes
from ranking.policy import CapShare, Exclude, OlderThanRefusal, Policy, RefusalRule
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
    valid_until: datetime | None = None
    """When an entry shown turns too old for the policy's ``older_than`` refusal (it will then
    be withdrawn); None: no entry will."""
    refresh_owed: bool = False
    """Entries were withdrawn: a fold-in refresh of the member, which applies the same
    refusals, would rank the stored feed full again without them."""

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

    The run carries ``serving_revision``, the community pointer's revision
    (``feeds.serving.cache.served_content_changed``), read in the same query. With ``member``, it
    carries ``member_feed_id`` too: the id of the member's feed row in it (None without one),
    i.e. the feed's revision (member_feed_row), and ``member_choices_at``: when the member last
    changed their choices (None if never), which their mutes served now depend on.
    """
    runs = (
        FeedRun.objects.select_related("policy_version")
        .only(*_RUN_READ_FIELDS)
        .annotate(
            serving_revision=Coalesce(
                Subquery(FeedPointer.objects.filter(community=community).values("revision")[:1]),
                0,
            )
        )
    )
    if member is not None:
        runs = runs.annotate(
            member_feed_id=Subquery(
                MemberFeed.objects.filter(run=OuterRef("pk"), member=member).values("pk")[:1]
            ),
            member_choices_at=Subquery(
                MemberChoices.objects.filter(pk=member.pk).values("updated_at")[:1]
            ),
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


def creators_a_member_may_mute(
    *, community: Community, member: Membership, muted: Sequence[int] = ()
) -> QuerySet[Creator]:
    """The creators a member's settings page offers to mute, by name: those credited on items
    the member interacted with or on items of the feed they are served now (what they most
    likely want gone), and those they muted already."""
    served = (
        MemberFeed.objects.filter(run__pointed_by__community=community, member=member)
        .values_list("item_ids", flat=True)
        .first()
    )
    met = Interaction.objects.filter(member=member).values("item_id")
    credited = ItemCreator.objects.filter(item_id__in=met).values("creator_id")
    shown = ItemCreator.objects.filter(item_id__in=list(served or [])).values("creator_id")
    return (
        Creator.objects.filter(community=community)
        .filter(Q(pk__in=credited) | Q(pk__in=shown) | Q(pk__in=list(muted)))
        .order_by("name", "pk")
    )


def items_with_credits(item_ids: Sequence[int]) -> QuerySet[Item]:
    """The items, each with its credits (in credit order) and their creators: two queries."""
    return Item.objects.filter(pk__in=item_ids).prefetch_related(
        Prefetch(
            "credits",
            queryset=ItemCreator.objects.select_related("creator").order_by("position"),
        )
    )


# --- What is refused now ------------------------------------------------------------------------
#
# A run ranks the catalogue as it was when the run read it. Until the next run swaps in, what
# changes meanwhile is applied when a feed is served: the entries it withdraws are left out of
# the page, which is filled from the entries after it.


@dataclass(frozen=True)
class Mutes:
    """A member's muted creators (database ids) and tags, as they are now."""

    creators: frozenset[int] = frozenset()
    tags: frozenset[str] = frozenset()


def member_mutes(*, member: Membership) -> Mutes:
    """The member's mutes now, in one query."""
    rows = list(
        MemberChoices.objects.filter(pk=member.pk).values_list("muted_tags", "muted_creators")
    )
    if not rows:
        return Mutes()
    return Mutes(
        creators=frozenset(creator for _, creator in rows if creator is not None),
        tags=frozenset(rows[0][0] or []),
    )


@functools.lru_cache(maxsize=64)
def _policy_refusals(
    policy_version_id: int, policy_sha256: str
) -> tuple[tuple[RefusalRule, ...], frozenset[str], int | None]:
    """A policy version's hard refusals: its rules, the provenance classes it excludes and the
    ``older_than`` limit in days. Versions are immutable, and the hash is in the key, so an id
    reused after a restore cannot answer for another document."""
    policy = policy_of(PolicyVersion.objects.only("document").get(pk=policy_version_id))
    days = [rule.days for rule in policy.refusals if isinstance(rule, OlderThanRefusal)]
    return tuple(policy.refusals), excluded_provenance(policy), min(days) if days else None


def excluded_provenance(policy: Policy) -> frozenset[str]:
    """The provenance classes the policy never recommends: ``exclude``, or ``cap_share`` 0."""
    return frozenset(
        name
        for name, treatment in policy.ranking.provenance.items()
        if isinstance(treatment, Exclude)
        or (isinstance(treatment, CapShare) and treatment.max_share == 0)
    )


@dataclass(frozen=True)
class Withdrawn:
    """Items a run ranked that must not be shown now."""

    items: frozenset[int]
    until: datetime | None = None
    """When the first of the other items turns too old for the policy's ``older_than``
    refusal; None: none will."""


def withdrawn_items(
    *, run: FeedRun, items: Sequence[Item], mutes: Mutes | None = None
) -> Withdrawn:
    """Which of ``items`` (from :func:`items_with_credits`) are refused *now*, by the same rules
    as the run that ranked them, applied to the items, creators and choices as they are now:

    * the item was deactivated, or one of its credited creators opted out of recommendation;
    * one of the run's policy's refusal rules matches it (its tags, provenance, primary creator,
      external id or age may have changed since, or it has aged past an ``older_than`` limit),
      or the policy excludes its provenance class;
    * with ``mutes``, the member muted one of its credited creators or one of its tags.
    """
    if not items:
        return Withdrawn(frozenset())
    rules, excluded, max_days = _policy_refusals(run.policy_version.id, run.policy_sha256)
    mutes = mutes or Mutes()
    now = timezone.now()
    withdrawn = set()
    primary = []
    for item in items:
        credits = list(item.credits.all())  # prefetched, in credit order
        primary.append(credits[0].creator if credits else None)
        if (
            not item.active
            or item.provenance in excluded
            or any(credit.creator.opted_out for credit in credits)
            or any(credit.creator_id in mutes.creators for credit in credits)
            or not mutes.tags.isdisjoint(item.tags or [])
        ):
            withdrawn.add(item.pk)
    if rules:
        attributes = ItemAttributes.from_records(
            [item.pk for item in items],
            creator_ids=[creator.pk if creator else -1 for creator in primary],
            creator_keys=[creator.external_id if creator else "" for creator in primary],
            item_keys=[item.external_id for item in items],
            provenance=[item.provenance for item in items],
            age_days=[
                (now - item.published_at).total_seconds() / 86_400
                if item.published_at is not None
                else float("nan")
                for item in items
            ],
            tags=[item.tags or [] for item in items],
        )
        refused = attributes.refused_by(rules)
        withdrawn.update(item.pk for item, hit in zip(items, refused, strict=True) if hit)
    until = None
    if max_days is not None:
        ages = [
            item.published_at + timedelta(days=max_days)
            for item in items
            if item.pk not in withdrawn and item.published_at is not None
        ]
        until = min(ages, default=None)
    return Withdrawn(frozenset(withdrawn), until)


def member_feed_get(
    *,
    community: Community,
    member: Membership,
    run: FeedRun,
    limit: int | None = None,
    offset: int = 0,
    row: MemberFeed | None = None,
    mutes: Mutes | None = None,
) -> Feed:
    """The member's feed in ``run``: up to ``limit`` entries from position ``offset`` on.

    Entries refused since the run (:func:`withdrawn_items`, with the member's mutes) are left
    out and the page is filled from the entries after them; ranks and offsets stay positions
    in the stored feed, so a cursor taken before a withdrawal still continues where it stopped.
    Four queries whatever the feed length (the feed row unless ``row`` is given, from
    :func:`member_feed_row`; the member's mutes unless ``mutes`` is given; the items; their
    credits), two more for each round of filling.
    """
    if row is None:
        row = member_feed_row(run=run, member=member)
    if row is None:
        # A member who joined after the run: an empty feed until the next run.
        return Feed(community=community, member=member, run=run)
    ids, total = row.item_ids, len(row.item_ids)
    wanted = total - offset if limit is None else limit
    if mutes is None:
        mutes = member_mutes(member=member)
    entries: list[FeedEntry] = []
    until: datetime | None = None
    refresh_owed = False
    position = offset
    while len(entries) < wanted and position < total:
        stop = min(position + wanted - len(entries), total)
        items = list(items_with_credits(ids[position:stop]))
        by_id = {item.pk: item for item in items}
        withdrawn = withdrawn_items(run=run, items=items, mutes=mutes)
        if withdrawn.until is not None and (until is None or withdrawn.until < until):
            until = withdrawn.until
        refresh_owed = refresh_owed or bool(withdrawn.items)
        for index in range(position, stop):
            item = by_id.get(ids[index])
            if item is None or item.pk in withdrawn.items:
                continue
            entries.append(
                FeedEntry(
                    rank=index + 1,
                    score=float(row.scores[index]),
                    item=item,
                    reasons=int(row.reasons[index]) if row.reasons else 0,
                )
            )
        position = stop
    return Feed(
        community=community,
        member=member,
        run=run,
        entries=entries,
        next_offset=position if position < total else None,
        valid_until=until,
        refresh_owed=refresh_owed,
    )
