"""Step by step, :func:`apply_policy`: hard refusals, score adjustments, then the greedy
selection of :mod:`ranking.effects.greedy`, in blocks of members."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy.sparse import csr_matrix

from ranking.effects.catalogue import (
    BoolArray,
    Catalogue,
    Float32Array,
    Int64Array,
)
from ranking.effects.greedy import (
    _descending,
    _first_occurrences,
    _greedy,
    _normalise,
    _rank_capped,
)
from ranking.policy import (
    PROVENANCE_CLASSES,
    CapShare,
    Downrank,
    Exclude,
    Label,
    RankingParams,
)
from ranking.reasons import LABEL_BY_PROVENANCE, Reason

_BLOCK = 1024
"""Members processed together: bounds the ``O(block x pool)`` memory, and keeps each block's
arrays (about 1.6 MB per int64 array for a pool of 200) near the cache."""

_SHORTCUTS = True
"""Use the loop-free equivalent of the greedy selection for a single cap, and decide rows from
the best few candidates where that is exact. Tests switch it off to compare."""


@dataclass(frozen=True)
class RankedFeeds:
    """Feeds for a batch of members: row ``r`` is member ``r``'s feed, in feed order."""

    items: Int64Array
    """int64 ``[m, n]``: item indices; ``-1`` pads (only at the end of a row)."""
    scores: Float32Array
    """float32 ``[m, n]``: adjusted scores; ``-inf`` pads."""
    base_scores: Float32Array
    """float32 ``[m, n]``: the candidates' scores before adjustment; ``-inf`` pads."""
    reasons: npt.NDArray[np.int32]
    """int32 ``[m, n]``: :class:`~ranking.reasons.Reason` bitmask; 0 pads."""


def blocked_mask(blocked: csr_matrix, items: Int64Array) -> BoolArray:
    """Whether ``blocked[r, items[r, j]]`` is non-zero, for every ``(r, j)``, vectorised.

    Parameters
    ----------
    blocked : scipy.sparse.csr_matrix, shape (m, N)
        Row ``r``: the items member ``r`` must never see.
    items : numpy.ndarray of int64, shape (m, p)
        Item indices; entries outside ``[0, N)`` are never blocked.
    """
    m, n_items = blocked.shape
    if items.shape[0] != m:
        raise ValueError(f"member_blocked has {m} rows, candidates {items.shape[0]}")
    matrix = blocked if blocked.has_sorted_indices else blocked.sorted_indices()
    keys = np.repeat(np.arange(m, dtype=np.int64), np.diff(matrix.indptr)) * n_items
    keys += matrix.indices.astype(np.int64)
    keys = keys[matrix.data != 0]  # explicit zeros block nothing
    inside = (items >= 0) & (items < n_items)
    if keys.size == 0:
        return np.zeros(items.shape, dtype=bool)
    query = np.arange(m, dtype=np.int64)[:, None] * n_items + np.where(inside, items, 0)
    position = np.minimum(np.searchsorted(keys, query), keys.size - 1)
    hit: BoolArray = inside & (keys[position] == query)
    return hit


