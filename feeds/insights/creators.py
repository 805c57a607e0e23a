"""What a creator gets from the community's feeds, and why: the creator dashboard's numbers.

For the run the community serves now: how often the creator's items are shown (impressions),
their share of all impressions against an equal share, to how many members, at which ranks,
how much of members' attention that is (places weighted by position with the attention model
of ``ranking.metrics.position_weights``, as the run metrics count them), each in the top
``COMMONFEED_VISIBLE_DEPTH`` places that apps show and over the whole feed,
for which reasons (the reason codes stored with each feed entry), and whether the audience is
people who already engaged with the creator or new to them. Then what keeps items out: the
creator's own opt-out, the community's refusal rules that match their items (with the rule's
reason), members' mutes, and the policy's treatment of their items' provenance.

Counting reads every stored feed of the run once (``json_array_elements_text`` on PostgreSQL), and
leaves out the entries that are withdrawn when served (``feeds.serving.selectors.withdrawn_items``:
the creator's opt-out, items deactivated or refused since the run, members' mutes), so the figures
are those of the feeds as members get them; the share's denominator stays every stored place. The
result is cached per run, pointer revision and creator for ``CREATOR_REPORT_TTL`` seconds: an
opt-out or a catalogue change recounts at once, fold-in refreshes and new mutes between runs
(docs/pipeline.md) from the next computation on.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from django.conf import settings
from django.core.cache import cache
from django.db import connection
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
from feeds.serving.selectors import items_with_credits, withdrawn_items
from governance.models import Community
from governance.selectors import policy_of
from ranking.effects import ItemAttributes
from ranking.metrics import position_weights
from ranking.reasons import SENTENCES, Reason

CREATOR_REPORT_TTL = 300


@dataclass
class ItemExposure:
    item_id: int
    external_id: str
    title: str
    provenance: str
    impressions: int = 0
    members: int = 0
    top: int = 0
    """Impressions within the first ``COMMONFEED_VISIBLE_DEPTH`` places."""
    rank_sum: int = 0
    refused_because: list[str] = field(default_factory=list)

    @property
    def mean_rank(self) -> float | None:
        return self.rank_sum / self.impressions if self.impressions else None


@dataclass
class CreatorReport:
    creator_id: int
    run_id: int
    policy_version: int
    computed_at: str
    total_impressions: int
    creators_with_items: int
    impressions: int
    members_reached: int
    members_total: int
    top: int
    reached_fans: int
    """Members reached who had engaged with the creator's items before."""
    fans: int
    """Members who engaged with the creator's items (positive interactions)."""
    muted_by: int
    opted_out: bool
    reasons: list[tuple[str, int]]
    refusals: list[tuple[str, int]]
    """(the rule's reason, how many of the creator's items it refuses)."""
    provenance_treatment: list[tuple[str, str, int]]
    """(provenance class, the policy's action, how many of the creator's items have it)."""
    items: list[ItemExposure]
    withdrawn_impressions: int = 0
    """Places the run gave the creator's items that are withdrawn when served (left out of the
    other counts)."""
    depth: int = 10
    """The visible depth: ``top`` and the ``*_at_depth`` figures count the first places only."""
    total_top: int = 0
    """Every feed's places within the visible depth."""
    members_reached_at_depth: int = 0
    exposure: float = 0.0
    """The creator's places weighted by position (1 for a first place, 0.29 for a tenth)."""
    exposure_at_depth: float = 0.0
    total_exposure: float = 0.0
    total_exposure_at_depth: float = 0.0

    @property
    def share(self) -> float:
        return self.impressions / self.total_impressions if self.total_impressions else 0.0

    @property
    def share_at_depth(self) -> float:
        return self.top / self.total_top if self.total_top else 0.0

    @property
    def exposure_share(self) -> float:
        return self.exposure / self.total_exposure if self.total_exposure else 0.0

    @property
    def exposure_share_at_depth(self) -> float:
        total = self.total_exposure_at_depth
        return self.exposure_at_depth / total if total else 0.0

    @property
    def new_audience(self) -> int:
        """Members reached who had not engaged with the creator's items before."""
        return self.members_reached - self.reached_fans

    @property
    def equal_share(self) -> float:
        return 1 / self.creators_with_items if self.creators_with_items else 0.0


