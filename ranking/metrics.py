"""Offline metrics for top-k recommendations: what members get, and what creators get.

Every function takes arrays and returns arrays or floats. The common inputs are

``recs`` : int array of shape (m, k)
    Recommended **item indices** (``0 .. n_items - 1``) for ``m`` members, best first; ``-1``
    pads short lists. A list is assumed to hold no repeated item (as :func:`ranking.pipeline.
    compute_feeds` guarantees).
``truth`` : scipy.sparse.csr_matrix, shape (m, n_items)
    Held-out relevant items: row ``r`` is member ``r``'s test set; any stored non-zero counts as
    relevant (binary relevance).

**Consumer metrics** return one float64 value per member (shape ``(m,)``) with ``NaN`` where the
metric is undefined for that member (no held-out items, fewer than two recommendations, ...);
:func:`summarize` averages the defined values and counts the excluded ones. **Producer metrics**
look at the whole batch of lists and return one number (or one value per item / creator).

Exposure
    An item's *exposure* is the number of lists it appears in (``discount="none"``), or the sum of
    ``1 / log2(position + 2)`` over its appearances (``discount="log2"``, position 0 = top, the
    same discount as nDCG), so that a first place counts 1 and a tenth place about 0.29. The log2
    discount is the one attention model of this library (:func:`position_weights`): how likely a
    member is to look at a place, as in Singh & Joachims (KDD 2018) and Biega et al. (SIGIR
    2018). A creator's exposure is the sum over the items whose primary creator they are. Items
    whose creator index is ``-1`` (the ``unattributed`` placeholder) are left out of every
    creator metric, numerators and denominators alike.

Across members and creators
    :func:`convergence` says how alike members' lists are (mean :func:`jaccard` over member
    pairs); :func:`relation_kept` and :func:`audience_kept` say whether lists keep members with
    the creators they engaged with before (``history``) or bring creators new to them.

No function loops over members in Python: lists are turned into sparse member x item indicator
matrices or masked ``(m, k)`` arrays.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal, NamedTuple

import numpy as np
import numpy.typing as npt
import scipy.sparse
from scipy.sparse import csr_matrix

from ranking.datasets import AI_GENERATED

__all__ = [
    "AudienceKept",
    "Churn",
    "Discount",
    "audience_kept",
    "average_popularity",
    "calibration",
    "churn",
    "convergence",
    "creator_coverage",
    "creator_exposure",
    "creator_exposure_share",
    "creator_gini",
    "creator_totals",
    "exposure",
    "exposure_share",
    "gini",
    "head_creators",
    "intra_list_diversity",
    "item_coverage",
    "item_gini",
    "jaccard",
    "long_tail_creator_share",
    "member_pairs",
    "ndcg_at_k",
    "new_creator_share",
    "new_creators",
    "novelty",
    "position_weights",
    "precision_at_k",
    "provenance_share",
    "recall_at_k",
    "relation_kept",
    "relation_kept_share",
    "summarize",
]

Discount = Literal["none", "log2"]
"""How an appearance counts towards exposure: ``"none"`` = 1, ``"log2"`` = ``1/log2(pos + 2)``."""

FloatArray = npt.NDArray[np.float64]


# --------------------------------------------------------------------------------------------
# Helpers


def _recs(recs: npt.ArrayLike, n_items: int | None = None) -> npt.NDArray[np.int64]:
    array = np.asarray(recs)
    if array.ndim != 2:
        raise ValueError(f"recs must be two-dimensional (members x k), got shape {array.shape}")
    if array.size and array.dtype.kind not in "iu":
        raise TypeError(f"recs must hold integer item indices, got dtype {array.dtype}")
    array = array.astype(np.int64, copy=False)
    if array.size and int(array.min()) < -1:
        raise ValueError("recs must hold item indices >= 0, or -1 for padding")
    if n_items is not None and array.size and int(array.max()) >= n_items:
        raise IndexError(f"recs holds item index {int(array.max())}, but n_items is {n_items}")
    return array


def _csr(matrix: object, name: str, rows: int) -> csr_matrix:
    if not scipy.sparse.issparse(matrix):
        raise TypeError(f"{name} must be a scipy sparse matrix, got {type(matrix).__name__}")
    result = csr_matrix(matrix)
    if result.shape[0] != rows:
        raise ValueError(f"{name} has {result.shape[0]} rows, recs has {rows}")
    return result


def position_weights(
    n: int, discount: Discount = "log2", *, depth: int | None = None
) -> FloatArray:
    """How much a place in a feed counts, by position: the attention model of every metric.

    Parameters
    ----------
    n : int
        Number of places (feed length).
    discount : {"none", "log2"}, default "log2"
        ``"none"``: every place counts 1. ``"log2"``: place ``p`` (0 = top) counts
        ``1 / log2(p + 2)``, the nDCG discount: 1 for the first place, 0.63 for the second,
        about 0.29 for the tenth and 0.18 for the fiftieth.
    depth : int, optional
        Places from ``depth`` on count 0 (what apps do not show); ``None`` keeps every place.

    Returns
    -------
    numpy.ndarray of float64, shape (n,)
    """
    if discount == "none":
        weights = np.ones(n, dtype=np.float64)
    elif discount == "log2":
        weights = 1.0 / np.log2(np.arange(n, dtype=np.float64) + 2.0)
    else:
        raise ValueError(f"unknown discount {discount!r}; expected 'none' or 'log2'")
    if depth is not None:
        if depth < 1:
            raise ValueError(f"depth must be >= 1, got {depth}")
        weights[depth:] = 0.0
    return weights


def _indicator(recs: npt.NDArray[np.int64], n_items: int) -> csr_matrix:
    """Member x item matrix counting each member's recommended items (padding dropped)."""
    valid = recs >= 0
    rows = np.nonzero(valid)[0]
    return csr_matrix(
        (np.ones(rows.size, dtype=np.float64), (rows, recs[valid])),
        shape=(recs.shape[0], n_items),
    )


