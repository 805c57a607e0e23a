"""Greedy selection over the feed positions, vectorised across members, and its loop-free
equivalents: per-creator cap, provenance share caps, quotas in every window, diversity."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from ranking.effects.catalogue import (
    BoolArray,
    Catalogue,
    Float32Array,
    Int64Array,
)
from ranking.effects.quotas import (
    _quota_due,
    _quota_restriction,
    _quota_start,
)
from ranking.policy import (
    PROVENANCE_CLASSES,
    RankingParams,
)
from ranking.reasons import Reason

if TYPE_CHECKING:
    from ranking.effects.apply import _ItemTables


def _row_min_max(
    values: npt.NDArray[np.floating[Any]], valid: BoolArray
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    # In the values' own dtype: float32 -> float64 is exact and monotone, so the bounds are the
    # same as over the float64 copy, for half the memory traffic.
    low = np.where(valid, values, np.inf).min(axis=1, initial=np.inf)
    high = np.where(valid, values, -np.inf).max(axis=1, initial=-np.inf)
    return low.astype(np.float64), high.astype(np.float64)


def _normalise(values: npt.NDArray[np.floating[Any]], valid: BoolArray) -> npt.NDArray[np.float64]:
    """Min-max scale each row's valid entries to [0, 1] (1 where a row's range is empty).

    Computed in float64 whatever the input dtype.
    """
    low, high = _row_min_max(values, valid)
    spread = high - low
    ok = np.isfinite(spread) & (spread > 0)
    scale = np.where(ok, spread, 1.0)[:, None]
    scaled = values.astype(np.float64)
    scaled -= np.where(np.isfinite(low), low, 0.0)[:, None]
    scaled /= scale
    if not bool(ok.all()):
        scaled[~ok] = 1.0
    return scaled


def _first_occurrences(marked: npt.NDArray[np.integer[Any]]) -> BoolArray:
    """Whether each entry is the first of its item in its row (``-1`` entries always are)."""
    m, width = marked.shape
    position = np.arange(width, dtype=np.int64)
    # Keys (item, position) are unique, so a plain sort puts each item's first occurrence first.
    keyed = marked.astype(np.int64) * width + position
    order = np.argsort(keyed, axis=1)
    by_item = np.take_along_axis(keyed, order, axis=1) // width
    repeat = np.zeros((m, width), dtype=bool)
    repeat[:, 1:] = (by_item[:, 1:] == by_item[:, :-1]) & (by_item[:, 1:] >= 0)
    first = np.ones((m, width), dtype=bool)
    np.put_along_axis(first, order, ~repeat, axis=1)
    return first


def _descending(values: Float32Array) -> Int64Array:
    """Stable descending argsort of each row, through a sort of unique int64 keys.

    Each key holds the value's order in its high 32 bits and the column in the low 32, so a
    plain (unstable, SIMD) sort of the keys gives the columns in order: much faster than
    numpy's stable argsort of float rows; ties keep column order.
    """
    negated = np.ascontiguousarray(-values + np.float32(0.0))  # -0.0 becomes 0.0
    raw = negated.view(np.int32)
    monotone = raw ^ ((raw >> 31) & 0x7FFFFFFF)  # float order == integer order
    width = values.shape[1]
    key = (monotone.astype(np.int64) << 32) | np.arange(width, dtype=np.int64)
    key.sort(axis=1)
    key &= 0xFFFFFFFF
    return key


def _rank_capped(
    items: Int64Array,
    *,
    tables: _ItemTables,
    params: RankingParams,
    n: int,
) -> tuple[Int64Array, npt.NDArray[np.int32]]:
    """The greedy selection's result when only one kind of cap is active, without its loop.

    With a single grouping (creators, or provenance classes) a candidate is taken exactly when
    fewer than ``limit`` valid candidates of its group rank above it, so the feed is the first
    ``n`` such candidates. Same output as :func:`_greedy`. ``items`` holds each row's candidates
    best first, ``-1`` where not valid.
    """
    m, width = items.shape
    valid = items >= 0
    if params.creator_cap is not None:
        group = np.take(tables.creator, items)  # -1: no creator (or not valid)
        n_groups = tables.n_creators
    else:
        group = np.take(tables.provenance, items)
        n_groups = len(PROVENANCE_CLASSES)
    # Group codes: a capped group, then n_groups (valid, no group: never capped), then
    # n_groups + 1 (not valid: never taken). Keys (code, position) are unique, so a plain sort
    # lists each group's candidates best first, and a candidate's rank in its group is its
    # distance from the start of its run.
    code = np.where(valid, np.where(group >= 0, group, n_groups), n_groups + 1)
    position = np.arange(width, dtype=np.int64)
    compact = np.int32 if (n_groups + 2) * width < np.iinfo(np.int32).max else np.int64
    key = (code * width + position).astype(compact)
    key.sort(axis=1)
    sorted_code = key // width
    at = key - sorted_code * width  # the candidate's position in ``items``
    starts = np.ones((m, width), dtype=bool)
    starts[:, 1:] = sorted_code[:, 1:] != sorted_code[:, :-1]
    rank = position - np.maximum.accumulate(np.where(starts, position, 0), axis=1)
    capped = sorted_code < n_groups
    limit: Any = params.creator_cap
    if limit is None:
        limit = np.append(tables.limit, 0)[np.minimum(sorted_code, n_groups)]
    skipped = capped & (rank >= limit)
    taken = (sorted_code == n_groups) | (capped & ~skipped)
    first_skip = np.where(skipped, at, width).min(axis=1)
    # Taken candidates first, each in its position order: the feed.
    chosen = np.where(taken, at, at + width).astype(compact)
    chosen.sort(axis=1)
    k = min(n, width)
    head = chosen[:, :k].astype(np.int64)
    ok = head < width
    picks = np.full((m, n), -1, dtype=np.int64)
    extra = np.zeros((m, n), dtype=np.int32)
    picks[:, :k] = np.where(ok, head, -1)
    extra[:, :k] = np.where(ok & (head > first_skip[:, None]), int(Reason.RAISED_BY_CAP), 0)
    return picks, extra


def _first(mask: BoolArray) -> Int64Array:
    """Index of the first True in each row (0 where none)."""
    index: Int64Array = np.argmax(mask, axis=1).astype(np.int64)
    return index


def _greedy(
    items: Int64Array,
    adjusted: Float32Array,
    valid: BoolArray,
    *,
    catalogue: Catalogue,
    params: RankingParams,
    n: int,
    limit: Int64Array,
    vectors: Float32Array | None,
) -> tuple[Int64Array, npt.NDArray[np.int32]]:
    """Greedy selection over the ``n`` positions; rows are sorted by ``adjusted``, best first.

    Returns the chosen column of each position (``-1`` when nothing is left) and the reason
    bits the selection adds (raised by quota, cap or diversity).

    Quotas hold in every run of consecutive entries: any ``j`` entries in a row hold at least
    ``floor(q * j)`` items of the group (:func:`quota_required`), so every prefix does, and so
    does every page a cursor cuts from the feed, whatever its offset and length. For each group
    and row one number carries every window's state: ``S = min over c of (c + 1 + q * p_c)``,
    where ``p_c`` is the position of the group's ``c``-th latest item (``p_0 = -1``, the start).
    The windows ending at position ``t`` all keep the quota without a group item at ``t`` iff
    ``S - q * t > 0``; taking a group item at ``t`` makes ``S = 1 + min(q * t, S)``. A position
    is restricted to the group only when its quota is due there, so a single quota costs the
    least relevance the windows allow; when both quotas are active, a position where both fall
    due at the next one takes an item of either, so that they never fall due together.

    Both kinds are properties of the *creator*, and a due position takes the best group item
    the caps allow, so **a single quota is met in every window that ends before the pool's
    group items run out under the creator cap**, whatever the scores and diversity; every
    prefix of ``k`` entries holds at least ``min(floor(q * k), capacity)`` of them. With both
    quotas active, each is met where items of both kinds allow it (two due at once take an item
    of both, else one of either). Provenance share caps are not part of that reasoning: when
    they bind, quotas are best effort (a share cap can hide the items a quota needs).
    """
    m, width = items.shape
    rows = np.arange(m)
    safe = np.where(valid, items, 0)
    creator = np.where(valid, catalogue.creator[safe], -1)
    # One extra False entry at the end: creator -1 (none) indexes it.
    long_tail = np.append(catalogue.creator_long_tail, False)[creator]
    with np.errstate(invalid="ignore"):
        new_flags = catalogue.creator_first_age_days < params.new_creator_days
    new = np.append(new_flags, False)[creator]
    provenance = catalogue.provenance[safe].astype(np.int64)
    share_capped = bool(np.any(limit < n))
    cap = params.creator_cap
    quota_lt = params.long_tail_quota
    quota_new = params.new_creator_quota
    state_lt = _quota_start(quota_lt, m)
    state_new = _quota_start(quota_new, m)

    available = valid.copy()
    # Whether the caps still let the candidate in: False once its creator has ``cap`` picks in
    # the row, or its provenance class its share limit. Updated only in the rows whose pick just
    # filled a creator or a class.
    open_caps = valid & (limit[provenance] > 0) if share_capped else valid.copy()
    picked_creator = np.full((m, n), -1, dtype=np.int64)
    class_count = np.zeros((m, len(PROVENANCE_CLASSES)), dtype=np.int64)
    picks = np.full((m, n), -1, dtype=np.int64)
    extra = np.zeros((m, n), dtype=np.int32)

    relevance = None
    pool_vectors = None
    max_similarity = None
    if vectors is not None:
        scaled = _normalise(adjusted, valid)
        relevance = np.where(valid, scaled, 0.0).astype(np.float32)
        pool_vectors = vectors[safe]  # [m, width, d]
        max_similarity = np.zeros((m, width), dtype=np.float32)

    for k in range(n):
        eligible = available & open_caps if cap is not None or share_capped else available
        allowed = eligible
        forced = np.zeros(m, dtype=bool)
        if quota_lt or quota_new:
            due_lt = _quota_due(state_lt, quota_lt, k)
            due_new = _quota_due(state_new, quota_new, k)
            if quota_lt and quota_new:
                both_next = _quota_due(state_lt, quota_lt, k + 1) & _quota_due(
                    state_new, quota_new, k + 1
                )
                bound = np.flatnonzero(due_lt | due_new | both_next)
            else:
                bound = np.flatnonzero(due_lt | due_new)
            if bound.size:
                allowed = eligible.copy()
                allowed[bound], forced[bound] = _quota_restriction(
                    eligible[bound],
                    long_tail[bound],
                    new[bound],
                    due_lt[bound],
                    due_new[bound],
                )
        if relevance is not None and max_similarity is not None:
            weight = params.diversity
            criterion = (1.0 - weight) * relevance - weight * max_similarity
            pick = np.argmax(np.where(allowed, criterion, -np.inf), axis=1)
        else:
            pick = _first(allowed)
        got = allowed[rows, pick]
        if not bool(got.any()):
            break
        picks[:, k] = np.where(got, pick, -1)

        # Why was it chosen over the best remaining candidate?
        best_eligible = pick if allowed is eligible and relevance is None else _first(eligible)
        raised = got & (pick != _first(available))
        by_quota = raised & forced & (pick != best_eligible)
        bit_lt = np.where(by_quota & long_tail[rows, pick], int(Reason.RAISED_LONG_TAIL), 0)
        bit_new = np.where(by_quota & new[rows, pick], int(Reason.RAISED_NEW_CREATOR), 0)
        by_diversity = raised & ~by_quota & (pick != best_eligible)
        by_cap = raised & ~by_quota & ~by_diversity
        extra[:, k] = (
            bit_lt
            | bit_new
            | np.where(by_diversity, int(Reason.DIVERSIFIED), 0)
            | np.where(by_cap, int(Reason.RAISED_BY_CAP), 0)
        )

        available[rows[got], pick[got]] = False
        if cap is not None:
            chosen = np.where(got, creator[rows, pick], -1)
            picked_creator[:, k] = chosen
            if cap == 1:  # a pick is its creator's first (eligible means below the cap)
                full = np.flatnonzero(chosen >= 0)
            else:
                count = np.count_nonzero(picked_creator[:, : k + 1] == chosen[:, None], axis=1)
                full = np.flatnonzero((chosen >= 0) & (count >= cap))
            if full.size == m:  # every row (a cap of 1): in place, without gathering rows
                np.logical_and(open_caps, creator != chosen[:, None], out=open_caps)
            elif full.size:
                open_caps[full] &= creator[full] != chosen[full, None]
        if share_capped:
            taken_class = provenance[rows, pick]
            class_count[rows[got], taken_class[got]] += 1
            full = np.flatnonzero(got & (class_count[rows, taken_class] >= limit[taken_class]))
            if full.size:
                open_caps[full] &= provenance[full] != taken_class[full, None]
        if quota_lt:
            hit = got & long_tail[rows, pick]
            state_lt[hit] = 1.0 + np.minimum(quota_lt * k, state_lt[hit])
        if quota_new:
            hit = got & new[rows, pick]
            state_new[hit] = 1.0 + np.minimum(quota_new * k, state_new[hit])
        if pool_vectors is not None and max_similarity is not None:
            chosen_vectors = pool_vectors[rows, pick]  # [m, d]
            similarity = np.einsum("mwd,md->mw", pool_vectors, chosen_vectors)
            np.maximum(
                max_similarity,
                np.where(got[:, None], similarity, max_similarity),
                out=max_similarity,
            )
    return picks, extra