def apply_policy(
    candidate_items: npt.ArrayLike,
    candidate_scores: npt.ArrayLike,
    *,
    catalogue: Catalogue,
    params: RankingParams,
    n: int,
    member_blocked: csr_matrix | None = None,
    source: int | npt.ArrayLike = Reason.PERSONALISED,
    item_vectors: npt.ArrayLike | None = None,
) -> RankedFeeds:
    """Cut each member's candidate pool to a feed of ``n`` items under the ranking policy.

    Parameters
    ----------
    candidate_items : array_like of int64, shape (m, p)
        Candidate item indices (columns of ``catalogue``) per member, in any order; ``-1`` pads.
        A repeated item keeps its first occurrence.
    candidate_scores : array_like of float32, shape (m, p)
        Base score of each candidate (e.g. ALS); non-finite scores count as padding.
    catalogue : Catalogue
        Item attributes; ``catalogue.refused`` items never appear.
    params : RankingParams
        The policy's ``ranking`` section.
    n : int
        Feed length (``>= 0``).
    member_blocked : scipy.sparse.csr_matrix, shape (m, N), optional
        Row ``r``: items member ``r`` must never get (seen, muted); non-zero = blocked.
    source : int or array_like of int, shape (m,), default ``Reason.PERSONALISED``
        Source bit(s) set on every entry of a row.
    item_vectors : array_like of float, shape (N, d), optional
        Item embeddings for diversity (cosine similarity); required when ``params.diversity``
        is positive.

    Returns
    -------
    RankedFeeds
        Feeds of ``n`` items, padded at the end. Without creator cap, share caps, quotas and
        diversity, row ``r`` is the eligible candidates sorted by adjusted score (stable, so
        ties keep candidate order).

    Raises
    ------
    ValueError
        On mismatched shapes, item indices beyond the catalogue, ``n < 0`` or missing
        ``item_vectors`` with ``diversity > 0``.
    """
    items = np.asarray(candidate_items, dtype=np.int64)
    scores = np.asarray(candidate_scores, dtype=np.float32)
    if items.ndim != 2 or items.shape != scores.shape:
        raise ValueError(f"candidates must be 2-D and alike; got {items.shape}, {scores.shape}")
    n = int(n)
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if items.size and int(items.max()) >= catalogue.n_items:
        raise ValueError(f"candidate item {int(items.max())} is beyond the catalogue")
    m = items.shape[0]
    sources = np.broadcast_to(np.asarray(source, dtype=np.int32), (m,))
    vectors: Float32Array | None = None
    if params.diversity > 0:
        if item_vectors is None:
            raise ValueError("diversity > 0 needs item_vectors")
        raw = np.asarray(item_vectors, dtype=np.float32)
        norms = np.linalg.norm(raw, axis=1, keepdims=True)
        vectors = (raw / np.where(norms > 0, norms, 1.0)).astype(np.float32)
    blocked = None
    if member_blocked is not None:
        if member_blocked.shape != (m, catalogue.n_items):
            raise ValueError(
                f"member_blocked has shape {member_blocked.shape}, expected "
                f"{(m, catalogue.n_items)}"
            )
        blocked = csr_matrix(member_blocked)

    out_items = np.full((m, n), -1, dtype=np.int64)
    out_scores = np.full((m, n), -np.inf, dtype=np.float32)
    out_base = np.full((m, n), -np.inf, dtype=np.float32)
    out_reasons = np.zeros((m, n), dtype=np.int32)
    if m == 0 or n == 0 or items.shape[1] == 0 or catalogue.n_items == 0:
        return RankedFeeds(out_items, out_scores, out_base, out_reasons)
    tables = _ItemTables.build(catalogue, params, n)
    for begin in range(0, m, _BLOCK):
        rows = slice(begin, min(begin + _BLOCK, m))
        part = _apply_block(
            items[rows],
            scores[rows],
            tables=tables,
            catalogue=catalogue,
            params=params,
            n=n,
            blocked=None if blocked is None else blocked[rows],
            sources=sources[rows],
            vectors=vectors,
        )
        out_items[rows], out_scores[rows], out_base[rows], out_reasons[rows] = part
    return RankedFeeds(out_items, out_scores, out_base, out_reasons)


def _treatment_tables(
    params: RankingParams, n: int
) -> tuple[BoolArray, npt.NDArray[np.float64], Int64Array, npt.NDArray[np.int32]]:
    """Per provenance code: excluded, downrank factor, share limit (items) and label bits."""
    k = len(PROVENANCE_CLASSES)
    excluded = np.zeros(k, dtype=bool)
    factor = np.ones(k, dtype=np.float64)
    limit = np.full(k, n, dtype=np.int64)
    bits = np.zeros(k, dtype=np.int32)
    for code, name in enumerate(PROVENANCE_CLASSES):
        treatment = params.provenance.get(name)
        if isinstance(treatment, Exclude):
            excluded[code] = True
        elif isinstance(treatment, Label):
            bits[code] = int(LABEL_BY_PROVENANCE[code])
        elif isinstance(treatment, Downrank):
            factor[code] = treatment.factor
            if treatment.factor < 1.0:
                bits[code] = int(Reason.DOWNRANKED_PROVENANCE)
        elif isinstance(treatment, CapShare):
            limit[code] = math.floor(treatment.max_share * n + 1e-9)
    return excluded, factor, limit, bits


