"""Consumer metrics: one float64 value per member, ``NaN`` where undefined."""

from __future__ import annotations

from typing import Literal

import numpy as np
import numpy.typing as npt
import scipy.sparse
from scipy.sparse import csr_matrix

from ranking.metrics.common import (
    FloatArray,
    _csr,
    _hits,
    _indicator,
    _masked_mean,
    _recs,
    position_weights,
)


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
