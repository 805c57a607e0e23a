"""Offline evaluation of ranking policies: split, train, recommend, measure, compare.

The protocol, in four steps, each a plain function over :class:`~ranking.datasets.InteractionData`:

1. **Split** the interactions into train and test: :func:`split_random` (per-member random
   holdout, seeded) or :func:`split_temporal` (each member's latest interactions held out).
   :func:`split_validation` splits a split's training part again the same way, so a policy can
   be chosen on validation and reported on a test part that played no part in choosing it.
2. **Recommend** with the product's own pipeline, :func:`ranking.pipeline.compute_feeds`, trained on
   the train part only, for every member with held-out items, with the whole catalogue as
   candidates (:func:`recommend`). Training uses the policy's ``weighting``; ``"binary"`` (the
   default) binarises it.
3. **Measure** the lists against the held-out items with :mod:`ranking.metrics`
   (:func:`metrics_report`). Relevance is binary: every held-out (member, item) pair is relevant,
   whatever its rating (the implicit-feedback reading), except pairs the member also has in
   train, which the pipeline can never recommend and which are therefore dropped from the truth.
4. **Report** as a JSON-ready dict (:func:`evaluate`), or two policies side by side with deltas
   and churn (:func:`compare`); :func:`evaluate_seeds` and :func:`compare_seeds` repeat either
   over several seeds and report each figure's mean and 95 % interval (:func:`aggregate`).

Re-ranking effects (creator cap, quotas, freshness, refusals, provenance rules) need item
attributes; :func:`item_attributes` builds them from the data set (creators, provenance, tags,
age relative to the split's latest training interaction) and :func:`recommend` passes them to
``compute_feeds`` unless ``feed_options`` brings its own, so any valid policy can be evaluated.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
from implicit.cpu.als import AlternatingLeastSquares
from scipy import stats
from scipy.sparse import csr_matrix
from threadpoolctl import threadpool_limits

from ranking import metrics
from ranking.datasets import PROVENANCES, InteractionData
from ranking.effects import ItemAttributes
from ranking.pipeline import compute_feeds
from ranking.policy import ModelParams, Policy
from ranking.report import CUTS, DEFAULT_DEPTH, Catalogue, feed_report

__all__ = [
    "Recommendations",
    "Split",
    "aggregate",
    "compare",
    "compare_seeds",
    "evaluate",
    "evaluate_seeds",
    "evaluated_members",
    "history_matrix",
    "implicit_baseline",
    "item_attributes",
    "make_split",
    "metrics_report",
    "recommend",
    "reference_time",
    "split_random",
    "split_temporal",
    "split_validation",
    "truth_matrix",
]

SplitMethod = Literal["random", "temporal"]
SplitPart = Literal["test", "validation"]


@dataclass(frozen=True, eq=False)
class Split:
    """A train/test partition of a data set's interactions.

    Attributes
    ----------
    train : numpy.ndarray of bool, shape (n_interactions,)
        ``True`` for training interactions; the rest are held out, except ``excluded`` ones.
    method : {"random", "temporal"}
        How it was made.
    test_fraction : float
        The requested share of each member's interactions held out.
    seed : int or None
        The seed of a random split; ``None`` for a temporal one.
    part : {"test", "validation"}, default "test"
        ``"validation"`` for a split of another split's training part (:func:`split_validation`).
    excluded : numpy.ndarray of bool, shape (n_interactions,), optional
        Interactions in neither part: a validation split's outer test part, which must neither
        train the model nor be measured. ``None``: every interaction is in one part.
    """

    train: npt.NDArray[np.bool_]
    method: SplitMethod
    test_fraction: float
    seed: int | None = None
    part: SplitPart = "test"
    excluded: npt.NDArray[np.bool_] | None = None

    @property
    def test(self) -> npt.NDArray[np.bool_]:
        """``True`` for held-out interactions (``~train``, less ``excluded``)."""
        return ~self.train if self.excluded is None else ~(self.train | self.excluded)

    def describe(self) -> dict[str, Any]:
        """The split's parameters and sizes, JSON-ready."""
        return {
            "method": self.method,
            "test_fraction": self.test_fraction,
            "seed": self.seed,
            "part": self.part,
            "n_train": int(self.train.sum()),
            "n_test": int(self.test.sum()),
            "n_excluded": 0 if self.excluded is None else int(self.excluded.sum()),
        }


def _check_fraction(test_fraction: float) -> None:
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must lie in (0, 1), got {test_fraction}")


