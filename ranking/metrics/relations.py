"""Across members and creators: :func:`convergence` (how alike members' lists are) and whether
lists keep members with the creators they engaged with before (:func:`relation_kept`,
:func:`audience_kept`)."""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import numpy.typing as npt
from scipy.sparse import csr_matrix

from ranking.metrics.common import (
    Discount,
    FloatArray,
    _csr,
    _indicator,
    _recs,
    position_weights,
)


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