def _hits(recs: npt.NDArray[np.int64], truth: csr_matrix) -> npt.NDArray[np.bool_]:
    """``(m, k)`` bool: whether each recommended slot is in the member's truth row."""
    n_items = max(int(truth.shape[1]), int(recs.max(initial=-1)) + 1)
    truth = truth.copy()
    truth.sum_duplicates()
    truth.eliminate_zeros()
    truth_rows = np.repeat(np.arange(truth.shape[0], dtype=np.int64), np.diff(truth.indptr))
    truth_keys = truth_rows * n_items + truth.indices.astype(np.int64)
    rec_keys = np.arange(recs.shape[0], dtype=np.int64)[:, None] * n_items + recs
    return (recs >= 0) & np.isin(rec_keys, truth_keys)


def _masked_mean(values: FloatArray, valid: npt.NDArray[np.bool_]) -> FloatArray:
    """Row means of ``values`` over ``valid`` slots; ``NaN`` for rows with no valid slot."""
    count = valid.sum(axis=1)
    total = np.where(valid, values, 0.0).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def summarize(values: npt.ArrayLike) -> dict[str, float | int | None]:
    """Mean of a per-member metric over the members for whom it is defined.

    Parameters
    ----------
    values : array_like of float, shape (m,)
        Per-member values, ``NaN`` where undefined.

    Returns
    -------
    dict
        ``{"mean": float or None, "n": int, "n_excluded": int}``: the mean over the finite
        values (``None`` if there are none), how many members it averages, and how many were
        left out because their value is ``NaN``.
    """
    array = np.asarray(values, dtype=np.float64)
    defined = np.isfinite(array)
    n = int(defined.sum())
    return {
        "mean": float(array[defined].mean()) if n else None,
        "n": n,
        "n_excluded": int(array.size - n),
    }


# --------------------------------------------------------------------------------------------
# Consumer metrics (per member)


def precision_at_k(recs: npt.ArrayLike, truth: csr_matrix) -> FloatArray:
    """Precision@k: the share of the ``k`` list slots that hold a held-out item.

    Parameters
    ----------
    recs : array_like of int, shape (m, k)
        Recommended item indices, ``-1`` padded. ``k`` is the number of columns.
    truth : scipy.sparse.csr_matrix, shape (m, n_items)
        Held-out relevant items per member.

    Returns
    -------
    numpy.ndarray of float64, shape (m,)
        ``hits / k``; padding slots count as misses (the denominator is always ``k``). ``NaN``
        for members with no held-out item, and when ``k == 0``.
    """
    array = _recs(recs)
    truth = _csr(truth, "truth", array.shape[0])
    hits = _hits(array, truth).sum(axis=1).astype(np.float64)
    has_truth = truth.getnnz(axis=1) > 0
    k = array.shape[1]
    return np.where(has_truth & (k > 0), hits / max(k, 1), np.nan)


def recall_at_k(recs: npt.ArrayLike, truth: csr_matrix) -> FloatArray:
    """Recall@k: the share of a member's held-out items that made their list.

    Parameters
    ----------
    recs : array_like of int, shape (m, k)
        Recommended item indices, ``-1`` padded.
    truth : scipy.sparse.csr_matrix, shape (m, n_items)
        Held-out relevant items per member.

    Returns
    -------
    numpy.ndarray of float64, shape (m,)
        ``hits / |truth|`` (not ``min(k, |truth|)``: a member with more than ``k`` held-out
        items cannot reach 1). ``NaN`` for members with no held-out item.
    """
    array = _recs(recs)
    truth = _csr(truth, "truth", array.shape[0])
    hits = _hits(array, truth).sum(axis=1).astype(np.float64)
    size = truth.getnnz(axis=1).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(size > 0, hits / np.maximum(size, 1.0), np.nan)