@dataclass(frozen=True)
class _ItemTables:
    """Everything :func:`_apply_block` looks up per item, resolved once per call.

    Each table has one extra entry at the end that index ``-1`` (padding, dropped candidates)
    reads, so a block gathers every attribute with a single lookup per candidate.
    """

    usable: BoolArray
    """Not refused for everyone and of a provenance class that is not excluded."""
    creator: Int64Array
    """Dense creator index, ``-1`` for none."""
    n_creators: int
    """Number of creators (one more than the largest index)."""
    provenance: Int64Array
    """Provenance code."""
    factor: npt.NDArray[np.float64] | None
    """Downrank factor of the item's class; ``None`` when every factor is 1."""
    decay: npt.NDArray[np.float64] | None
    """Freshness decay ``0.5 ** (age / half-life)`` (1 for unknown age); ``None`` when off."""
    penalty: npt.NDArray[np.float64] | None
    """``popularity_penalty * log1p(popularity) / max log1p(popularity)``; ``None`` when off."""
    bits: npt.NDArray[np.int32]
    """Reason bits the item carries wherever it is picked (labels, downranked, decayed,
    penalised)."""
    limit: Int64Array
    """Share cap of each provenance code, in items (``n`` where uncapped)."""
    adjusting: bool
    """Whether any score adjustment is on (else the adjusted score is the base score)."""

    @classmethod
    def build(cls, catalogue: Catalogue, params: RankingParams, n: int) -> _ItemTables:
        excluded, factor, limit, label_bits = _treatment_tables(params, n)
        provenance = catalogue.provenance.astype(np.int64)
        bits = label_bits[provenance]
        half_life = params.freshness_half_life_days
        penalty = params.popularity_penalty
        adjusting = penalty > 0 or half_life is not None or bool(np.any(factor < 1.0))
        factors = None
        if adjusting and bool(np.any(factor != 1.0)):
            factors = factor[provenance]
        decay = None
        if half_life is not None:
            age = np.maximum(catalogue.age_days.astype(np.float64), 0.0)
            decay = np.where(np.isnan(age), 1.0, 0.5 ** (np.nan_to_num(age) / half_life))
            bits = bits | np.where(decay < 1.0, int(Reason.FRESHNESS_DECAYED), 0).astype(np.int32)
        penalties = None
        if penalty > 0:
            pop = np.log1p(catalogue.popularity.astype(np.float64))
            peak = float(pop.max(initial=0.0))
            share = pop / peak if peak > 0 else np.zeros(pop.shape)
            penalties = penalty * share
            bits = bits | np.where(share > 0, int(Reason.POPULARITY_PENALISED), 0).astype(np.int32)

        def padded(values: Any, fill: object) -> Any:
            return np.append(values, np.array([fill], dtype=values.dtype))

        return cls(
            usable=padded(~catalogue.refused & ~excluded[provenance], False),
            creator=padded(catalogue.creator, -1),
            n_creators=int(catalogue.creator.max(initial=-1)) + 1,
            provenance=padded(provenance, 0),
            factor=None if factors is None else padded(factors, 1.0),
            decay=None if decay is None else padded(decay, 1.0),
            penalty=None if penalties is None else padded(penalties, 0.0),
            bits=padded(bits.astype(np.int32), 0),
            limit=limit,
            adjusting=adjusting,
        )


