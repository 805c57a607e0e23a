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

Three measures look across members and at the creator-audience relation (each at both cuts):

``convergence``
    How alike members' pages are: the mean Jaccard overlap (items both lists hold over items
    either holds) of two members' lists, over a seeded sample of member pairs
    (:func:`ranking.metrics.convergence`); members with an empty list are left out. Batch by
    batch, the report keeps a reservoir of the lists of ``2 * convergence_pairs`` members, those
    with the smallest seeded hash of their position in the stream (a uniform sample that does
    not depend on how the stream is cut into batches), and draws the pairs from it at the end:
    every pair when there are at most ``convergence_pairs``.
``relation_kept_share`` / ``discovery_share``
    Of the entries with a known creator, the share whose creator the member already engaged
    with (in ``history``) and the share whose creator is new to them; pooled over all entries,
    counting places and (``..._weighted``) position-weighted exposure.
``audience_kept_mean`` / ``audience_kept_median``
    Per creator, the share of the members who engaged with them before (``history``) that the
    feeds still reach with one of their items; the mean and median over creators who had such
    an audience. :meth:`FeedReport.audience_kept` gives the per-creator counts.

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
from ranking.datasets import AI_GENERATED, HUMAN

__all__ = ["CUTS", "DEFAULT_DEPTH", "DEFAULT_PAIRS", "Catalogue", "FeedReport", "feed_report"]

DEFAULT_DEPTH = 10
"""How many places of a feed apps show, hence where members look."""

DEFAULT_PAIRS = 2_000
"""Member pairs the convergence is measured over (every pair when there are fewer)."""

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


def _sample_keys(positions: npt.NDArray[np.int64], seed: int) -> npt.NDArray[np.uint64]:
    """A seeded pseudo-random 64-bit key per stream position (splitmix64 of position and seed):
    the same member gets the same key however the stream is cut into batches."""

    def mix(z: npt.NDArray[np.uint64]) -> npt.NDArray[np.uint64]:
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))

    salt = mix(np.array([seed], dtype=np.uint64) + np.uint64(0x9E3779B97F4A7C15))
    return mix(positions.astype(np.uint64) ^ salt)