def ndcg_at_k(recs: npt.ArrayLike, truth: csr_matrix) -> FloatArray:
    """Normalised discounted cumulative gain at k, with binary relevance.

    ``DCG = sum over hit positions p (0-based) of 1 / log2(p + 2)``; the ideal DCG puts
    ``min(k, |truth|)`` hits at the top: ``IDCG = sum_{p < min(k, |truth|)} 1 / log2(p + 2)``.

    Parameters
    ----------
    recs : array_like of int, shape (m, k)
        Recommended item indices, ``-1`` padded.
    truth : scipy.sparse.csr_matrix, shape (m, n_items)
        Held-out relevant items per member.

    Returns
    -------
    numpy.ndarray of float64, shape (m,)
        ``DCG / IDCG`` in ``[0, 1]``; ``NaN`` for members with no held-out item, and when
        ``k == 0``.
    """
    array = _recs(recs)
    truth = _csr(truth, "truth", array.shape[0])
    k = array.shape[1]
    discount = position_weights(k, "log2")
    dcg = (_hits(array, truth) * discount).sum(axis=1)
    ideal_cumulative = np.concatenate([[0.0], np.cumsum(discount)])
    size = truth.getnnz(axis=1)
    idcg = ideal_cumulative[np.minimum(size, k)]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(idcg > 0, dcg / np.where(idcg > 0, idcg, 1.0), np.nan)


def intra_list_diversity(
    recs: npt.ArrayLike, item_vectors: npt.ArrayLike | scipy.sparse.spmatrix
) -> FloatArray:
    """Intra-list diversity: mean pairwise cosine distance ``1 - cos`` within each list.

    Computed without forming the pairs: with unit vectors ``x_i``, the sum of cosine
    similarities over ordered pairs ``i != j`` is ``||sum_i x_i||^2 - sum_i ||x_i||^2``, and
    ``ILD = 1 - that / (n (n - 1))`` for a list of ``n`` items.

    Parameters
    ----------
    recs : array_like of int, shape (m, k)
        Recommended item indices, ``-1`` padded.
    item_vectors : array_like or sparse matrix, shape (n_items, d)
        One vector per item, e.g. the binary item x tag matrix or ALS item factors. An item
        with a zero vector (no tags) has similarity 0 to everything, i.e. distance 1.

    Returns
    -------
    numpy.ndarray of float64, shape (m,)
        In ``[0, 2]`` (``[0, 1]`` for non-negative vectors such as tags); ``NaN`` for lists with
        fewer than two items.
    """
    vectors: csr_matrix | FloatArray
    if scipy.sparse.issparse(item_vectors):
        vectors = csr_matrix(item_vectors, dtype=np.float64)
        norms = np.sqrt(np.asarray(vectors.multiply(vectors).sum(axis=1)).ravel())
        scale = np.divide(1.0, norms, out=np.zeros_like(norms), where=norms > 0)
        vectors = csr_matrix(scipy.sparse.diags(scale) @ vectors)
    else:
        dense = np.asarray(item_vectors, dtype=np.float64)
        if dense.ndim != 2:
            raise ValueError(f"item_vectors must be two-dimensional, got shape {dense.shape}")
        norms = np.linalg.norm(dense, axis=1)
        scale = np.divide(1.0, norms, out=np.zeros_like(norms), where=norms > 0)
        vectors = dense * scale[:, None]
    n_items = int(vectors.shape[0])
    array = _recs(recs, n_items)
    indicator = _indicator(array, n_items)
    summed = indicator @ vectors
    summed_dense = summed.toarray() if scipy.sparse.issparse(summed) else np.asarray(summed)
    unit = (norms > 0).astype(np.float64)
    self_similarity = indicator @ unit
    pair_similarity = np.square(summed_dense).sum(axis=1) - self_similarity
    n = (array >= 0).sum(axis=1).astype(np.float64)
    pairs = n * (n - 1.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n >= 2, 1.0 - pair_similarity / np.maximum(pairs, 1.0), np.nan)


def novelty(recs: npt.ArrayLike, item_popularity: npt.ArrayLike, n_members: int) -> FloatArray:
    """Mean self-information of the recommended items, in bits.

    An item's self-information is ``-log2(p)`` with ``p = popularity / n_members``, the share of
    (training) members who interacted with it (Zhou et al. 2010). Items with popularity 0 are
    counted as if one member had interacted with them, so the value stays finite.

    Parameters
    ----------
    recs : array_like of int, shape (m, k)
        Recommended item indices, ``-1`` padded.
    item_popularity : array_like of int or float, shape (n_items,)
        Number of distinct training members who interacted with each item.
    n_members : int
        Number of training members (``>= 1``).

    Returns
    -------
    numpy.ndarray of float64, shape (m,)
        Mean over the list's items; ``NaN`` for empty lists.
    """
    popularity = np.asarray(item_popularity, dtype=np.float64)
    if n_members < 1:
        raise ValueError(f"n_members must be >= 1, got {n_members}")
    array = _recs(recs, popularity.size)
    information = -np.log2(np.maximum(popularity, 1.0) / float(n_members))
    valid = array >= 0
    return _masked_mean(information[np.where(valid, array, 0)], valid)


