"""What a batch of feeds gives members and creators, where members look and over the whole feed.

Feeds are stored and served longer than apps show them (50 entries, of which apps show about the
top 10). Every surface that reports on feeds (run metrics, the impact preview, the creator
dashboard, ``python -m ranking.evaluate``) measures them here, so a name means the same number
everywhere. Each metric is reported twice:

``at_depth``
    Over the first ``depth`` places of every feed (the *visible depth*, default
    :data:`DEFAULT_DEPTH`): what members actually see.
``whole_feed``
    Over every place of every feed.

and each producer share and Gini twice: counting **places** (every place counts 1, the
historical definition, under the plain name such as ``long_tail_creator_share``) and counting
**position-weighted exposure** (``..._weighted``: place ``p`` counts ``1 / log2(p + 2)``, see
:func:`ranking.metrics.position_weights`), because a first place is seen far more often than a
tenth.

:class:`FeedReport` accumulates feeds batch by batch (a community may have a million members) and
:func:`feed_report` measures one array of feeds at once; both give the dict of
:meth:`FeedReport.result`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy.sparse import csr_matrix

from ranking import metrics
from ranking.datasets import AI_GENERATED

__all__ = ["CUTS", "DEFAULT_DEPTH", "Catalogue", "FeedReport", "feed_report"]

DEFAULT_DEPTH = 10
"""How many places of a feed apps show, hence where members look."""

CUTS = ("at_depth", "whole_feed")
"""The two cuts of every report: the visible depth, and every place."""

FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True, eq=False)
class Catalogue:
    """What the report needs to know about the items and their creators.

    Attributes
    ----------
    item_creator : numpy.ndarray of int, shape (n_items,)
        Primary creator index of each item; ``-1`` (none, or the placeholder) is left out of
        every creator metric.
    n_creators : int
    new : numpy.ndarray of bool, shape (n_creators,)
        The new creators (e.g. :func:`ranking.metrics.new_creators`).
    item_provenance : numpy.ndarray of int, shape (n_items,)
        Provenance code of each item (:data:`ranking.datasets.PROVENANCES`).
    creator_counts : numpy.ndarray of float, shape (n_creators,), optional
        Members (or interactions) each creator reached in training: the long tail is every
        creator outside the top ``head_fraction`` of the *listed* creators by this count
        (:func:`ranking.metrics.head_creators`), decided when the report is made.
    head_fraction : float, default 0.2
    long_tail : numpy.ndarray of bool, shape (n_creators,), optional
        The long-tail creators, given outright instead of ``creator_counts``.
    listed : numpy.ndarray of bool, shape (n_items,), optional
        The catalogue coverage and Gini are taken over, e.g. the active items; items shown
        anywhere in the feeds are added to it. ``None``: every item. A creator is listed if one
        of their listed items is.
    item_popularity : numpy.ndarray of float, shape (n_items,), optional
        Distinct (training) members per item: novelty and average popularity need it.
    n_members : int
        Members behind ``item_popularity`` (the novelty's denominator).
    item_tags : scipy.sparse.csr_matrix, shape (n_items, n_tags), optional
        Diversity and calibration need it.
    """

    item_creator: npt.NDArray[np.integer[Any]]
    n_creators: int
    new: npt.NDArray[np.bool_]
    item_provenance: npt.NDArray[np.integer[Any]]
    creator_counts: FloatArray | None = None
    head_fraction: float = 0.2
    long_tail: npt.NDArray[np.bool_] | None = None
    listed: npt.NDArray[np.bool_] | None = None
    item_popularity: FloatArray | None = None
    n_members: int = 1
    item_tags: csr_matrix | None = None

    def __post_init__(self) -> None:
        if (self.creator_counts is None) == (self.long_tail is None):
            raise ValueError("give the catalogue either creator_counts or long_tail")

    @property
    def n_items(self) -> int:
        return int(np.asarray(self.item_creator).size)

    def tail(self, creator_listed: npt.NDArray[np.bool_]) -> npt.NDArray[np.bool_]:
        """The long-tail creators, the head being taken among ``creator_listed``."""
        if self.long_tail is not None:
            return np.asarray(self.long_tail, dtype=bool)
        counts = np.asarray(self.creator_counts, dtype=np.float64)
        head = np.zeros(self.n_creators, dtype=bool)
        head[creator_listed] = metrics.head_creators(
            counts[creator_listed], head_fraction=self.head_fraction
        )
        return ~head


class _Mean:
    """Running mean of per-member values over the members for whom they are defined."""

    def __init__(self) -> None:
        self.total = 0.0
        self.n = 0

    def add(self, values: FloatArray) -> None:
        defined = np.isfinite(values)
        self.total += float(values[defined].sum())
        self.n += int(defined.sum())

    def value(self) -> float | None:
        return self.total / self.n if self.n else None


def _value(number: float) -> float | None:
    return None if not math.isfinite(number) else float(number)


class FeedReport:
    """Consumer and producer metrics of feeds, at the visible depth and over the whole feed.

    Parameters
    ----------
    catalogue : Catalogue
    depth : int, default 10
        The visible depth: places ``0 .. depth - 1`` are what apps show.
    discount : {"none", "log2"}, default "log2"
        The attention model of the ``..._weighted`` metrics; ``"none"`` makes them equal to
        their place-counting twins.

    Examples
    --------
    ::

        report = FeedReport(catalogue, depth=10)
        for recs in batches:  # (members, n) item indices, -1 padded
            report.add(recs)
        report.result()["at_depth"]["producers"]["long_tail_creator_share_weighted"]
    """

    def __init__(
        self,
        catalogue: Catalogue,
        *,
        depth: int = DEFAULT_DEPTH,
        discount: metrics.Discount = "log2",
    ) -> None:
        if depth < 1:
            raise ValueError(f"depth must be >= 1, got {depth}")
        metrics.position_weights(1, discount)  # an unknown discount fails here, not at add()
        self.catalogue = catalogue
        self.depth = depth
        self.discount = discount
        self.length = 0
        self.members = 0
        n_items = catalogue.n_items
        self._places = {cut: np.zeros(n_items, dtype=np.float64) for cut in CUTS}
        self._weighted = {cut: np.zeros(n_items, dtype=np.float64) for cut in CUTS}
        self._means: dict[str, dict[str, _Mean]] = {cut: {} for cut in CUTS}

    def add(
        self,
        recs: npt.ArrayLike,
        *,
        truth: csr_matrix | None = None,
        history: csr_matrix | None = None,
    ) -> None:
        """Measure a batch of feeds.

        Parameters
        ----------
        recs : array_like of int, shape (m, n)
            Item indices, best first, ``-1`` padded; ``n`` is the feed length.
        truth : scipy.sparse.csr_matrix, shape (m, n_items), optional
            Held-out items per member: adds precision, recall and nDCG at each cut.
        history : scipy.sparse.csr_matrix, shape (m, n_items), optional
            Each member's own items: adds miscalibration (needs ``item_tags``).
        """
        array = np.asarray(recs)
        if array.ndim != 2:
            raise ValueError(f"recs must be two-dimensional (members x n), got {array.shape}")
        self.length = max(self.length, int(array.shape[1]))
        self.members += int(array.shape[0])
        if array.shape[1] == 0:
            return
        catalogue = self.catalogue
        n_items = catalogue.n_items
        for cut, part in (("at_depth", array[:, : self.depth]), ("whole_feed", array)):
            self._places[cut] += metrics.exposure(part, n_items)
            self._weighted[cut] += metrics.exposure(part, n_items, discount=self.discount)
            values: dict[str, FloatArray] = {}
            cutoff = int(part.shape[1])
            if truth is not None:
                values[f"precision@{cutoff}"] = metrics.precision_at_k(part, truth)
                values[f"recall@{cutoff}"] = metrics.recall_at_k(part, truth)
                values[f"ndcg@{cutoff}"] = metrics.ndcg_at_k(part, truth)
            if catalogue.item_tags is not None:
                values["diversity_tags"] = metrics.intra_list_diversity(part, catalogue.item_tags)
            if catalogue.item_popularity is not None:
                popularity = catalogue.item_popularity
                values["novelty_bits"] = metrics.novelty(
                    part, popularity, max(catalogue.n_members, 1)
                )
                values["avg_popularity"] = metrics.average_popularity(part, popularity)
            if history is not None and catalogue.item_tags is not None:
                values["miscalibration_kl"] = metrics.calibration(
                    part, history, catalogue.item_tags
                )
            for name, per_member in values.items():
                self._means[cut].setdefault(name, _Mean()).add(per_member)

    def _producers(
        self, cut: str, listed: npt.NDArray[np.bool_], creator_listed: npt.NDArray[np.bool_]
    ) -> dict[str, float | None]:
        catalogue = self.catalogue
        owner = np.asarray(catalogue.item_creator, dtype=np.int64)
        ai = np.asarray(catalogue.item_provenance) == AI_GENERATED
        out: dict[str, float | None] = {}
        places = self._places[cut]
        creator_places = metrics.creator_totals(places, owner, catalogue.n_creators)
        n_listed, n_creators_listed = int(listed.sum()), int(creator_listed.sum())
        long_tail = catalogue.tail(creator_listed)
        out["item_coverage"] = (
            _value(float((places[listed] > 0).sum()) / n_listed) if n_listed else None
        )
        out["creator_coverage"] = (
            _value(float((creator_places[creator_listed] > 0).sum()) / n_creators_listed)
            if n_creators_listed
            else None
        )
        for suffix, per_item in (("", places), ("_weighted", self._weighted[cut])):
            per_creator = metrics.creator_totals(per_item, owner, catalogue.n_creators)
            out[f"item_gini{suffix}"] = _value(metrics.gini(per_item[listed]))
            out[f"creator_gini{suffix}"] = _value(metrics.gini(per_creator[creator_listed]))
            out[f"long_tail_creator_share{suffix}"] = _value(
                metrics.exposure_share(per_creator, long_tail)
            )
            out[f"new_creator_share{suffix}"] = _value(
                metrics.exposure_share(per_creator, catalogue.new)
            )
            out[f"ai_generated_share{suffix}"] = _value(metrics.exposure_share(per_item, ai))
        return out

    def result(self) -> dict[str, Any]:
        """The report, JSON-ready (undefined values are ``None``).

        Returns
        -------
        dict
            ``depth``, ``length`` (the longest feed measured), ``discount`` (the attention
            model), ``members``, ``catalogue`` (``items`` and ``creators`` listed, see
            :class:`Catalogue`) and, for each of ``at_depth`` and ``whole_feed``,
            ``{"consumers": {...}, "producers": {...}}``. Consumers are means over the members
            for whom a value is defined: ``precision@c``, ``recall@c``, ``ndcg@c`` (``c`` the
            cut's length; with ``truth``), ``diversity_tags``, ``novelty_bits``,
            ``avg_popularity``, ``miscalibration_kl`` (each when its inputs were given).
            Producers: ``item_coverage``, ``creator_coverage``, and ``item_gini``,
            ``creator_gini``, ``long_tail_creator_share``, ``new_creator_share``,
            ``ai_generated_share`` counting places, each with a ``..._weighted`` twin counting
            position-weighted exposure. Coverage and Gini are over the listed catalogue plus
            every item shown anywhere in the feeds, the same for both cuts.
        """
        listed = (
            np.ones(self.catalogue.n_items, dtype=bool)
            if self.catalogue.listed is None
            else np.asarray(self.catalogue.listed, dtype=bool).copy()
        )
        listed |= self._places["whole_feed"] > 0
        owner = np.asarray(self.catalogue.item_creator, dtype=np.int64)
        creator_listed = np.zeros(self.catalogue.n_creators, dtype=bool)
        creator_listed[owner[(owner >= 0) & listed]] = True
        report: dict[str, Any] = {
            "depth": self.depth,
            "length": self.length,
            "discount": self.discount,
            "members": self.members,
            "catalogue": {"items": int(listed.sum()), "creators": int(creator_listed.sum())},
        }
        for cut in CUTS:
            report[cut] = {
                "consumers": {name: mean.value() for name, mean in self._means[cut].items()},
                "producers": self._producers(cut, listed, creator_listed),
            }
        return report


def feed_report(
    recs: npt.ArrayLike,
    catalogue: Catalogue,
    *,
    truth: csr_matrix | None = None,
    history: csr_matrix | None = None,
    depth: int = DEFAULT_DEPTH,
    discount: metrics.Discount = "log2",
) -> dict[str, Any]:
    """Consumer and producer metrics of one array of feeds, at ``depth`` and over the whole feed.

    Parameters
    ----------
    recs : array_like of int, shape (m, n)
        Served feeds as item indices, best first, ``-1`` padded.
    catalogue : Catalogue
    truth, history : scipy.sparse.csr_matrix, optional
        See :meth:`FeedReport.add`.
    depth : int, default 10
        The visible depth; ``depth >= n`` makes both cuts the same.
    discount : {"none", "log2"}, default "log2"
        Attention model of the ``..._weighted`` metrics.

    Returns
    -------
    dict
        :meth:`FeedReport.result`.
    """
    report = FeedReport(catalogue, depth=depth, discount=discount)
    report.add(recs, truth=truth, history=history)
    return report.result()