logger = logging.getLogger(__name__)


def _entries(run: FeedRun, item_ids: list[int]) -> list[tuple[int, int, int, int]]:
    """``(member, item, rank from 1, reason bits)`` of every entry of the run that shows one of
    ``item_ids``."""
    if not item_ids:
        return []
    if connection.vendor == "postgresql":
        table = MemberFeed._meta.db_table
        with connection.cursor() as cursor:
            cursor.execute(
                f"""
                SELECT f.member_id, e.item::bigint, e.rank::int,
                       COALESCE((f.reasons ->> (e.rank::int - 1))::int, 0)
                FROM {table} f
                CROSS JOIN LATERAL json_array_elements_text(f.item_ids)
                    WITH ORDINALITY AS e(item, rank)
                WHERE f.run_id = %s AND e.item::bigint = ANY(%s)
                """,
                [run.pk, item_ids],
            )
            return [tuple(row) for row in cursor.fetchall()]
    wanted = set(item_ids)
    found = []
    rows = MemberFeed.objects.filter(run=run).values_list("member_id", "item_ids", "reasons")
    for member, items, reasons in rows.iterator(chunk_size=5_000):
        for rank, item in enumerate(items, start=1):
            if item in wanted:
                bits = reasons[rank - 1] if rank - 1 < len(reasons) else 0
                found.append((member, item, rank, int(bits)))
    return found


def _feed_lengths(run: FeedRun) -> dict[int, int]:
    """How many of the run's stored feeds have each length."""
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute(
                f"SELECT json_array_length(item_ids), COUNT(*) "
                f"FROM {MemberFeed._meta.db_table} WHERE run_id = %s GROUP BY 1",
                [run.pk],
            )
            return {int(length): int(count) for length, count in cursor.fetchall()}
    return dict(
        Counter(
            len(items)
            for items in MemberFeed.objects.filter(run=run).values_list("item_ids", flat=True)
        )
    )


def creator_report(*, community: Community, creator: Creator) -> CreatorReport | None:
    """The creator's exposure in the served run and what limits it; None before any run."""
    pointer = FeedPointer.objects.filter(community=community).select_related("run").first()
    if pointer is None:
        return None
    run = pointer.run
    # v2: the report gained the visible depth and position-weighted exposure.
    depth = settings.COMMONFEED_VISIBLE_DEPTH
    key = f"cf:creator-report:v2:{depth}:{run.pk}.{pointer.revision}:{creator.pk}"
    try:
        cached = cache.get(key)
    except Exception:  # the cache is down: count now, keep nothing
        logger.warning("creator report: the cache is unreachable; counting without it")
        return _compute(community=community, creator=creator, run=run, depth=depth)
    if cached is not None:
        return _from_plain(cached)
    report = _compute(community=community, creator=creator, run=run, depth=depth)
    try:
        cache.set(key, _to_plain(report), CREATOR_REPORT_TTL)
    except Exception:
        logger.warning("creator report: the cache is unreachable; the report is not kept")
    return report