def average_popularity(recs: npt.ArrayLike, item_popularity: npt.ArrayLike) -> FloatArray:
    """Average recommendation popularity (ARP): mean popularity of each list's items.

    Parameters
    ----------
    recs : array_like of int, shape (m, k)
        Recommended item indices, ``-1`` padded.
    item_popularity : array_like, shape (n_items,)
        Popularity of each item (e.g. distinct training members who interacted with it).

    Returns
    -------
    numpy.ndarray of float64, shape (m,)
        ``NaN`` for empty lists.
    """
    popularity = np.asarray(item_popularity, dtype=np.float64)
    array = _recs(recs, popularity.size)
    valid = array >= 0
    return _masked_mean(popularity[np.where(valid, array, 0)], valid)


def _tag_distribution(indicator: csr_matrix, item_tags: csr_matrix) -> FloatArray:
    """Rows: each member's tag distribution (each item's tags share its unit mass)."""
    per_item = np.asarray(item_tags.sum(axis=1), dtype=np.float64).ravel()
    scale = np.divide(1.0, per_item, out=np.zeros_like(per_item), where=per_item > 0)
    normalised = csr_matrix(scipy.sparse.diags(scale) @ item_tags)
    mass = np.asarray((indicator @ normalised).todense(), dtype=np.float64)
    total = mass.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, mass / np.where(total > 0, total, 1.0), np.nan)


def calibration(
    recs: npt.ArrayLike,
    history: csr_matrix,
    item_tags: csr_matrix,
    *,
    method: Literal["kl", "hellinger"] = "kl",
    smoothing: float = 0.01,
) -> FloatArray:
    """Miscalibration: how far each list's tag mix is from the member's history (Steck 2018).

    A set of items has the tag distribution ``p(t) = mean over its items of p(t | item)``, where
    an item's ``p(t | item)`` spreads its unit mass evenly over its tags (items without tags are
    skipped). ``p`` is that of the member's history, ``q`` that of their list.

    Parameters
    ----------
    recs : array_like of int, shape (m, k)
        Recommended item indices, ``-1`` padded.
    history : scipy.sparse.csr_matrix, shape (m, n_items)
        The member's training items (any non-zero counts once).
    item_tags : scipy.sparse.csr_matrix, shape (n_items, n_tags)
        Item x tag indicator.
    method : {"kl", "hellinger"}, default "kl"
        ``"kl"``: ``KL(p || q~) = sum_t p(t) ln(p(t) / q~(t))`` in **nats**, with
        ``q~ = (1 - smoothing) q + smoothing p`` as in Steck (2018) so it stays finite;
        ``0`` is perfectly calibrated, larger is worse. ``"hellinger"``:
        ``sqrt(1 - sum_t sqrt(p(t) q(t)))``, symmetric and in ``[0, 1]``.
    smoothing : float, default 0.01
        ``alpha`` of the KL smoothing, in ``(0, 1]``; unused for Hellinger.

    Returns
    -------
    numpy.ndarray of float64, shape (m,)
        ``NaN`` where the history or the list has no tagged item.
    """
    tags = csr_matrix(item_tags, dtype=np.float64)
    n_items = int(tags.shape[0])
    array = _recs(recs, n_items)
    seen = _csr(history, "history", array.shape[0])
    if seen.shape[1] != n_items:
        raise ValueError(f"history has {seen.shape[1]} columns, item_tags has {n_items} rows")
    seen = csr_matrix(seen, dtype=np.float64, copy=True)
    seen.eliminate_zeros()
    seen.data[:] = 1.0
    p = _tag_distribution(seen, tags)
    q = _tag_distribution(_indicator(array, n_items), tags)
    defined = ~np.isnan(p[:, 0]) & ~np.isnan(q[:, 0]) if p.shape[1] else np.zeros(p.shape[0], bool)
    p = np.nan_to_num(p)
    q = np.nan_to_num(q)
    if method == "kl":
        if not 0.0 < smoothing <= 1.0:
            raise ValueError(f"smoothing must lie in (0, 1], got {smoothing}")
        q_smooth = (1.0 - smoothing) * q + smoothing * p
        with np.errstate(invalid="ignore", divide="ignore"):
            terms = np.where(p > 0, p * np.log(p / np.where(q_smooth > 0, q_smooth, 1.0)), 0.0)
        value = terms.sum(axis=1)
    elif method == "hellinger":
        value = np.sqrt(np.maximum(1.0 - np.sqrt(p * q).sum(axis=1), 0.0))
    else:
        raise ValueError(f"unknown method {method!r}; expected 'kl' or 'hellinger'")
    return np.where(defined, value, np.nan)


# --------------------------------------------------------------------------------------------
# Producer metrics (over the whole batch)


def exposure(recs: npt.ArrayLike, n_items: int, *, discount: Discount = "none") -> FloatArray:
    """Exposure of every item: its appearances across all lists, optionally position-discounted.

    Parameters
    ----------
    recs : array_like of int, shape (m, k)
        Recommended item indices, ``-1`` padded.
    n_items : int
        Catalogue size.
    discount : {"none", "log2"}, default "none"
        ``"none"``: each appearance counts 1. ``"log2"``: an appearance at position ``p``
        (0 = top) counts ``1 / log2(p + 2)``.

    Returns
    -------
    numpy.ndarray of float64, shape (n_items,)
    """
    array = _recs(recs, n_items)
    weight = np.broadcast_to(position_weights(array.shape[1], discount), array.shape)
    valid = array >= 0
    return np.bincount(array[valid], weights=weight[valid], minlength=n_items).astype(np.float64)