def _holdout(
    members: npt.NDArray[np.int64], order: npt.NDArray[np.int64], test_fraction: float
) -> npt.NDArray[np.bool_]:
    """Hold out the last ``n_test`` of each member's interactions in ``order``.

    ``order`` sorts the interactions by member, then by the within-member key. A member with
    ``n`` interactions holds out ``min(n - 1, floor(test_fraction * n + 0.5))``.
    """
    sorted_members = members[order]
    _, starts, counts = np.unique(sorted_members, return_index=True, return_counts=True)
    n_test = np.minimum(counts - 1, np.floor(test_fraction * counts + 0.5).astype(np.int64))
    rank = np.arange(order.size) - np.repeat(starts, counts)
    test_sorted = rank >= np.repeat(counts - n_test, counts)
    train = np.ones(order.size, dtype=bool)
    train[order[test_sorted]] = False
    return train


def split_random(data: InteractionData, *, test_fraction: float = 0.2, seed: int = 42) -> Split:
    """Per-member random holdout.

    Each member's interactions are shuffled with ``np.random.default_rng(seed)`` and
    ``min(n - 1, round(test_fraction * n))`` of their ``n`` interactions (rounding halves up)
    are held out, so every member keeps at least one training interaction and a member with a
    single interaction is entirely in train. Every member with enough interactions is thus
    evaluated, in proportion to their activity.

    Parameters
    ----------
    data : InteractionData
        The interactions.
    test_fraction : float, default 0.2
        Share held out per member, in ``(0, 1)``.
    seed : int, default 42
        Seed of the shuffle; the same seed gives the same split.

    Returns
    -------
    Split
    """
    _check_fraction(test_fraction)
    rng = np.random.default_rng(seed)
    key = rng.random(data.n_interactions)
    order = np.lexsort((key, data.member_ids)).astype(np.int64)
    train = _holdout(data.member_ids, order, test_fraction)
    return Split(train=train, method="random", test_fraction=test_fraction, seed=seed)


def split_temporal(data: InteractionData, *, test_fraction: float = 0.2) -> Split:
    """Per-member temporal holdout: each member's latest interactions are held out.

    Each member's interactions are ordered by timestamp (ties by position in the data) and the
    last ``min(n - 1, round(test_fraction * n))`` are held out. This is a **per-member** cut, not
    a global time cutoff: every member is evaluated (as in :func:`split_random`), but one
    member's training data may postdate another member's test data, so it measures "predict
    what this member does next" rather than a strict replay of the past.

    Parameters
    ----------
    data : InteractionData
        The interactions.
    test_fraction : float, default 0.2
        Share held out per member, in ``(0, 1)``.

    Returns
    -------
    Split
    """
    _check_fraction(test_fraction)
    position = np.arange(data.n_interactions)
    order = np.lexsort((position, data.timestamps, data.member_ids)).astype(np.int64)
    train = _holdout(data.member_ids, order, test_fraction)
    return Split(train=train, method="temporal", test_fraction=test_fraction, seed=None)


def split_validation(
    data: InteractionData,
    split: Split,
    *,
    validation_fraction: float | None = None,
    seed: int | None = None,
) -> Split:
    """Split ``split``'s training part again, the same way, into train and validation.

    The validation part is to *choose* with (a policy, its settings): the test part of ``split``
    is then left for *reporting* on, having played no part in the choice. Made like ``split``
    but on its training interactions only: for a temporal split, each member's latest
    ``validation_fraction`` of their *training* interactions (so validation precedes test for
    every member, as a tuning period before the reported one); for a random split, a random
    holdout of them. ``split``'s test part is ``excluded``: it trains nothing and is measured
    nowhere.

    Parameters
    ----------
    data : InteractionData
        The interactions ``split`` was made from.
    split : Split
        A test split (from :func:`split_random` or :func:`split_temporal`).
    validation_fraction : float, optional
        Share of each member's *training* interactions held out for validation, in ``(0, 1)``;
        default ``split.test_fraction`` (0.2 of the 80 % left by a 0.2 test split: 16 % of all).
    seed : int, optional
        Seed of a random validation holdout; default ``split.seed + 1``, so it is not the shuffle
        that made the test part. Ignored for a temporal split.

    Returns
    -------
    Split
        With ``part="validation"``, the same ``method``, ``test_fraction`` the validation
        fraction, and ``excluded`` the outer test part.

    Raises
    ------
    ValueError
        If ``split`` is itself a validation split or the fraction is outside ``(0, 1)``.
    """
    if split.part != "test":
        raise ValueError("split_validation needs a test split, not a validation split")
    fraction = split.test_fraction if validation_fraction is None else validation_fraction
    _check_fraction(fraction)
    inside = np.flatnonzero(split.train)
    members = data.member_ids[inside]
    if split.method == "temporal":
        position = np.arange(inside.size)
        local = np.lexsort((position, data.timestamps[inside], members)).astype(np.int64)
        chosen_seed = None
    else:
        chosen_seed = (0 if split.seed is None else split.seed + 1) if seed is None else seed
        key = np.random.default_rng(chosen_seed).random(inside.size)
        local = np.lexsort((key, members)).astype(np.int64)
    keep = _holdout(members, local, fraction)
    train = np.zeros_like(split.train)
    train[inside[keep]] = True
    return Split(
        train=train,
        method=split.method,
        test_fraction=fraction,
        seed=chosen_seed,
        part="validation",
        excluded=split.test.copy(),
    )


