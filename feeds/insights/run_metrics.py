"""A finished run's two-sided metrics, measured on its stored feeds (and, through
``feeds_measure``, on any feeds: the impact preview measures what a policy would serve)."""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import numpy as np
import numpy.typing as npt
import scipy.sparse
from django.conf import settings
from django.db.models import Count, Q
from django.utils import timezone

from feeds.models import (
    FeedRun,
    Interaction,
    Item,
    ItemCreator,
    MemberFeed,
)
from ranking import metrics
from ranking.datasets import PROVENANCES
from ranking.report import CUTS, Catalogue, FeedReport

logger = logging.getLogger(__name__)


# Members whose stored feeds are read and measured at a time; the consumer metrics hold one
# (members x tags) dense matrix per batch, so the batch shrinks when there are many tags.
METRICS_BATCH = 2_000

METRICS_BATCH_CELLS = 4_000_000

# A metrics computation whose worker has not written a result this long after claiming the run
# is presumed dead; the next beat tick hands the run to another worker.
METRICS_LEASE = timedelta(minutes=30)

# As in ranking.evaluation.metrics_report: the "head" is the top 20 % of creators by the
# members they reached, and a creator is new if their first item is at most two years old.
HEAD_FRACTION = 0.2

NEW_CREATOR_DAYS = 730.0

# 2: adds depth, length, discount and the at_depth / whole_feed sections (ranking.report).
# 3: adds convergence, relation kept / discovery, audience kept, human share (ranking.report)
# and convergence_pairs.
METRICS_VERSION = 3

# The flat sections of version 1, kept for the API's readers: the whole feed, counting places.
CONSUMERS = ("diversity_tags", "novelty_bits", "avg_popularity", "miscalibration_kl")

PRODUCERS = (
    "item_coverage",
    "creator_coverage",
    "item_gini",
    "creator_gini",
    "long_tail_creator_share",
    "new_creator_share",
    "ai_generated_share",
)


def feed_run_metrics_pending(*, now: datetime | None = None) -> list[int]:
    """Finished runs without metrics that no live worker is computing, newest first."""
    now = now or timezone.now()
    return list(
        FeedRun.objects.filter(status=FeedRun.Status.FINISHED, metrics__isnull=True)
        .filter(Q(metrics_claimed_at__isnull=True) | Q(metrics_claimed_at__lt=now - METRICS_LEASE))
        .order_by("-id")
        .values_list("pk", flat=True)[:20]
    )


def feed_run_metrics_compute(*, run_id: int) -> dict[str, Any] | None:
    """Measure a finished run's stored feeds on both sides and store the figures on the run.

    Claimed with a compare-and-set, so a duplicate message does nothing; a run that has its
    metrics is left alone (returns ``None``). The figures are those of the feeds as stored when
    this runs (fold-in may have re-ranked some members since the swap); a run whose feeds were
    pruned before it was measured records ``{"status": "unavailable"}``.
    """
    now = timezone.now()
    claimed = (
        FeedRun.objects.filter(pk=run_id, status=FeedRun.Status.FINISHED, metrics__isnull=True)
        .filter(Q(metrics_claimed_at__isnull=True) | Q(metrics_claimed_at__lt=now - METRICS_LEASE))
        .update(metrics_claimed_at=now)
    )
    if not claimed:
        return None
    run = FeedRun.objects.select_related("community").get(pk=run_id)
    try:
        result = run_metrics(run)
    except Exception as exc:  # recorded on the run, so the page says why there are no figures
        logger.exception("metrics of feed run %s failed", run_id)
        result = {"status": "failed", "error": repr(exc)[:500]}
    FeedRun.objects.filter(pk=run_id, metrics__isnull=True, metrics_claimed_at=now).update(
        metrics=result
    )
    return result