def creator_exposure(
    recs: npt.ArrayLike,
    item_creator: npt.ArrayLike,
    n_creators: int,
    *,
    discount: Discount = "none",
) -> FloatArray:
    """Exposure of every creator: the summed exposure of the items they are primary creator of.

    Parameters
    ----------
    recs : array_like of int, shape (m, k)
        Recommended item indices, ``-1`` padded.
    item_creator : array_like of int, shape (n_items,)
        Creator index of each item; ``-1`` (placeholder / none) is left out.
    n_creators : int
        Number of creators.
    discount : {"none", "log2"}, default "none"
        See :func:`exposure`.

    Returns
    -------
    numpy.ndarray of float64, shape (n_creators,)
    """
    owner = np.asarray(item_creator, dtype=np.int64)
    return creator_totals(exposure(recs, owner.size, discount=discount), owner, n_creators)


def creator_totals(
    item_values: npt.ArrayLike, item_creator: npt.ArrayLike, n_creators: int
) -> FloatArray:
    """Sum a per-item value (e.g. :func:`exposure`) over each creator's items.

    Parameters
    ----------
    item_values : array_like of float, shape (n_items,)
    item_creator : array_like of int, shape (n_items,)
        Creator index of each item; ``-1`` items are left out.
    n_creators : int

    Returns
    -------
    numpy.ndarray of float64, shape (n_creators,)
    """
    values = np.asarray(item_values, dtype=np.float64)
    owner = np.asarray(item_creator, dtype=np.int64)
    owned = owner >= 0
    return np.bincount(owner[owned], weights=values[owned], minlength=n_creators).astype(np.float64)


def exposure_share(values: npt.ArrayLike, mask: npt.ArrayLike) -> float:
    """Share of the total of ``values`` (exposure per item or per creator) held by ``mask``.

    Returns
    -------
    float
        In ``[0, 1]`` for non-negative values; ``NaN`` if the values sum to 0.
    """
    array = np.asarray(values, dtype=np.float64)
    total = float(array.sum())
    return float(array[np.asarray(mask, dtype=bool)].sum() / total) if total > 0 else math.nan


def gini(values: npt.ArrayLike) -> float:
    """Gini coefficient of non-negative values (0 = perfectly equal).

    ``G = sum_i (2 i - n - 1) x_(i) / (n sum_i x_i)`` over the values sorted ascending
    (``i = 1 .. n``). Equal values give 0; all mass on one of ``n`` values gives ``(n - 1) / n``.

    Parameters
    ----------
    values : array_like of float, shape (n,)
        E.g. :func:`exposure` over the whole catalogue, zeros included.

    Returns
    -------
    float
        ``NaN`` if there are no values or they sum to 0.

    Raises
    ------
    ValueError
        If a value is negative.
    """
    array = np.sort(np.asarray(values, dtype=np.float64).ravel())
    if array.size and float(array[0]) < 0:
        raise ValueError("gini needs non-negative values")
    total = float(array.sum())
    if array.size == 0 or total <= 0:
        return math.nan
    n = array.size
    rank = np.arange(1, n + 1, dtype=np.float64)
    return float(((2.0 * rank - n - 1.0) * array).sum() / (n * total))


def item_gini(recs: npt.ArrayLike, n_items: int, *, discount: Discount = "none") -> float:
    """Gini coefficient of item exposure over the whole catalogue (never-shown items count 0).

    See :func:`exposure` and :func:`gini`.
    """
    return gini(exposure(recs, n_items, discount=discount))


def creator_gini(
    recs: npt.ArrayLike,
    item_creator: npt.ArrayLike,
    n_creators: int,
    *,
    discount: Discount = "none",
) -> float:
    """Gini coefficient of creator exposure over all ``n_creators`` (placeholder left out).

    See :func:`creator_exposure` and :func:`gini`.
    """
    return gini(creator_exposure(recs, item_creator, n_creators, discount=discount))


def item_coverage(recs: npt.ArrayLike, n_items: int) -> float:
    """Share of the ``n_items`` catalogue recommended to at least one member."""
    array = _recs(recs, n_items)
    if n_items <= 0:
        return math.nan
    return float(np.unique(array[array >= 0]).size / n_items)


def creator_coverage(recs: npt.ArrayLike, item_creator: npt.ArrayLike, n_creators: int) -> float:
    """Share of the ``n_creators`` creators with at least one item recommended to someone.

    Items of the placeholder creator (``-1``) do not count.
    """
    owner = np.asarray(item_creator, dtype=np.int64)
    array = _recs(recs, owner.size)
    if n_creators <= 0:
        return math.nan
    shown = owner[np.unique(array[array >= 0])]
    return float(np.unique(shown[shown >= 0]).size / n_creators)