def _compute(*, community: Community, creator: Creator, run: FeedRun, depth: int) -> CreatorReport:
    policy = policy_of(run.policy_version)
    items = list(
        Item.objects.filter(community=community, credits__creator=creator, credits__position=0)
        .order_by("id")
        .values_list("id", "external_id", "title", "provenance", "published_at", "tags")
    )
    exposure = {
        row[0]: ItemExposure(item_id=row[0], external_id=row[1], title=row[2], provenance=row[3])
        for row in items
    }
    stored = _entries(run, list(exposure))
    # As members get them: without what is withdrawn when served.
    withdrawn = withdrawn_items(run=run, items=list(items_with_credits(list(exposure)))).items
    muting = set(
        MemberChoices.objects.filter(muted_creators=creator).values_list("member_id", flat=True)
    )
    tag_mutes = {
        member: set(tags)
        for member, tags in MemberChoices.objects.filter(member__community=community)
        .exclude(muted_tags=[])
        .values_list("member_id", "muted_tags")
    }
    item_tags = {row[0]: set(row[5] or []) for row in items}
    entries = [
        entry
        for entry in stored
        if entry[1] not in withdrawn
        and entry[0] not in muting
        and not (tag_mutes.get(entry[0], set()) & item_tags[entry[1]])
    ]
    members_by_item: dict[int, set[int]] = {pk: set() for pk in exposure}
    reasons: Counter[int] = Counter()
    for member, item, rank, bits in entries:
        row = exposure[item]
        row.impressions += 1
        row.rank_sum += rank
        row.top += rank <= depth
        members_by_item[item].add(member)
        for bit in Reason:
            if bits & bit:
                reasons[int(bit)] += 1
    reached = {member for member, *_ in entries}
    reached_at_depth = {member for member, _, rank, _ in entries if rank <= depth}
    # Attention by position, as ranking.report counts it; the totals are every stored place,
    # like the share of impressions.
    lengths = _feed_lengths(run)
    longest = max([*lengths, *(rank for _, _, rank, _ in entries), 0])
    weights = position_weights(longest)
    cumulative = np.concatenate([[0.0], np.cumsum(weights)])
    ranks = np.array([rank for _, _, rank, _ in entries], dtype=np.int64)
    placed = weights[ranks - 1]
    for pk, members in members_by_item.items():
        exposure[pk].members = len(members)

    fans = set(
        Interaction.objects.filter(
            community=community, item_id__in=list(exposure), weight__gt=0
        ).values_list("member_id", flat=True)
    )

    now = timezone.now()
    attributes = ItemAttributes.from_records(
        [row[0] for row in items],
        creator_ids=[creator.pk] * len(items),
        creator_keys=[creator.external_id] * len(items),
        item_keys=[row[1] for row in items],
        provenance=[row[3] for row in items],
        age_days=[
            (now - row[4]).total_seconds() / 86_400 if row[4] is not None else float("nan")
            for row in items
        ],
        tags=[row[5] or [] for row in items],
    )
    refusals = []
    for rule in policy.refusals:
        hit = attributes.refused_by([rule]) if items else np.zeros(0, dtype=bool)
        if hit.any():
            refusals.append((rule.reason, int(hit.sum())))
            for position in np.flatnonzero(hit).tolist():
                exposure[items[position][0]].refused_because.append(rule.reason)
    provenance_counts = Counter(row[3] for row in items)
    treatments: dict[str, Any] = dict(policy.ranking.provenance)
    treatment = [
        (name, treatments[name].action if name in treatments else "allow", count)
        for name, count in sorted(provenance_counts.items())
    ]

    creators_with_items = (
        ItemCreator.objects.filter(
            item__community=community, position=0, creator__placeholder=False
        )
        .values("creator_id")
        .distinct()
        .count()
    )
    return CreatorReport(
        creator_id=creator.pk,
        run_id=run.pk,
        policy_version=run.policy_version.number,
        computed_at=now.isoformat(),
        total_impressions=sum(length * count for length, count in lengths.items()),
        creators_with_items=creators_with_items,
        impressions=len(entries),
        members_reached=len(reached),
        members_total=community.memberships.count(),
        top=sum(row.top for row in exposure.values()),
        reached_fans=len(reached & fans),
        fans=len(fans),
        muted_by=MemberChoices.objects.filter(muted_creators=creator).count(),
        opted_out=creator.opted_out,
        reasons=[
            (SENTENCES[Reason(bit)], count)
            for bit, count in sorted(reasons.items(), key=lambda pair: -pair[1])
        ],
        refusals=refusals,
        provenance_treatment=treatment,
        items=sorted(exposure.values(), key=lambda row: (-row.impressions, row.item_id)),
        withdrawn_impressions=len(stored) - len(entries),
        depth=depth,
        total_top=sum(min(length, depth) * count for length, count in lengths.items()),
        members_reached_at_depth=len(reached_at_depth),
        exposure=float(placed.sum()),
        exposure_at_depth=float(placed[ranks <= depth].sum()),
        total_exposure=float(sum(cumulative[n] * count for n, count in lengths.items())),
        total_exposure_at_depth=float(
            sum(cumulative[min(n, depth)] * count for n, count in lengths.items())
        ),
    )


def _to_plain(report: CreatorReport) -> dict[str, Any]:
    return asdict(report)


def _from_plain(data: dict[str, Any]) -> CreatorReport:
    items = [ItemExposure(**row) for row in data["items"]]
    return CreatorReport(**{**data, "items": items})