def _apply_block(
    items: Int64Array,
    scores: Float32Array,
    *,
    tables: _ItemTables,
    catalogue: Catalogue,
    params: RankingParams,
    n: int,
    blocked: csr_matrix | None,
    sources: npt.NDArray[np.int32],
    vectors: Float32Array | None,
) -> tuple[Int64Array, Float32Array, Float32Array, npt.NDArray[np.int32]]:
    m, width = items.shape
    limit = tables.limit
    row_start = np.arange(m, dtype=np.int64)[:, None] * width

    # 1. Hard refusals (and padding, and repeats). ``marked``: the item, or -1 once dropped.
    # Refusals and exclusions first: they drop every occurrence of an item, so repeats and
    # blocks among the rest come out the same. ("wrap" only keeps padding below -1 in bounds;
    # ``items >= 0`` masks it.)
    valid = (items >= 0) & np.isfinite(scores) & np.take(tables.usable, items, mode="wrap")
    marked = np.where(valid, items, -1)
    # Sorting int32 is several times faster than int64 (SIMD), and item indices fit.
    compact = np.int32 if catalogue.n_items < np.iinfo(np.int32).max else np.int64
    by_item = np.sort(marked.astype(compact), axis=1)
    repeated = (by_item[:, 1:] == by_item[:, :-1]) & (by_item[:, 1:] >= 0)
    with_repeats = np.flatnonzero(repeated.any(axis=1))
    if with_repeats.size:  # rare: candidate generators return distinct items
        valid[with_repeats] &= _first_occurrences(marked[with_repeats])
        marked[with_repeats] = np.where(valid[with_repeats], marked[with_repeats], -1)
    if blocked is not None and blocked.nnz:
        # Look the (few) blocked pairs up among the (many) candidates: ``by_item`` is sorted per
        # row, so with row offsets it is one sorted key space and one searchsorted finds every
        # hit; the (rare) hits are then located in their rows.
        stride = catalogue.n_items + 1
        candidate_keys = (np.arange(m, dtype=np.int64)[:, None] * stride + by_item + 1).ravel()
        nonzero = blocked.data != 0
        block_rows = np.repeat(np.arange(m, dtype=np.int64), np.diff(blocked.indptr))[nonzero]
        block_items = blocked.indices.astype(np.int64)[nonzero]
        block_keys = block_rows * stride + block_items + 1
        at = np.minimum(np.searchsorted(candidate_keys, block_keys), candidate_keys.size - 1)
        hit = candidate_keys[at] == block_keys
        if bool(hit.any()):
            hit_rows = block_rows[hit]
            which, column = np.nonzero(marked[hit_rows] == block_items[hit][:, None])
            valid[hit_rows[which], column] = False
            marked[hit_rows[which], column] = -1
    # Valid candidates have finite adjusted scores and invalid ones -inf, so once sorted every
    # row is its ``count`` valid candidates followed by the invalid ones.
    count = np.count_nonzero(valid, axis=1)

    # 2. Score adjustments.
    if tables.adjusting:
        unit = _normalise(scores, valid)
        if tables.factor is not None:
            unit *= np.take(tables.factor, marked)
        if tables.decay is not None:
            unit *= np.take(tables.decay, marked)
        if tables.penalty is not None:
            unit -= np.take(tables.penalty, marked)
        np.copyto(unit, -np.inf, where=~valid)
        adjusted = unit.astype(np.float32)
    else:
        adjusted = np.where(valid, scores, -np.inf).astype(np.float32)

    # Sort each row by adjusted score, best first (stable: ties keep candidate order).
    order = _descending(adjusted)
    capped = params.creator_cap is not None or bool(np.any(limit < n))
    quotas = params.long_tail_quota > 0 or params.new_creator_quota > 0
    k = min(n, width)
    if not (capped or quotas or vectors is not None):
        picks = np.full((m, n), -1, dtype=np.int64)
        ranks = np.arange(k)
        picks[:, :k] = np.where(ranks < count[:, None], ranks, -1)
        extra = np.zeros((m, n), dtype=np.int32)
    else:
        single_cap = (params.creator_cap is None) != (not bool(np.any(limit < n)))
        shortcut = _SHORTCUTS and single_cap and not quotas and vectors is None

        def select(
            who: Int64Array | slice, columns: int
        ) -> tuple[Int64Array, npt.NDArray[np.int32]]:
            head = order[who, :columns]
            starts = row_start if isinstance(who, slice) else who[:, None] * width
            flat = starts + head
            s_items = np.take(marked, flat)
            s_valid = s_items >= 0
            if shortcut:
                return _rank_capped(s_items, tables=tables, params=params, n=n)
            return _greedy(
                s_items,
                adjusted.ravel()[flat],
                s_valid,
                catalogue=catalogue,
                params=params,
                n=n,
                limit=limit,
                vectors=vectors,
            )

        # Without quotas and diversity each pick is the best candidate the caps allow, so the
        # best few columns decide every row that they fill; only the other rows need them all.
        prefix = 2 * n + 8
        if quotas or vectors is not None or prefix >= width or not _SHORTCUTS:
            picks, extra = select(slice(None), width)
        else:
            picks, extra = select(slice(None), prefix)
            short = np.flatnonzero((picks[:, -1] < 0) & (count > prefix))
            if short.size:
                picks[short], extra[short] = select(short, width)

    has = picks >= 0
    at = row_start + np.take(order, row_start + np.maximum(picks, 0))  # flat original columns
    out_items = np.where(has, np.take(items, at), -1)
    out_scores = np.where(has, np.take(adjusted, at), -np.inf)
    out_base = np.where(has, np.take(scores, at), -np.inf)
    out_reasons = np.where(has, np.take(tables.bits, out_items) | sources[:, None] | extra, 0)
    return (
        out_items.astype(np.int64),
        out_scores.astype(np.float32),
        out_base.astype(np.float32),
        out_reasons.astype(np.int32),
    )