def head_creators(
    creator_counts: npt.ArrayLike, *, head_fraction: float = 0.2
) -> npt.NDArray[np.bool_]:
    """The "head": the top ``ceil(head_fraction * n_creators)`` creators by interaction count.

    Parameters
    ----------
    creator_counts : array_like, shape (n_creators,)
        Training interactions with each creator's items.
    head_fraction : float, default 0.2
        Share of creators in the head, in ``[0, 1]``.

    Returns
    -------
    numpy.ndarray of bool, shape (n_creators,)
        ``True`` for head creators. Ties at the boundary go to the lower creator index, so the
        head has exactly ``ceil(head_fraction * n_creators)`` members.
    """
    counts = np.asarray(creator_counts, dtype=np.float64)
    if not 0.0 <= head_fraction <= 1.0:
        raise ValueError(f"head_fraction must lie in [0, 1], got {head_fraction}")
    size = math.ceil(head_fraction * counts.size - 1e-9)
    order = np.argsort(-counts, kind="stable")
    head = np.zeros(counts.size, dtype=bool)
    head[order[:size]] = True
    return head


def creator_exposure_share(
    recs: npt.ArrayLike,
    item_creator: npt.ArrayLike,
    creator_mask: npt.ArrayLike,
    *,
    discount: Discount = "none",
) -> float:
    """Share of the exposure of attributed items that goes to the creators in ``creator_mask``.

    Parameters
    ----------
    recs : array_like of int, shape (m, k)
        Recommended item indices, ``-1`` padded.
    item_creator : array_like of int, shape (n_items,)
        Creator index of each item; ``-1`` items are left out of numerator and denominator.
    creator_mask : array_like of bool, shape (n_creators,)
        The group of creators.
    discount : {"none", "log2"}, default "none"
        See :func:`exposure`.

    Returns
    -------
    float
        In ``[0, 1]``; ``NaN`` if no attributed item was recommended.
    """
    mask = np.asarray(creator_mask, dtype=bool)
    return exposure_share(creator_exposure(recs, item_creator, mask.size, discount=discount), mask)


def long_tail_creator_share(
    recs: npt.ArrayLike,
    item_creator: npt.ArrayLike,
    creator_counts: npt.ArrayLike,
    *,
    head_fraction: float = 0.2,
    discount: Discount = "none",
) -> float:
    """Share of (attributed) exposure going to long-tail creators.

    The long tail is every creator outside :func:`head_creators` (the top ``head_fraction`` of
    creators by training interactions). See :func:`creator_exposure_share`.
    """
    tail = ~head_creators(creator_counts, head_fraction=head_fraction)
    return creator_exposure_share(recs, item_creator, tail, discount=discount)


def new_creator_share(
    recs: npt.ArrayLike,
    item_creator: npt.ArrayLike,
    creator_first_published: npt.ArrayLike,
    *,
    since: float,
    discount: Discount = "none",
) -> float:
    """Share of (attributed) exposure going to new creators.

    A creator is *new* if their first item was published at or after ``since`` (unix seconds);
    creators with an unknown first publication (``NaN``) are not new. See
    :func:`creator_exposure_share`.
    """
    new = new_creators(creator_first_published, since=since)
    return creator_exposure_share(recs, item_creator, new, discount=discount)