def _pad(array: npt.NDArray[np.int64], width: int) -> npt.NDArray[np.int64]:
    if array.shape[1] >= width:
        return array
    padding = np.full((array.shape[0], width - array.shape[1]), -1, dtype=np.int64)
    return np.concatenate([array, padding], axis=1)


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
    convergence_pairs : int, default 2000
        Member pairs the convergence is averaged over; the report holds the lists of twice as
        many members.
    seed : int, default 0
        Seeds the sample of members and pairs: the same feeds and seed give the same figure.

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
        convergence_pairs: int = DEFAULT_PAIRS,
        seed: int = 0,
    ) -> None:
        if depth < 1:
            raise ValueError(f"depth must be >= 1, got {depth}")
        if convergence_pairs < 1:
            raise ValueError(f"convergence_pairs must be >= 1, got {convergence_pairs}")
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
        self.convergence_pairs = convergence_pairs
        self.seed = seed
        # The convergence reservoir: the non-empty lists with the smallest keys, key order.
        self._sample_keys = {cut: np.zeros(0, dtype=np.uint64) for cut in CUTS}
        self._sample = {cut: np.zeros((0, 0), dtype=np.int64) for cut in CUTS}
        # With history: kept and known entries, by places and weighted; audience per creator.
        self._with_history = False
        self._relation = {cut: np.zeros(4, dtype=np.float64) for cut in CUTS}
        self._audience = {cut: np.zeros(catalogue.n_creators, dtype=np.float64) for cut in CUTS}
        self._kept = {cut: np.zeros(catalogue.n_creators, dtype=np.float64) for cut in CUTS}

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
            Each member's own (earlier, positive) items: adds miscalibration (needs
            ``item_tags``), the relation kept and discovery shares and the audience kept.
        """
        array = np.asarray(recs)
        if array.ndim != 2:
            raise ValueError(f"recs must be two-dimensional (members x n), got {array.shape}")
        start = self.members
        self.length = max(self.length, int(array.shape[1]))
        self.members += int(array.shape[0])
        if array.shape[1] == 0:
            return
        catalogue = self.catalogue
        n_items = catalogue.n_items
        owner = np.asarray(catalogue.item_creator, dtype=np.int64)
        keys = _sample_keys(np.arange(start, self.members, dtype=np.int64), self.seed)
        kept = None
        if history is not None:
            self._with_history = True
            kept = metrics.relation_kept(array, history, owner, catalogue.n_creators)
        for cut, part in (("at_depth", array[:, : self.depth]), ("whole_feed", array)):
            self._keep_sample(cut, part, keys)
            if history is not None and kept is not None:
                self._add_relation(cut, part, kept[:, : part.shape[1]], history)
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

    def _keep_sample(self, cut: str, part: npt.NDArray[Any], keys: npt.NDArray[np.uint64]) -> None:
        shown = (part >= 0).any(axis=1)
        width = max(self._sample[cut].shape[1], int(part.shape[1]))
        lists = np.concatenate(
            [_pad(self._sample[cut], width), _pad(part[shown].astype(np.int64), width)]
        )
        candidates = np.concatenate([self._sample_keys[cut], keys[shown]])
        order = np.argsort(candidates, kind="stable")[: 2 * self.convergence_pairs]
        self._sample_keys[cut], self._sample[cut] = candidates[order], lists[order]

    def _add_relation(
        self,
        cut: str,
        part: npt.NDArray[Any],
        kept: FloatArray,
        history: csr_matrix,
    ) -> None:
        catalogue = self.catalogue
        known = np.isfinite(kept)
        weights = np.broadcast_to(
            metrics.position_weights(kept.shape[1], self.discount), kept.shape
        )
        self._relation[cut] += [
            float(kept[known].sum()),
            float(known.sum()),
            float((weights[known] * kept[known]).sum()),
            float(weights[known].sum()),
        ]
        audience = metrics.audience_kept(
            part, history, catalogue.item_creator, catalogue.n_creators
        )
        self._audience[cut] += audience.audience
        self._kept[cut] += audience.kept

    def audience_kept(self, cut: str = "at_depth") -> metrics.AudienceKept:
        """Per creator, their earlier audience among the measured members and how many of
        them the feeds reach (in the first ``depth`` places, or over the ``"whole_feed"``).

        Returns
        -------
        ranking.metrics.AudienceKept
            ``audience`` (members with a history item by the creator), ``kept`` (of those,
            members whose feed holds an item by them) and ``share`` (``NaN`` without an
            audience), each of shape ``(n_creators,)``; all zeros if no ``history`` was given.
        """
        if cut not in CUTS:
            raise ValueError(f"unknown cut {cut!r}; expected one of {CUTS}")
        return metrics.AudienceKept(
            audience=self._audience[cut].copy(), kept=self._kept[cut].copy()
        )

    def _across(self, cut: str) -> tuple[dict[str, float | None], dict[str, float | None]]:
        """Convergence and relation (members' side), audience kept (creators' side)."""
        consumers: dict[str, float | None] = {
            "convergence": _value(
                metrics.convergence(self._sample[cut], pairs=self.convergence_pairs, seed=self.seed)
            )
        }
        producers: dict[str, float | None] = {}
        if not self._with_history:
            return consumers, producers
        kept, known, kept_weighted, known_weighted = self._relation[cut]
        for suffix, numerator, denominator in (
            ("", kept, known),
            ("_weighted", kept_weighted, known_weighted),
        ):
            share = numerator / denominator if denominator > 0 else None
            consumers[f"relation_kept_share{suffix}"] = share
            consumers[f"discovery_share{suffix}"] = None if share is None else 1.0 - share
        shares = self.audience_kept(cut).share
        shares = shares[np.isfinite(shares)]
        producers["audience_kept_mean"] = float(shares.mean()) if shares.size else None
        producers["audience_kept_median"] = float(np.median(shares)) if shares.size else None
        return consumers, producers

    def _producers(
        self, cut: str, listed: npt.NDArray[np.bool_], creator_listed: npt.NDArray[np.bool_]
    ) -> dict[str, float | None]:
        catalogue = self.catalogue
        owner = np.asarray(catalogue.item_creator, dtype=np.int64)
        ai = np.asarray(catalogue.item_provenance) == AI_GENERATED
        human = np.asarray(catalogue.item_provenance) == HUMAN
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
            out[f"human_share{suffix}"] = _value(metrics.exposure_share(per_item, human))
        return out

    def result(self) -> dict[str, Any]:
        """The report, JSON-ready (undefined values are ``None``).

        Returns
        -------
        dict
            ``depth``, ``length`` (the longest feed measured), ``discount`` (the attention
            model), ``members``, ``catalogue`` (``items`` and ``creators`` listed, see
            :class:`Catalogue`), ``convergence_pairs`` (the member pairs the convergence at
            depth averages) and, for each of ``at_depth`` and ``whole_feed``,
            ``{"consumers": {...}, "producers": {...}}``. Consumers are means over the members
            for whom a value is defined: ``precision@c``, ``recall@c``, ``ndcg@c`` (``c`` the
            cut's length; with ``truth``), ``diversity_tags``, ``novelty_bits``,
            ``avg_popularity``, ``miscalibration_kl`` (each when its inputs were given); and,
            across members, ``convergence`` (mean over member pairs) and, with ``history``,
            ``relation_kept_share`` and ``discovery_share`` (pooled over entries with a known
            creator, each with a ``..._weighted`` twin). Producers: ``item_coverage``,
            ``creator_coverage``, and ``item_gini``, ``creator_gini``,
            ``long_tail_creator_share``, ``new_creator_share``, ``ai_generated_share``,
            ``human_share`` counting places, each with a ``..._weighted`` twin counting
            position-weighted exposure; with ``history``, ``audience_kept_mean`` and
            ``audience_kept_median`` over the creators who had an earlier audience. Coverage
            and Gini are over the listed catalogue plus every item shown anywhere in the feeds,
            the same for both cuts.
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
            "convergence_pairs": self._pairs(),
        }
        for cut in CUTS:
            consumers, producers = self._across(cut)
            report[cut] = {
                "consumers": {
                    **{name: mean.value() for name, mean in self._means[cut].items()},
                    **consumers,
                },
                "producers": {**self._producers(cut, listed, creator_listed), **producers},
            }
        return report

    def _pairs(self) -> int:
        sampled = int(self._sample["at_depth"].shape[0])
        return min(sampled * (sampled - 1) // 2, self.convergence_pairs)


def feed_report(
    recs: npt.ArrayLike,
    catalogue: Catalogue,
    *,
    truth: csr_matrix | None = None,
    history: csr_matrix | None = None,
    depth: int = DEFAULT_DEPTH,
    discount: metrics.Discount = "log2",
    convergence_pairs: int = DEFAULT_PAIRS,
    seed: int = 0,
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
    convergence_pairs, seed : int
        See :class:`FeedReport`.

    Returns
    -------
    dict
        :meth:`FeedReport.result`.
    """
    report = FeedReport(
        catalogue, depth=depth, discount=discount, convergence_pairs=convergence_pairs, seed=seed
    )
    report.add(recs, truth=truth, history=history)
    return report.result()
