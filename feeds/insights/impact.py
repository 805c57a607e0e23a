"""A proposal's impact before the vote: both sides, measured on the community's own data.

For a policy proposal, :func:`policy_impact_request` records a comparison of the current policy
(A) against the proposed one (B) and a worker runs :func:`policy_impact_compute`: an offline
evaluation (``ranking.evaluation.compare``: seeded per-member 80/20 holdout, feeds of
``COMMONFEED_FEED_LENGTH`` as served) on the community's interactions, reporting consumer metrics
(precision, recall, nDCG, diversity, novelty, calibration) and producer metrics (exposure
concentration, coverage, long-tail and new creators' share, AI-generated share, popularity) for
both, their differences and the churn, at the visible depth (``COMMONFEED_VISIBLE_DEPTH``) and
over the whole feed, with the definitions of the run metrics (``ranking.report``).

Besides, both policies are ranked by the feed pipeline itself on all of today's data
(``feeds.runs.services.served_feeds_compute``: a run's inputs, candidates, feed length, refusals and
choices) and measured by the run metrics (``feeds.insights.run_metrics.feeds_measure``): the
``served`` part of the report is what the first run after ratification measures, on the same data.

What it reads respects members' choices: the interactions of members who refused that their
data train the model are left out (an evaluation is a training run too). Large communities are
evaluated on a seeded sample of ``COMMONFEED_IMPACT_MAX_MEMBERS`` members, and the report says
so.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import numpy as np
from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import Max
from django.utils import timezone
from scipy.sparse import csr_matrix

from feeds import enqueue
from feeds.insights.run_metrics import feeds_measure
from feeds.models import Interaction, Item, ItemCreator, MemberChoices, PolicyImpact
from feeds.runs.services import served_feeds_compute
from governance.models import Community, Membership
from ranking.datasets import PROVENANCES, InteractionData
from ranking.evaluation import compare, split_random
from ranking.pipeline import FeedBatch
from ranking.policy import Policy, policy_validate

logger = logging.getLogger(__name__)

# Members whose interactions are read per query when the community is sampled.
_ID_CHUNK = 5_000


def _sha256(policy: Policy) -> str:
    return str(policy.sha256())


def policy_impact_latest(*, community: Community, a: Policy, b: Policy) -> PolicyImpact | None:
    """The newest comparison of ``a`` and ``b`` (computing, done or failed), if any."""
    return (
        PolicyImpact.objects.filter(
            community=community, policy_a_sha256=_sha256(a), policy_b_sha256=_sha256(b)
        )
        .order_by("-id")
        .first()
    )


def policy_impact_of_proposed(*, community: Community, b: Policy) -> PolicyImpact | None:
    """The newest finished comparison of any baseline against ``b`` (for decided proposals)."""
    return (
        PolicyImpact.objects.filter(
            community=community,
            policy_b_sha256=_sha256(b),
            status=PolicyImpact.Status.DONE,
        )
        .order_by("-id")
        .first()
    )


def policy_impact_request(*, community: Community, a: Policy, b: Policy) -> PolicyImpact:
    """The comparison to show for ``a`` against ``b``, starting one if none is usable.

    A finished one younger than ``COMMONFEED_IMPACT_MAX_AGE_SECONDS`` is reused, as is one being
    computed; otherwise a new one is recorded and a worker task is sent after commit. A partial
    unique constraint keeps it to one computation in flight per comparison, however many people
    open the page at once.
    """
    latest = policy_impact_latest(community=community, a=a, b=b)
    max_age = timedelta(seconds=settings.COMMONFEED_IMPACT_MAX_AGE_SECONDS)
    if latest is not None:
        if latest.status == PolicyImpact.Status.COMPUTING:
            return latest
        if latest.status == PolicyImpact.Status.DONE and (
            latest.finished_at is not None and timezone.now() - latest.finished_at < max_age
        ):
            return latest
    try:
        with transaction.atomic():
            impact = PolicyImpact.objects.create(
                community=community,
                policy_a_sha256=_sha256(a),
                policy_b_sha256=_sha256(b),
                policy_a=a.model_dump(mode="json"),
                policy_b=b.model_dump(mode="json"),
            )
            transaction.on_commit(lambda: enqueue.impact_compute(impact_id=impact.pk))
    except IntegrityError:
        # Someone else started the same comparison a moment ago: show theirs.
        impact = policy_impact_latest(community=community, a=a, b=b)  # type: ignore[assignment]
    return impact


def community_interaction_data(
    *, community: Community, max_members: int | None = None, seed: int = 42
) -> tuple[InteractionData, dict[str, Any]]:
    """The community's interactions and active catalogue as ``ranking`` arrays.

    Members who refused training are left out; items must be active. With ``max_members``, a
    seeded sample of that many of the remaining members. Returns the data and facts about it
    (``watermark``, ``members``, ``members_total``, ``sampled``).
    """
    watermark = Interaction.objects.filter(community=community).aggregate(m=Max("id"))["m"] or 0
    refusing = set(
        MemberChoices.objects.filter(
            member__community=community, train_on_my_data=False
        ).values_list("member_id", flat=True)
    )
    eligible = np.fromiter(
        (
            pk
            for pk in Membership.objects.filter(community=community)
            .order_by("id")
            .values_list("id", flat=True)
            if pk not in refusing
        ),
        dtype=np.int64,
    )
    sampled = max_members is not None and eligible.size > max_members
    chosen = (
        np.sort(np.random.default_rng(seed).choice(eligible, size=max_members, replace=False))
        if sampled and max_members is not None
        else eligible
    )

    items = list(
        Item.objects.filter(community=community, active=True)
        .order_by("id")
        .values_list("id", "provenance", "published_at", "tags")
    )
    item_ids = np.array([row[0] for row in items], dtype=np.int64)
    primary = dict(
        ItemCreator.objects.filter(
            item__community=community, item__active=True, position=0
        ).values_list("item_id", "creator__external_id")
    )
    creators = tuple(sorted(set(primary.values())))
    creator_index = {key: index for index, key in enumerate(creators)}
    tag_names = tuple(sorted({tag for row in items for tag in (row[3] or [])}))
    tag_index = {tag: index for index, tag in enumerate(tag_names)}
    tag_rows = [sorted({tag_index[tag] for tag in (row[3] or [])}) for row in items]
    indptr = np.cumsum([0, *[len(row) for row in tag_rows]])
    item_tags = csr_matrix(
        (
            np.ones(int(indptr[-1]), dtype=np.float32),
            np.array([c for row in tag_rows for c in row], dtype=np.int64),
            indptr,
        ),
        shape=(len(items), len(tag_names)),
    )

    columns = ("member_id", "item_id", "weight", "occurred_at")
    base = Interaction.objects.filter(
        community=community, id__lte=watermark, item__active=True
    ).order_by()
    rows: list[tuple[Any, ...]] = []
    if sampled:
        for start in range(0, chosen.size, _ID_CHUNK):
            ids = chosen[start : start + _ID_CHUNK].tolist()
            rows.extend(base.filter(member_id__in=ids).values_list(*columns).iterator())
    else:
        rows.extend(
            row
            for row in base.values_list(*columns).iterator(chunk_size=50_000)
            if row[0] not in refusing
        )
    rows.sort(key=lambda row: row[3])  # time order: the temporal split expects it
    data = InteractionData(
        member_ids=np.array([row[0] for row in rows], dtype=np.int64),
        item_ids=np.array([row[1] for row in rows], dtype=np.int64),
        weights=np.array([row[2] for row in rows], dtype=np.float32),
        timestamps=np.array([int(row[3].timestamp()) for row in rows], dtype=np.int64),
        items=item_ids,
        item_creator=np.array(
            [creator_index.get(primary.get(row[0], ""), -1) for row in items], dtype=np.int64
        ),
        creators=creators,
        item_tags=item_tags,
        tag_names=tag_names,
        item_provenance=np.array([PROVENANCES.index(row[1]) for row in items], dtype=np.int8),
        item_published=np.array(
            [row[2].timestamp() if row[2] is not None else np.nan for row in items],
            dtype=np.float64,
        ),
        name=community.slug,
    )
    facts = {
        "watermark": watermark,
        "members": int(np.unique(data.member_ids).size),
        "members_total": int(eligible.size + len(refusing)),
        "members_refusing_training": len(refusing),
        "sampled": bool(sampled),
        "interactions": int(data.member_ids.size),
        "items": int(item_ids.size),
    }
    return data, facts


def _batches(batch: FeedBatch, size: int) -> Iterator[list[tuple[int, list[int]]]]:
    """The feeds of ``batch`` as run rows, ``size`` members at a time in member id order."""
    order = np.argsort(batch.member_ids, kind="stable")
    for start in range(0, order.size, size):
        rows = order[start : start + size]
        yield [
            (int(batch.member_ids[r]), [int(i) for i in batch.item_ids[r] if i >= 0]) for r in rows
        ]


def _served_metrics(
    community: Community, policies: dict[str, Policy], members: np.ndarray | None
) -> dict[str, dict[str, Any]]:
    """The run metrics of the feeds each policy would serve now: ranked by the run's own
    pipeline on the run's inputs (read once), measured by the run's own metrics."""
    served = served_feeds_compute(
        community=community, policies=list(policies.values()), members=members
    )
    now = timezone.now()
    return {
        side: feeds_measure(
            community_id=community.pk,
            watermark=feeds.watermark,
            as_of=now,
            feeds=lambda size, batch=feeds.batch: _batches(batch, size),
        )
        for side, feeds in zip(policies, served, strict=True)
    }


def policy_impact_compute(*, impact_id: int) -> PolicyImpact:
    """Run the comparison recorded as ``impact_id`` (once: a finished one is left as it is)."""
    impact = PolicyImpact.objects.select_related("community").get(pk=impact_id)
    if impact.status != PolicyImpact.Status.COMPUTING:
        return impact
    started = time.perf_counter()
    try:
        a, b = policy_validate(impact.policy_a), policy_validate(impact.policy_b)
        data, facts = community_interaction_data(
            community=impact.community, max_members=settings.COMMONFEED_IMPACT_MAX_MEMBERS
        )
        if data.member_ids.size == 0:
            raise ValueError("the community has no interactions to evaluate on yet")
        split = split_random(data, test_fraction=0.2, seed=42)
        length, depth = settings.COMMONFEED_FEED_LENGTH, settings.COMMONFEED_VISIBLE_DEPTH
        report = compare(a, b, data, split, k=length, depth=depth)
        sample = np.unique(data.member_ids) if facts["sampled"] else None
        report["served"] = _served_metrics(impact.community, {"a": a, "b": b}, sample)
    except Exception as exc:  # recorded for the page; the worker log has the traceback
        logger.exception("policy impact %s failed", impact_id)
        PolicyImpact.objects.filter(pk=impact_id, status=PolicyImpact.Status.COMPUTING).update(
            status=PolicyImpact.Status.FAILED, finished_at=timezone.now(), error=str(exc)[:2000]
        )
    else:
        report["data"] = {
            **facts,
            "split": "random per member, 20 % held out, seed 42",
            "k": length,
            "depth": depth,
            "seconds": round(time.perf_counter() - started, 2),
        }
        PolicyImpact.objects.filter(pk=impact_id, status=PolicyImpact.Status.COMPUTING).update(
            status=PolicyImpact.Status.DONE,
            finished_at=timezone.now(),
            watermark=facts["watermark"],
            report=report,
        )
    impact.refresh_from_db()
    return impact