def new_creators(creator_first_published: npt.ArrayLike, *, since: float) -> npt.NDArray[np.bool_]:
    """Which creators are *new*: first item published at or after ``since`` (unix seconds).

    A creator whose first publication is unknown (``NaN``) is not new.
    """
    first = np.asarray(creator_first_published, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        return first >= since


def provenance_share(
    recs: npt.ArrayLike,
    item_provenance: npt.ArrayLike,
    *,
    codes: Sequence[int] = (AI_GENERATED,),
    discount: Discount = "none",
) -> float:
    """Share of all exposure going to items whose provenance code is in ``codes``.

    Parameters
    ----------
    recs : array_like of int, shape (m, k)
        Recommended item indices, ``-1`` padded.
    item_provenance : array_like of int, shape (n_items,)
        Provenance code per item (see :data:`ranking.datasets.PROVENANCES`).
    codes : sequence of int, default ``(AI_GENERATED,)``
        The provenance codes counted; the default gives the AI-generated share.
    discount : {"none", "log2"}, default "none"
        See :func:`exposure`.

    Returns
    -------
    float
        ``NaN`` if nothing was recommended.
    """
    provenance = np.asarray(item_provenance, dtype=np.int64)
    per_item = exposure(recs, provenance.size, discount=discount)
    return exposure_share(per_item, np.isin(provenance, np.asarray(list(codes), dtype=np.int64)))


class Churn(NamedTuple):
    """Result of :func:`churn`."""

    per_member: FloatArray
    """float64 ``(m,)``: ``1 - |A ∩ B| / k`` per member."""
    mean: float
    """Mean of :attr:`per_member` (``NaN`` for no members)."""


def churn(recs_a: npt.ArrayLike, recs_b: npt.ArrayLike) -> Churn:
    """How much each member's list changes between two rankings (order ignored).

    Parameters
    ----------
    recs_a, recs_b : array_like of int, shape (m, k)
        Two rankings of the same members in the same row order, ``-1`` padded.

    Returns
    -------
    Churn
        ``per_member = 1 - |A ∩ B| / k`` with ``k`` the number of columns (padding is never
        shared, so two identical lists of fewer than ``k`` items still churn), and its mean.
        ``0`` = same items, ``1`` = nothing in common.
    """
    a = _recs(recs_a)
    b = _recs(recs_b)
    if a.shape != b.shape:
        raise ValueError(f"recs_a and recs_b differ in shape: {a.shape} != {b.shape}")
    m, k = a.shape
    if k == 0:
        per_member = np.full(m, np.nan)
    else:
        width = int(max(a.max(initial=-1), b.max(initial=-1))) + 1
        row = np.arange(m, dtype=np.int64)[:, None] * width
        shared = (a >= 0) & np.isin(row + a, (row + b)[b >= 0])
        per_member = 1.0 - shared.sum(axis=1) / float(k)
    mean = float(per_member.mean()) if m and k else math.nan
    return Churn(per_member=per_member.astype(np.float64), mean=mean)


# --------------------------------------------------------------------------------------------
# Convergence and the creator-audience relation


def jaccard(recs_a: npt.ArrayLike, recs_b: npt.ArrayLike) -> FloatArray:
    """Row by row, how alike two sets of lists are: Jaccard, the items both lists hold over
    the items either holds (order ignored).

    Parameters
    ----------
    recs_a, recs_b : array_like of int, shape (m, k)
        Lists paired row by row (e.g. two members' feeds), ``-1`` padded.

    Returns
    -------
    numpy.ndarray of float64, shape (m,)
        ``1`` for lists with the same items, ``0`` for lists with none in common; ``NaN``
        where both lists are empty.
    """
    a = _recs(recs_a)
    b = _recs(recs_b)
    if a.shape != b.shape:
        raise ValueError(f"recs_a and recs_b differ in shape: {a.shape} != {b.shape}")
    m = a.shape[0]
    width = int(max(a.max(initial=-1), b.max(initial=-1))) + 1
    row = np.arange(m, dtype=np.int64)[:, None] * max(width, 1)
    shared = ((a >= 0) & np.isin(row + a, (row + b)[b >= 0])).sum(axis=1).astype(np.float64)
    union = (a >= 0).sum(axis=1) + (b >= 0).sum(axis=1) - shared
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, shared / np.maximum(union, 1.0), np.nan)