def _member_rows(
    data: InteractionData, member_ids: npt.NDArray[np.int64], mask: npt.NDArray[np.bool_]
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """(row in ``member_ids``, item index) of the interactions in ``mask`` by those members."""
    members = data.member_ids[mask]
    items = data.item_index(data.item_ids[mask])
    order = np.argsort(member_ids, kind="stable")
    sorted_ids = member_ids[order]
    position = np.minimum(np.searchsorted(sorted_ids, members), max(sorted_ids.size - 1, 0))
    known = sorted_ids.size > 0
    found = (sorted_ids[position] == members) if known else np.zeros(members.size, dtype=bool)
    return order[position[found]], items[found]


def _binary(
    rows: npt.NDArray[np.int64], cols: npt.NDArray[np.int64], shape: tuple[int, int]
) -> csr_matrix:
    matrix = csr_matrix((np.ones(rows.size, dtype=np.float32), (rows, cols)), shape=shape)
    matrix.sum_duplicates()
    matrix.data[:] = 1.0
    return matrix


def history_matrix(data: InteractionData, split: Split, member_ids: npt.ArrayLike) -> csr_matrix:
    """Training items of each member, as a binary member x item matrix.

    Parameters
    ----------
    data : InteractionData
    split : Split
    member_ids : array_like of int, shape (m,)
        External member ids; row ``r`` is ``member_ids[r]``.

    Returns
    -------
    scipy.sparse.csr_matrix of float32, shape (m, n_items)
    """
    ids = np.asarray(member_ids, dtype=np.int64)
    rows, cols = _member_rows(data, ids, split.train)
    return _binary(rows, cols, (ids.size, data.n_items))


def truth_matrix(data: InteractionData, split: Split, member_ids: npt.ArrayLike) -> csr_matrix:
    """Held-out items of each member, as a binary member x item matrix.

    Pairs the member also has in the training part are dropped (the pipeline never recommends
    an item back to a member who interacted with it).

    Parameters
    ----------
    data : InteractionData
    split : Split
    member_ids : array_like of int, shape (m,)
        External member ids; row ``r`` is ``member_ids[r]``.

    Returns
    -------
    scipy.sparse.csr_matrix of float32, shape (m, n_items)
    """
    ids = np.asarray(member_ids, dtype=np.int64)
    rows, cols = _member_rows(data, ids, split.test)
    held_out = _binary(rows, cols, (ids.size, data.n_items))
    seen = history_matrix(data, split, ids)
    truth = csr_matrix(held_out - held_out.multiply(seen))
    truth.eliminate_zeros()
    return truth


def reference_time(data: InteractionData, split: Split | None = None) -> float:
    """Unix time "now" for item ages: the latest training interaction (of all, without a split).

    ``0.0`` when there is no interaction.
    """
    stamps = data.timestamps if split is None else data.timestamps[split.train]
    return float(stamps.max()) if stamps.size else 0.0


def item_attributes(data: InteractionData, split: Split | None = None) -> ItemAttributes:
    """The item attributes that :func:`ranking.pipeline.compute_feeds` needs, from a data set.

    One row per catalogue item (``data.items``):

    * ``item_ids``: the external item ids; ``item_keys`` the same, as text;
    * ``creator_ids``: the primary creator's index in ``data.creators`` (``-1`` for none, e.g.
      the ``unattributed`` placeholder); ``creator_keys`` the creator's name (``""`` for none),
      so ``creator`` refusals match ``data.creators`` entries. The creator ids are the
      creator indices, so the re-ranking's long tail (creators ranked by training popularity,
      ties to the lower index) is the same as :func:`metrics_report`'s;
    * ``provenance``: :data:`~ranking.datasets.PROVENANCES` name of the item's code;
    * ``age_days``: days from the item's publication to :func:`reference_time` (the latest
      *training* interaction, so nothing from the test period leaks in); ``NaN`` when unknown;
    * ``tags``: the item's tags (``data.tag_names`` of its non-zero ``item_tags`` columns).

    Parameters
    ----------
    data : InteractionData
    split : Split, optional
        The split whose training part defines "now"; without one, all interactions do.

    Returns
    -------
    ItemAttributes
    """
    now = reference_time(data, split)
    creator = data.item_creator.astype(np.int64)
    creator_keys = [data.creators[c] if c >= 0 else "" for c in creator.tolist()]
    tags_csr = csr_matrix(data.item_tags, copy=True)  # never touch the data set's arrays
    tags_csr.eliminate_zeros()
    tags_csr.sort_indices()
    tag_names = np.asarray(data.tag_names, dtype=object)
    item_tags = [
        [str(tag_names[c]) for c in tags_csr.indices[start:stop]]
        for start, stop in zip(tags_csr.indptr[:-1], tags_csr.indptr[1:], strict=True)
    ]
    return ItemAttributes.from_records(
        data.items,
        creator_ids=creator,
        provenance=[PROVENANCES[int(code)] for code in data.item_provenance],
        age_days=(now - data.item_published) / 86_400.0,
        item_keys=[str(item) for item in data.items.tolist()],
        creator_keys=creator_keys,
        tags=item_tags,
    )


@dataclass(frozen=True, eq=False)
class Recommendations:
    """Top-k lists produced for an evaluation.

    Attributes
    ----------
    member_ids : numpy.ndarray of int64, shape (m,)
        External ids of the evaluated members (those with held-out items), ascending.
    items : numpy.ndarray of int64, shape (m, k)
        Recommended **item indices** into ``data.items``, best first; ``-1`` pads.
    metadata : dict
        :attr:`ranking.pipeline.FeedBatch.metadata` of the run.
    seconds : float
        Wall time of :func:`~ranking.pipeline.compute_feeds`.
    """

    member_ids: npt.NDArray[np.int64]
    items: npt.NDArray[np.int64]
    metadata: dict[str, object]
    seconds: float


def evaluated_members(data: InteractionData, split: Split) -> npt.NDArray[np.int64]:
    """Ascending external ids of the members with at least one held-out item not in train."""
    members = np.unique(data.member_ids[split.test])
    truth = truth_matrix(data, split, members)
    has_truth = np.asarray(truth.getnnz(axis=1)) > 0
    result: npt.NDArray[np.int64] = members[has_truth]
    return result


def recommend(
    policy: Policy,
    data: InteractionData,
    split: Split,
    *,
    k: int = 10,
    num_threads: int = 0,
    feed_options: Mapping[str, Any] | None = None,
) -> Recommendations:
    """Train ``policy`` on the training part and recommend ``k`` items to each evaluated member.

    Calls :func:`ranking.pipeline.compute_feeds` with the training interactions, the whole
    catalogue as ``candidate_items`` and the members with held-out items as ``feed_members``.

    Parameters
    ----------
    policy : Policy
    data : InteractionData
    split : Split
    k : int, default 10
        List length.
    num_threads : int, default 0
        ALS threads (``0``: all cores); results do not depend on it.
    feed_options : mapping, optional
        Further keyword arguments for :func:`~ranking.pipeline.compute_feeds`. Unless it has
        ``item_attributes``, those of :func:`item_attributes` ``(data, split)`` are passed, so
        every re-ranking effect of the policy applies.

    Returns
    -------
    Recommendations
    """
    train = split.train
    members = evaluated_members(data, split)
    options = dict(feed_options or {})
    if "item_attributes" not in options:
        options["item_attributes"] = item_attributes(data, split)
    started = time.perf_counter()
    batch = compute_feeds(
        member_ids=data.member_ids[train],
        item_ids=data.item_ids[train],
        weights=data.weights[train],
        policy=policy,
        feed_members=members,
        candidate_items=data.items,
        n=k,
        num_threads=num_threads,
        **options,
    )
    seconds = time.perf_counter() - started
    items = np.where(batch.item_ids >= 0, data.item_index(batch.item_ids), -1)
    return Recommendations(
        member_ids=members, items=items, metadata=dict(batch.metadata), seconds=seconds
    )


def implicit_baseline(
    params: ModelParams,
    data: InteractionData,
    split: Split,
    *,
    k: int = 10,
    num_threads: int = 0,
) -> Recommendations:
    """The same lists made with bare :mod:`implicit`, bypassing :mod:`ranking.pipeline`.

    A reference implementation for checking the pipeline: binarise the training pairs into a
    members x items matrix (rows and columns: the sorted ids that occur in training), fit
    :class:`implicit.cpu.als.AlternatingLeastSquares` with ``params`` and call its
    ``recommend(..., filter_already_liked_items=True)``. With ``weighting="binary"`` and no
    re-ranking in the policy, :func:`recommend` should return exactly these lists.

    Parameters
    ----------
    params : ModelParams
        ``factors``, ``regularization``, ``alpha``, ``iterations`` and ``seed`` are used
        (``weighting`` is not: the matrix is always binary).
    data, split, k, num_threads
        As in :func:`recommend`.

    Returns
    -------
    Recommendations
        For :func:`evaluated_members`, with item indices into ``data.items``.
    """
    train = split.train
    member_vocab = np.unique(data.member_ids[train])
    item_vocab = np.unique(data.item_ids[train])
    rows = np.searchsorted(member_vocab, data.member_ids[train])
    cols = np.searchsorted(item_vocab, data.item_ids[train])
    matrix = _binary(rows, cols, (member_vocab.size, item_vocab.size))
    members = evaluated_members(data, split)
    started = time.perf_counter()
    model = AlternatingLeastSquares(
        factors=params.factors,
        regularization=params.regularization,
        alpha=params.alpha,
        iterations=params.iterations,
        random_state=params.seed,
        dtype=np.float32,
        calculate_training_loss=False,
        num_threads=num_threads,
    )
    user_rows = np.searchsorted(member_vocab, members)
    with threadpool_limits(limits=1, user_api="blas"):
        model.fit(matrix, show_progress=False)
        ids, _scores = model.recommend(
            user_rows, matrix[user_rows], N=k, filter_already_liked_items=True
        )
    seconds = time.perf_counter() - started
    ids = np.asarray(ids, dtype=np.int64).reshape(members.size, k)
    items = data.item_index(item_vocab[ids])
    return Recommendations(member_ids=members, items=items, metadata={}, seconds=seconds)


def _float(value: float) -> float | None:
    return None if not math.isfinite(value) else float(value)


def metrics_report(
    recommendations: Recommendations,
    data: InteractionData,
    split: Split,
    *,
    discount: metrics.Discount = "none",
    head_fraction: float = 0.2,
    new_creator_days: float = 730.0,
    depth: int = DEFAULT_DEPTH,
) -> dict[str, Any]:
    """Every metric of :mod:`ranking.metrics` for a set of lists, as a JSON-ready dict.

    Measured by :func:`ranking.report.feed_report`, the definitions the product's run metrics
    and impact preview use too.

    Parameters
    ----------
    recommendations : Recommendations
        From :func:`recommend` (or built by hand, e.g. from a bare :mod:`implicit` model).
    data : InteractionData
    split : Split
    discount : {"none", "log2"}, default "none"
        Exposure discount of the producer metrics in ``producers`` (see :mod:`ranking.metrics`);
        ``at_depth`` and ``whole_feed`` always hold both.
    head_fraction : float, default 0.2
        Share of creators (by training interactions) that are *not* long tail.
    new_creator_days : float, default 730
        A creator is *new* if their first item was published at most this many days before the
        latest training interaction.
    depth : int, default 10
        The visible depth of ``at_depth``.

    Returns
    -------
    dict
        ``{"consumers": {...}, "producers": {...}, "members": {...}, "at_depth": {...},
        "whole_feed": {...}}``. ``consumers`` and ``producers`` are the metrics over the whole
        lists, as before the visible depth existed (the producers' exposure discounted by
        ``discount``); ``at_depth`` and ``whole_feed`` are the two cuts of
        :meth:`ranking.report.FeedReport.result`. Consumer values are the means over members
        with a defined value (``NaN`` becomes ``None``); ``members`` counts evaluated members,
        those without held-out items (excluded from the consumer means) and those whose list
        is shorter than ``k``.
    """
    recs = recommendations.items
    k = int(recs.shape[1])
    member_ids = recommendations.member_ids
    truth = truth_matrix(data, split, member_ids)
    history = history_matrix(data, split, member_ids)

    train_members = np.unique(data.member_ids[split.train])
    all_history = history_matrix(data, split, train_members)
    popularity = np.asarray(all_history.sum(axis=0), dtype=np.float64).ravel()
    owner = data.item_creator
    creator_counts = metrics.creator_totals(popularity, owner, data.n_creators)
    latest = float(data.timestamps[split.train].max()) if split.train.any() else 0.0
    since = latest - new_creator_days * 86_400.0
    catalogue = Catalogue(
        item_creator=owner,
        n_creators=data.n_creators,
        creator_counts=creator_counts,
        head_fraction=head_fraction,
        new=metrics.new_creators(data.creator_first_published, since=since),
        item_provenance=data.item_provenance,
        item_popularity=popularity,
        n_members=max(train_members.size, 1),
        item_tags=data.item_tags,
    )
    measured = feed_report(recs, catalogue, truth=truth, history=history, depth=depth)
    whole = measured["whole_feed"]
    # The flat sections keep their names and meaning: the whole list, with ``discount``.
    suffix = "" if discount == "none" else "_weighted"
    consumers = {
        name: whole["consumers"].get(name)
        for name in (
            f"precision@{k}",
            f"recall@{k}",
            f"ndcg@{k}",
            "diversity_tags",
            "novelty_bits",
            "miscalibration_kl",
        )
    }
    producers = {
        "item_coverage": whole["producers"]["item_coverage"],
        "creator_coverage": whole["producers"]["creator_coverage"],
        **{
            name: whole["producers"][f"{name}{suffix}"]
            for name in (
                "item_gini",
                "creator_gini",
                "long_tail_creator_share",
                "new_creator_share",
                "ai_generated_share",
            )
        },
        "avg_popularity": whole["consumers"].get("avg_popularity"),
    }
    has_truth = truth.getnnz(axis=1) > 0
    return {
        "consumers": consumers,
        "producers": producers,
        "at_depth": measured["at_depth"],
        "whole_feed": whole,
        "members": {
            "evaluated": int(has_truth.sum()),
            "excluded_no_truth": int((~has_truth).sum()),
            "short_lists": int(np.count_nonzero((recs < 0).any(axis=1))),
            "empty_lists": int(np.count_nonzero((recs < 0).all(axis=1))) if k else len(recs),
        },
        "settings": {
            "discount": discount,
            "depth": depth,
            "attention": "log2: place p (0 = top) counts 1/log2(p + 2) in the *_weighted metrics",
            "head_fraction": head_fraction,
            "new_creator_days": new_creator_days,
            "new_creator_since": since,
            "calibration": "kl (nats, smoothing 0.01)",
            "diversity": "1 - cosine over genre tags",
            "popularity": "distinct training members per item",
        },
    }


def evaluate(
    policy: Policy,
    data: InteractionData,
    split: Split,
    *,
    k: int = 10,
    discount: metrics.Discount = "none",
    depth: int = DEFAULT_DEPTH,
    num_threads: int = 0,
    feed_options: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Train, recommend and measure one policy.

    Parameters
    ----------
    policy : Policy
        The ranking policy.
    data : InteractionData
    split : Split
        From :func:`split_random` or :func:`split_temporal`.
    k : int, default 10
        List length and cutoff of every @k metric.
    discount : {"none", "log2"}, default "none"
        Exposure discount of the producer metrics in ``producers``.
    depth : int, default 10
        The visible depth: ``at_depth`` measures the first ``depth`` places of each list,
        ``whole_feed`` all ``k``.
    num_threads : int, default 0
        ALS threads (``0``: all cores).
    feed_options : mapping, optional
        Passed on to :func:`recommend`.

    Returns
    -------
    dict
        JSON-ready: ``consumers`` and ``producers`` (metric name -> value, over the whole
        lists), ``at_depth`` and ``whole_feed`` (:func:`ranking.report.feed_report`'s two cuts,
        each with consumers and producers, places and position-weighted), ``members``
        (counts), ``params`` (policy, its SHA-256, k, split, data set sizes, metric settings)
        and ``timings`` (seconds).
    """
    run = recommend(policy, data, split, k=k, num_threads=num_threads, feed_options=feed_options)
    return _report(policy, run, data, split, k=k, discount=discount, depth=depth)


def _report(
    policy: Policy,
    run: Recommendations,
    data: InteractionData,
    split: Split,
    *,
    k: int,
    discount: metrics.Discount,
    depth: int,
) -> dict[str, Any]:
    started = time.perf_counter()
    measured = metrics_report(run, data, split, discount=discount, depth=depth)
    metric_seconds = time.perf_counter() - started
    settings = measured.pop("settings")
    return {
        "consumers": measured["consumers"],
        "producers": measured["producers"],
        "at_depth": measured["at_depth"],
        "whole_feed": measured["whole_feed"],
        "members": measured["members"],
        "params": {
            "policy": policy.model_dump(mode="json"),
            "policy_sha256": policy.sha256(),
            "k": k,
            "depth": depth,
            "split": split.describe(),
            "data": {
                "name": data.name,
                "n_interactions": data.n_interactions,
                "n_members": int(data.members.size),
                "n_items": data.n_items,
                "n_creators": data.n_creators,
            },
            "metrics": settings,
        },
        "timings": {
            "feeds_seconds": round(run.seconds, 4),
            "fit_seconds": run.metadata.get("fit_seconds"),
            "recommend_seconds": run.metadata.get("recommend_seconds"),
            "metrics_seconds": round(metric_seconds, 4),
        },
    }


def _deltas(a: dict[str, float | None], b: dict[str, float | None]) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    for name, value_a in a.items():
        value_b = b.get(name)
        out[name] = None if value_a is None or value_b is None else value_b - value_a
    return out


def compare(
    policy_a: Policy,
    policy_b: Policy,
    data: InteractionData,
    split: Split,
    *,
    k: int = 10,
    discount: metrics.Discount = "none",
    depth: int = DEFAULT_DEPTH,
    num_threads: int = 0,
    feed_options: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Evaluate two policies on the same split and report the differences.

    Parameters
    ----------
    policy_a, policy_b : Policy
        The baseline (``a``) and the candidate (``b``).
    data, split, k, discount, depth, num_threads, feed_options
        As in :func:`evaluate`; both policies get the same ``feed_options``.

    Returns
    -------
    dict
        ``{"a": report, "b": report, "deltas": {"consumers": ..., "producers": ...,
        "at_depth": {"consumers": ..., "producers": ...}, "whole_feed": {...}}, "churn": {"mean":
        float, "n_members": int}, "churn_at_depth": {...}}`` where a delta is ``b - a`` and
        churn is :func:`ranking.metrics.churn` between the two policies' lists for the same
        members (``churn_at_depth``: of their first ``depth`` places).
    """
    run_a, run_b = (
        recommend(policy, data, split, k=k, num_threads=num_threads, feed_options=feed_options)
        for policy in (policy_a, policy_b)
    )
    report_a = _report(policy_a, run_a, data, split, k=k, discount=discount, depth=depth)
    report_b = _report(policy_b, run_b, data, split, k=k, discount=discount, depth=depth)
    changed = metrics.churn(run_a.items, run_b.items)
    visible = metrics.churn(run_a.items[:, :depth], run_b.items[:, :depth])
    deltas: dict[str, Any] = {
        section: _deltas(report_a[section], report_b[section])
        for section in ("consumers", "producers")
    }
    for cut in CUTS:
        deltas[cut] = {
            side: _deltas(report_a[cut][side], report_b[cut][side])
            for side in ("consumers", "producers")
        }
    return {
        "a": report_a,
        "b": report_b,
        "deltas": deltas,
        "churn": {"mean": _float(changed.mean), "n_members": int(changed.per_member.size)},
        "churn_at_depth": {
            "mean": _float(visible.mean),
            "n_members": int(visible.per_member.size),
        },
    }


def make_split(
    data: InteractionData,
    method: SplitMethod = "random",
    *,
    test_fraction: float = 0.2,
    seed: int = 42,
    part: SplitPart = "test",
) -> Split:
    """The split the command line names: ``method``, then its validation part if asked.

    Parameters
    ----------
    data : InteractionData
    method : {"random", "temporal"}, default "random"
        :func:`split_random` (seeded with ``seed``) or :func:`split_temporal` (``seed`` unused).
    test_fraction : float, default 0.2
        Share of each member's interactions held out for test (and, for ``part="validation"``,
        of their remaining training interactions held out for validation).
    seed : int, default 42
    part : {"test", "validation"}, default "test"
        ``"validation"``: :func:`split_validation` of the test split, with its defaults.

    Returns
    -------
    Split
    """
    split = (
        split_random(data, test_fraction=test_fraction, seed=seed)
        if method == "random"
        else split_temporal(data, test_fraction=test_fraction)
    )
    return split if part == "test" else split_validation(data, split)


def _seeded(policy: Policy, seed: int) -> Policy:
    document = policy.model_dump(mode="json")
    document["model"]["seed"] = seed
    return Policy.model_validate(document)


def _ratios(a: Any, b: Any) -> Any:
    """``b / a`` leaf by leaf (``None`` where either is missing or ``a`` is 0)."""
    if isinstance(a, dict):
        return {
            name: _ratios(value, b.get(name) if isinstance(b, dict) else None)
            for name, value in a.items()
        }
    if isinstance(a, bool) or not isinstance(a, int | float) or not isinstance(b, int | float):
        return None
    return None if a == 0 else _float(b / a)


def _interval(values: Sequence[Any], confidence: float) -> dict[str, Any]:
    defined = np.asarray([v for v in values if v is not None], dtype=np.float64)
    mean = float(defined.mean()) if defined.size else None
    low = high = None
    if defined.size >= 2 and mean is not None:
        half = float(
            stats.t.ppf(0.5 + confidence / 2, defined.size - 1)
            * defined.std(ddof=1)
            / math.sqrt(defined.size)
        )
        low, high = mean - half, mean + half
    return {"mean": mean, "low": low, "high": high, "values": list(values)}


def aggregate(reports: Sequence[dict[str, Any]], *, confidence: float = 0.95) -> dict[str, Any]:
    """Mean and t-interval, seed by seed, of every figure in reports of the same shape.

    Parameters
    ----------
    reports : sequence of dict
        Reports of :func:`evaluate` or :func:`compare` (or any JSON-ready trees of the same
        shape), one per seed.
    confidence : float, default 0.95
        Coverage of the interval.

    Returns
    -------
    dict
        The first report's shape, each number (``bool`` excepted) replaced by ``{"mean": ...,
        "low": ..., "high": ..., "values": [...]}``: the mean over the reports where it is
        defined and the Student t interval ``mean ± t(n - 1) · s / √n`` over those ``n``
        values (``low``/``high`` ``None`` when ``n < 2``), ``values`` the per-report values in
        order. ``params`` sections are not figures: the first report's are kept. The interval
        is over seeds (runs), not over members: it says how much the figure moves with the
        seed, the noise a one-seed comparison would hide.
    """
    if not reports:
        raise ValueError("aggregate needs at least one report")

    def walk(nodes: Sequence[Any]) -> Any:
        first = nodes[0]
        if isinstance(first, dict):
            return {
                name: first[name] if name == "params" else walk([node.get(name) for node in nodes])
                for name in first
            }
        if isinstance(first, bool) or not isinstance(first, int | float | None):
            return first
        if all(node is None for node in nodes):
            return None
        return _interval(nodes, confidence)

    result: dict[str, Any] = walk(list(reports))
    return result


def _seed_params(result: dict[str, Any], seeds: Sequence[int], confidence: float) -> None:
    result["seeds"] = {
        "seeds": [int(seed) for seed in seeds],
        "interval": f"{confidence:.0%} Student t interval over seeds",
        "varies": "ALS initialisation (model.seed), and the holdout of a random split",
    }


def evaluate_seeds(
    policy: Policy,
    data: InteractionData,
    *,
    seeds: Sequence[int],
    method: SplitMethod = "random",
    test_fraction: float = 0.2,
    part: SplitPart = "test",
    k: int = 10,
    discount: metrics.Discount = "none",
    depth: int = DEFAULT_DEPTH,
    num_threads: int = 0,
    feed_options: Mapping[str, Any] | None = None,
    confidence: float = 0.95,
) -> dict[str, Any]:
    """:func:`evaluate` once per seed, aggregated by :func:`aggregate`.

    Seed ``s`` seeds the policy's model (``model.seed = s``) and, for a random split, the
    holdout (``make_split(data, method, seed=s, ...)``); a temporal split is the same for every
    seed, so its interval is the model's noise alone.

    Parameters
    ----------
    policy : Policy
    data : InteractionData
    seeds : sequence of int
        One run per seed.
    method, test_fraction, part
        As in :func:`make_split`.
    k, discount, depth, num_threads, feed_options
        As in :func:`evaluate`.
    confidence : float, default 0.95

    Returns
    -------
    dict
        :func:`aggregate` of the per-seed reports, with ``seeds`` (the seeds and what the
        interval is).
    """
    reports = [
        evaluate(
            _seeded(policy, seed),
            data,
            make_split(data, method, test_fraction=test_fraction, seed=seed, part=part),
            k=k,
            discount=discount,
            depth=depth,
            num_threads=num_threads,
            feed_options=feed_options,
        )
        for seed in seeds
    ]
    result = aggregate(reports, confidence=confidence)
    _seed_params(result, seeds, confidence)
    return result


def compare_seeds(
    policy_a: Policy,
    policy_b: Policy,
    data: InteractionData,
    *,
    seeds: Sequence[int],
    method: SplitMethod = "random",
    test_fraction: float = 0.2,
    part: SplitPart = "test",
    k: int = 10,
    discount: metrics.Discount = "none",
    depth: int = DEFAULT_DEPTH,
    num_threads: int = 0,
    feed_options: Mapping[str, Any] | None = None,
    confidence: float = 0.95,
) -> dict[str, Any]:
    """:func:`compare` once per seed, aggregated by :func:`aggregate`, with ratios.

    Both policies get the same seed and split in each run (see :func:`evaluate_seeds`).
    Besides :func:`compare`'s sections, each run gets ``ratios``: ``b / a`` of every figure of
    the ``at_depth`` and ``whole_feed`` cuts (e.g. ``ratios.at_depth.consumers["ndcg@10"]``:
    0.95 is a 5 % loss), so a claim such as "twice the share at 5 % loss" has an interval too.

    Parameters
    ----------
    policy_a, policy_b : Policy
        The baseline and the candidate.
    data, seeds, method, test_fraction, part, k, discount, depth, num_threads, feed_options,
    confidence
        As in :func:`evaluate_seeds`.

    Returns
    -------
    dict
        :func:`aggregate` of the per-seed comparisons, with ``ratios`` and ``seeds``.
    """
    reports = []
    for seed in seeds:
        report = compare(
            _seeded(policy_a, seed),
            _seeded(policy_b, seed),
            data,
            make_split(data, method, test_fraction=test_fraction, seed=seed, part=part),
            k=k,
            discount=discount,
            depth=depth,
            num_threads=num_threads,
            feed_options=feed_options,
        )
        report["ratios"] = {cut: _ratios(report["a"][cut], report["b"][cut]) for cut in CUTS}
        reports.append(report)
    result = aggregate(reports, confidence=confidence)
    _seed_params(result, seeds, confidence)
    return result