@dataclass(frozen=True)
class _Catalogue:
    item_ids: npt.NDArray[np.int64]  # sorted: an item's index is its position here
    active: npt.NDArray[np.bool_]
    item_creator: npt.NDArray[np.int64]  # creator index, -1: none or the placeholder
    n_creators: int
    provenance: npt.NDArray[np.int64]
    tags: scipy.sparse.csr_matrix
    creator_first_published: npt.NDArray[np.float64]
    popularity: npt.NDArray[np.float64]
    n_members: int

    def index(self, item_ids: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
        """Indices of ``item_ids``; -1 for items no longer in the catalogue."""
        if self.item_ids.size == 0:
            return np.full(item_ids.size, -1, dtype=np.int64)
        position = np.minimum(np.searchsorted(self.item_ids, item_ids), self.item_ids.size - 1)
        return np.where(self.item_ids[position] == item_ids, position, -1).astype(np.int64)


def _catalogue(community_id: int, watermark: int) -> _Catalogue:
    """The community's items as arrays: creator, provenance, tags, publication, popularity."""
    rows = list(
        Item.objects.filter(community_id=community_id)
        .order_by("id")
        .values_list("id", "active", "provenance", "published_at", "tags")
    )
    item_ids = np.array([r[0] for r in rows], dtype=np.int64)
    provenance_codes = {name: code for code, name in enumerate(PROVENANCES)}
    published = np.array(
        [r[3].timestamp() if r[3] is not None else math.nan for r in rows], dtype=np.float64
    )
    tag_names = sorted({tag for r in rows for tag in (r[4] or [])})
    tag_index = {tag: n for n, tag in enumerate(tag_names)}
    tag_rows = [[tag_index[t] for t in set(r[4] or [])] for r in rows]
    tags = scipy.sparse.csr_matrix(
        (
            np.ones(sum(len(t) for t in tag_rows), dtype=np.float64),
            np.fromiter(itertools.chain.from_iterable(tag_rows), dtype=np.int64),
            np.concatenate([[0], np.cumsum([len(t) for t in tag_rows])]).astype(np.int64),
        ),
        shape=(len(rows), len(tag_names)),
    )
    # The primary creator of each item; placeholders stand for "unknown" and are left out of
    # every creator metric (as in ranking.metrics).
    credits = list(
        ItemCreator.objects.filter(
            item__community_id=community_id, position=0, creator__placeholder=False
        ).values_list("item_id", "creator_id")
    )
    creator_ids = np.unique(np.array([c for _, c in credits], dtype=np.int64))
    item_creator = np.full(item_ids.size, -1, dtype=np.int64)
    if credits:
        credited = np.array(credits, dtype=np.int64)
        item_creator[np.searchsorted(item_ids, credited[:, 0])] = np.searchsorted(
            creator_ids, credited[:, 1]
        )
    first = np.full(creator_ids.size, np.inf)
    owned = (item_creator >= 0) & ~np.isnan(published)
    np.minimum.at(first, item_creator[owned], published[owned])
    first[np.isinf(first)] = np.nan
    # Popularity: distinct members with a positive interaction, in the data the run trained on.
    positive = Interaction.objects.filter(
        community_id=community_id, id__lte=watermark, weight__gt=0
    )
    counts = np.array(
        list(
            positive.values("item_id")
            .annotate(n=Count("member_id", distinct=True))
            .values_list("item_id", "n")
        ),
        dtype=np.int64,
    ).reshape(-1, 2)
    catalogue = _Catalogue(
        item_ids=item_ids,
        active=np.array([r[1] for r in rows], dtype=bool),
        item_creator=item_creator,
        n_creators=int(creator_ids.size),
        provenance=np.array([provenance_codes[r[2]] for r in rows], dtype=np.int64),
        tags=tags,
        creator_first_published=first,
        popularity=np.zeros(item_ids.size, dtype=np.float64),
        n_members=positive.values("member_id").distinct().count(),
    )
    position = catalogue.index(counts[:, 0])
    catalogue.popularity[position[position >= 0]] = counts[position >= 0, 1]
    return catalogue


def _feed_batches(run: FeedRun, size: int) -> Iterator[list[tuple[int, list[int]]]]:
    """The run's stored feeds, ``size`` members at a time in member id order (keyset paging)."""
    last = 0
    while True:
        rows = list(
            MemberFeed.objects.filter(run_id=run.pk, member_id__gt=last)
            .order_by("member_id")
            .values_list("member_id", "item_ids")[:size]
        )
        if not rows:
            return
        last = rows[-1][0]
        yield rows


def _recs(rows: list[tuple[int, list[int]]], catalogue: _Catalogue) -> npt.NDArray[np.int64]:
    """``(members, k)`` item indices, -1 padded (items gone from the catalogue dropped)."""
    lengths = np.fromiter((len(items) for _, items in rows), dtype=np.int64, count=len(rows))
    k = int(lengths.max(initial=0))
    recs = np.full((len(rows), k), -1, dtype=np.int64)
    if k == 0:
        return recs
    flat = np.fromiter(
        itertools.chain.from_iterable(items for _, items in rows),
        dtype=np.int64,
        count=int(lengths.sum()),
    )
    row = np.repeat(np.arange(len(rows)), lengths)
    column = np.arange(flat.size) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    recs[row, column] = catalogue.index(flat)
    return recs


def _history(
    community_id: int, watermark: int, members: list[int], catalogue: _Catalogue
) -> scipy.sparse.csr_matrix:
    """The members' positive interactions up to the run's watermark, as a member x item matrix."""
    pairs = np.array(
        list(
            # The batch is one member id range (keyset order): a range scan of the
            # (member, item) index, several times faster than a long IN list.
            Interaction.objects.filter(
                community_id=community_id,
                member_id__gte=members[0],
                member_id__lte=members[-1],
                id__lte=watermark,
                weight__gt=0,
            ).values_list("member_id", "item_id")
        ),
        dtype=np.int64,
    ).reshape(-1, 2)
    batch = np.asarray(members, dtype=np.int64)
    rows = np.minimum(np.searchsorted(batch, pairs[:, 0]), batch.size - 1)
    columns = catalogue.index(pairs[:, 1])
    # Members in the range without a feed row (none in practice) are not in the batch.
    keep = (columns >= 0) & (batch[rows] == pairs[:, 0])
    history = scipy.sparse.csr_matrix(
        (np.ones(int(keep.sum())), (rows[keep], columns[keep])),
        shape=(len(members), catalogue.item_ids.size),
    )
    history.data[:] = 1.0  # repeated interactions count once
    return history


def _rounded(values: dict[str, float | None]) -> dict[str, float | None]:
    return {name: None if value is None else round(value, 6) for name, value in values.items()}


def run_metrics(run: FeedRun) -> dict[str, Any]:
    """Consumer and producer metrics of the run's stored feeds, as a JSON-ready dict.

    Measured by :class:`ranking.report.FeedReport`, the definitions of the impact preview and
    ``python -m ranking.evaluate``: over the first ``COMMONFEED_VISIBLE_DEPTH`` places of each
    feed (``at_depth``, where members look) and over every stored place (``whole_feed``),
    counting places and position-weighted exposure (``..._weighted``). The flat ``consumers``
    and ``producers`` are the whole feed counting places, as before the depth existed.

    Reads the feeds in member batches (a community may have a million members): exposure is
    summed per item and the consumer metrics are averaged over members as it goes, so memory
    stays one batch plus the catalogue. Consumers: intra-list diversity over tags, novelty
    (bits), average popularity and miscalibration (KL) against each member's own history.
    Producers: item and creator exposure Gini and coverage over the catalogue (active items and
    any item shown), long-tail creators', new creators' and AI-generated items' exposure shares.
    """
    expected = int((run.stats or {}).get("members") or 0)
    return feeds_measure(
        community_id=run.community_id,
        watermark=run.watermark or 0,
        as_of=run.requested_at,
        feeds=lambda size: _feed_batches(run, size),
        members_expected=expected,
    )


def feeds_measure(
    *,
    community_id: int,
    watermark: int,
    as_of: datetime,
    feeds: Callable[[int], Iterable[list[tuple[int, list[int]]]]],
    members_expected: int = 0,
) -> dict[str, Any]:
    """Run metrics of any feeds: ``feeds(size)`` yields batches of at most ``size``
    ``(member id, item ids)`` in ascending member order, measured against the community's
    catalogue and the interactions up to ``watermark`` (as a run's), new creators counted as
    of ``as_of``. What :func:`run_metrics` stores for a run, and what the impact preview shows
    for the feeds a policy would serve."""
    started = timezone.now()
    catalogue = _catalogue(community_id, watermark)
    batch = min(METRICS_BATCH, max(100, METRICS_BATCH_CELLS // max(catalogue.tags.shape[1], 1)))
    owner = catalogue.item_creator
    since = (as_of - timedelta(days=NEW_CREATOR_DAYS)).timestamp()
    report = FeedReport(
        Catalogue(
            item_creator=owner,
            n_creators=catalogue.n_creators,
            # The head: the top 20 % of creators by the members they reached.
            creator_counts=metrics.creator_totals(
                catalogue.popularity, owner, catalogue.n_creators
            ),
            head_fraction=HEAD_FRACTION,
            new=metrics.new_creators(catalogue.creator_first_published, since=since),
            item_provenance=catalogue.provenance,
            listed=catalogue.active,
            item_popularity=catalogue.popularity,
            n_members=max(catalogue.n_members, 1),
            item_tags=catalogue.tags,
        ),
        depth=settings.COMMONFEED_VISIBLE_DEPTH,
    )
    empty = 0
    for rows in feeds(batch):
        recs = _recs(rows, catalogue)
        empty += int(((recs >= 0).sum(axis=1) == 0).sum())
        history = _history(community_id, watermark, [member for member, _ in rows], catalogue)
        report.add(recs, history=history)
    if report.members == 0 and members_expected > 0:
        return {
            "status": "unavailable",
            "reason": "The run's stored feeds were pruned before they were measured.",
        }
    measured = report.result()
    cuts = {
        cut: {side: _rounded(measured[cut][side]) for side in ("consumers", "producers")}
        for cut in CUTS
    }
    whole = cuts["whole_feed"]
    return {
        "status": "done",
        "version": METRICS_VERSION,
        "computed_at": started.isoformat(),
        "members": {"measured": report.members, "empty_feeds": empty},
        "catalogue": measured["catalogue"],
        "consumers": {name: whole["consumers"].get(name) for name in CONSUMERS},
        "producers": {name: whole["producers"][name] for name in PRODUCERS},
        "depth": measured["depth"],
        "length": measured["length"],
        "discount": measured["discount"],
        "convergence_pairs": measured["convergence_pairs"],
        **cuts,
        "seconds": round((timezone.now() - started).total_seconds(), 3),
    }