def member_pairs(
    n: int, pairs: int, *, seed: int = 0
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """A seeded sample of ``pairs`` distinct pairs ``(i, j)``, ``i < j``, of ``n`` rows.

    Every pair when there are at most ``pairs`` of them (``n (n - 1) / 2``); otherwise
    ``pairs`` drawn uniformly without replacement with ``numpy.random.default_rng(seed)``.

    Returns
    -------
    (numpy.ndarray, numpy.ndarray) of int64
        The first and the second row of each pair.
    """
    if pairs < 1:
        raise ValueError(f"pairs must be >= 1, got {pairs}")
    total = n * (n - 1) // 2
    if total <= pairs:
        first, second = np.triu_indices(n, k=1)
        return first.astype(np.int64), second.astype(np.int64)
    chosen = np.sort(np.random.default_rng(seed).choice(total, size=pairs, replace=False))
    # Row i holds the pairs (i, i + 1 .. n - 1): n - 1 - i of them, from starts[i] on.
    starts = np.concatenate([[0], np.cumsum(np.arange(n - 1, 0, -1, dtype=np.int64))])
    first = np.searchsorted(starts, chosen, side="right") - 1
    second = first + 1 + (chosen - starts[first])
    return first.astype(np.int64), second.astype(np.int64)


def convergence(recs: npt.ArrayLike, *, pairs: int = 2_000, seed: int = 0) -> float:
    """How alike members' lists are across members: the mean :func:`jaccard` of member pairs.

    Over every pair of non-empty lists when there are at most ``pairs`` pairs, else over a
    seeded sample of ``pairs`` of them (:func:`member_pairs`). ``1``: everyone gets the same
    items; ``0``: no two members share an item. Empty lists (padding only) are left out: a
    member without a feed has no page to be alike.

    Parameters
    ----------
    recs : array_like of int, shape (m, k)
        Recommended item indices, ``-1`` padded.
    pairs : int, default 2000
    seed : int, default 0

    Returns
    -------
    float
        ``NaN`` with fewer than two non-empty lists.
    """
    array = _recs(recs)
    array = array[(array >= 0).any(axis=1)]
    if array.shape[0] < 2:
        return math.nan
    first, second = member_pairs(array.shape[0], pairs, seed=seed)
    return float(jaccard(array[first], array[second]).mean())


def _creator_matrix(item_creator: npt.NDArray[np.int64], n_creators: int) -> csr_matrix:
    """Item x creator indicator of each item's primary creator (``-1`` items have none)."""
    owned = np.nonzero(item_creator >= 0)[0]
    return csr_matrix(
        (np.ones(owned.size, dtype=np.float64), (owned, item_creator[owned])),
        shape=(item_creator.size, n_creators),
    )


def _engaged(history: csr_matrix, creators: csr_matrix) -> csr_matrix:
    """Member x creator: 1 where the member has a history item by the creator."""
    seen = csr_matrix(history, dtype=np.float64, copy=True)
    seen.eliminate_zeros()
    seen.data[:] = 1.0
    engaged = csr_matrix(seen @ creators)
    engaged.sum_duplicates()
    engaged.eliminate_zeros()
    engaged.data[:] = 1.0
    return engaged


def relation_kept(
    recs: npt.ArrayLike, history: csr_matrix, item_creator: npt.ArrayLike, n_creators: int
) -> FloatArray:
    """Whether each entry's creator is one the member already engaged with.

    Parameters
    ----------
    recs : array_like of int, shape (m, k)
        Recommended item indices, ``-1`` padded.
    history : scipy.sparse.csr_matrix, shape (m, n_items)
        The member's earlier (positive) interactions; any non-zero counts.
    item_creator : array_like of int, shape (n_items,)
        Primary creator of each item; ``-1`` (none or the placeholder) is left out.
    n_creators : int

    Returns
    -------
    numpy.ndarray of float64, shape (m, k)
        ``1`` where the member has a history item by the entry's creator (the relation is
        kept), ``0`` where the creator is new to the member (discovery), ``NaN`` for padding
        and items without a creator. A member without history discovers every creator.
    """
    owner = np.asarray(item_creator, dtype=np.int64)
    array = _recs(recs, owner.size)
    seen = _csr(history, "history", array.shape[0])
    if seen.shape[1] != owner.size:
        raise ValueError(f"history has {seen.shape[1]} columns, item_creator {owner.size} items")
    engaged = _engaged(seen, _creator_matrix(owner, n_creators))
    rows = np.repeat(np.arange(engaged.shape[0], dtype=np.int64), np.diff(engaged.indptr))
    known_keys = rows * n_creators + engaged.indices.astype(np.int64)
    creator = np.where(array >= 0, owner[np.maximum(array, 0)], -1)
    keys = np.arange(array.shape[0], dtype=np.int64)[:, None] * n_creators + creator
    kept = np.isin(keys, known_keys).astype(np.float64)
    return np.where(creator >= 0, kept, np.nan)


def relation_kept_share(
    recs: npt.ArrayLike,
    history: csr_matrix,
    item_creator: npt.ArrayLike,
    n_creators: int,
    *,
    discount: Discount = "none",
) -> float:
    """Share of the entries (with a known creator) whose creator the member already engaged
    with; ``1 -`` it is the discovery share.

    Pooled over every entry of every list, not averaged per member: a place counts 1
    (``discount="none"``) or its :func:`position_weights`. See :func:`relation_kept`.

    Returns
    -------
    float
        In ``[0, 1]``; ``NaN`` if no entry has a known creator.
    """
    kept = relation_kept(recs, history, item_creator, n_creators)
    weights = np.broadcast_to(position_weights(kept.shape[1], discount), kept.shape)
    known = np.isfinite(kept)
    total = float(weights[known].sum())
    return float((weights[known] * kept[known]).sum() / total) if total > 0 else math.nan


class AudienceKept(NamedTuple):
    """Result of :func:`audience_kept`: per creator, their earlier audience and how much of it
    the lists reach."""

    audience: FloatArray
    """float64 ``(n_creators,)``: members with a history item by the creator."""
    kept: FloatArray
    """float64 ``(n_creators,)``: of those, the members whose list holds an item by them."""

    @property
    def share(self) -> FloatArray:
        """``kept / audience`` per creator; ``NaN`` for creators without an earlier audience."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(self.audience > 0, self.kept / np.maximum(self.audience, 1.0), np.nan)


def audience_kept(
    recs: npt.ArrayLike, history: csr_matrix, item_creator: npt.ArrayLike, n_creators: int
) -> AudienceKept:
    """Per creator: the members who engaged with them earlier, and how many the lists reach.

    A member *reaches* a creator's audience when their list holds at least one item whose
    primary creator it is. Counts add up over batches of members.

    Parameters
    ----------
    recs : array_like of int, shape (m, k)
        Recommended item indices, ``-1`` padded.
    history : scipy.sparse.csr_matrix, shape (m, n_items)
        The members' earlier (positive) interactions; any non-zero counts.
    item_creator : array_like of int, shape (n_items,)
        Primary creator of each item; ``-1`` items are left out.
    n_creators : int

    Returns
    -------
    AudienceKept
    """
    owner = np.asarray(item_creator, dtype=np.int64)
    array = _recs(recs, owner.size)
    seen = _csr(history, "history", array.shape[0])
    if seen.shape[1] != owner.size:
        raise ValueError(f"history has {seen.shape[1]} columns, item_creator {owner.size} items")
    creators = _creator_matrix(owner, n_creators)
    engaged = _engaged(seen, creators)
    reached = engaged.multiply(_engaged(_indicator(array, owner.size), creators)).tocsr()
    reached.eliminate_zeros()
    return AudienceKept(
        audience=np.bincount(engaged.indices, minlength=n_creators).astype(np.float64),
        kept=np.bincount(reached.indices, minlength=n_creators).astype(np.float64),
    )
