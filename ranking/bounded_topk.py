"""The norm-bounded top-k: score items in decreasing order of factor norm and stop a member
once no item left can enter (Cauchy-Schwarz). Same answer as implicit's top-k over every item."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
from scipy.sparse import csr_matrix

_BOUND_MARGIN = 1e-4
"""Relative slack on the Cauchy-Schwarz bound: a float32 dot product of ``f`` terms is within
about ``f * 2**-24`` of the exact one, far below this for any factor count the policy allows."""

_BOUND_BLOCK_FLOATS = 4 * 1024 * 1024
"""Scores held at once while ranking one block of items for a batch of rows (16 MiB)."""

FILTERED_SCORE = np.float32(-np.finfo(np.float32).max)


class NormOrder:
    """The items of a top-k, sorted by the norm of their factors (largest first).

    Column ``c`` of the top-k is row ``c`` of the factors it was built on; ``order[p]`` is the
    column at sorted position ``p``, ``position`` the inverse, ``norms`` the sorted norms
    (float64) and ``factors`` the sorted factor rows.
    """

    __slots__ = ("factors", "finite", "items", "norms", "order", "position", "source")

    def __init__(
        self,
        item_factors: npt.NDArray[np.float32],
        items: npt.NDArray[np.int64] | None,
    ) -> None:
        self.source = item_factors
        self.items = items
        factors = item_factors if items is None else item_factors[items]
        norms = np.sqrt(np.einsum("ij,ij->i", factors, factors, dtype=np.float64))
        # A non-finite item factor has no norm to bound it: then implicit ranks every row.
        self.finite = bool(np.isfinite(norms).all())
        self.order = np.argsort(-norms, kind="stable")
        self.position = np.empty(self.order.size, dtype=np.int64)
        self.position[self.order] = np.arange(self.order.size)
        self.norms = norms[self.order]
        self.factors = np.ascontiguousarray(factors[self.order], dtype=np.float32)

    def matches(
        self, item_factors: npt.NDArray[np.float32], items: npt.NDArray[np.int64] | None
    ) -> bool:
        if self.source is not item_factors:
            return False
        if items is None or self.items is None:
            return items is None and self.items is None
        return bool(np.array_equal(items, self.items))


def bounded_top_k(
    index: NormOrder,
    factors: npt.NDArray[np.float32],
    seen: csr_matrix | None,
    k: int,
    *,
    stats: dict[str, int] | None = None,
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32], npt.NDArray[np.bool_]]:
    """Exact top-``k`` of ``factors @ items.T`` that scores only the items that can qualify.

    Items are visited in blocks of decreasing factor norm, the first of ``max(8k, n/64)``
    items, each next one half as large as all before it. After each block a row's ``k``-th
    best score so far is compared with the Cauchy-Schwarz bound ``|u| * |v|`` of every item not
    yet scored (``|v|`` is at most the next block's first norm); once the ``k``-th best is above
    it, no later item can enter the row's top-``k`` and the row is finished. With ALS factors
    the norm of an item grows with its popularity, so most rows finish early: on
    ``seed_demo``'s data this computes a fifth of the products implicit's top-k does.

    Rows whose result could differ from implicit's brute-force top-k are left to it: a tie
    between the ``k``-th and the next score (implicit breaks those by scan order), fewer than
    ``k`` eligible items, or factors that are not finite or large enough to overflow. The
    others get implicit's result in its order (best score first, the higher column first among
    equal scores), with the same float32 dot products as far as BLAS gives them: OpenBLAS's
    SkylakeX, SandyBridge and Nehalem kernels compute each product the same whatever the
    block, so both paths agree bit for bit; its Haswell, Zen and Prescott kernels round some
    products one unit in the last place differently by the shape of the block, so two items
    that close may swap. A row's result depends only on the rows ranked with it (fixed chunks
    of absolute positions in :func:`ranking.pipeline.score_feeds`), so shards still reproduce a
    whole run bit for bit.

    Returns ``(columns, scores, done)``: for rows with ``done`` set, columns (into the item
    list ``index`` was built on) and scores, best first; other rows are to be ranked by the
    caller. ``stats``, if given, receives ``products``: how many row x item scores were computed.
    """
    m, n = factors.shape[0], index.order.size
    columns = np.full((m, k), -1, dtype=np.int64)
    scores = np.full((m, k), FILTERED_SCORE, dtype=np.float32)
    done = np.zeros(m, dtype=bool)
    if m == 0 or k == 0 or n <= k or not index.finite:
        return columns, scores, done
    user_norms = np.sqrt(np.einsum("ij,ij->i", factors, factors, dtype=np.float64))
    # |score| <= |u| |v|: rows that might overflow float32 (or are not finite) go to implicit,
    # and so do zero rows (every score ties at 0).
    active = np.flatnonzero((user_norms > 0) & (user_norms * index.norms[0] < 1e30))
    if seen is not None:
        seen_positions = index.position[seen.indices]
    # The best k + 1 so far (sorted positions and scores): a tie between the k-th and the next
    # must still be seen when both were scored in an earlier block.
    best = np.full((m, k + 1), -1, dtype=np.int64)
    best_scores = np.full((m, k + 1), FILTERED_SCORE, dtype=np.float32)
    low, high = 0, min(n, max(8 * k, n // 64))
    while active.size:
        width = high - low
        if stats is not None:
            stats["products"] = stats.get("products", 0) + int(active.size) * width
        finished: list[npt.NDArray[np.int64]] = []
        step = max(1, _BOUND_BLOCK_FLOATS // (width + k + 1))
        for first in range(0, active.size, step):
            rows = active[first : first + step]
            query = factors[rows]
            # One row alone would be a matrix-vector product, rounded unlike the rows of a
            # matrix-matrix product (and unlike implicit's): score it twice.
            block = (np.repeat(query, 2, axis=0) if rows.size == 1 else query) @ index.factors[
                low:high
            ].T
            block = block[: rows.size]
            if seen is not None:
                starts, stops = seen.indptr[rows], seen.indptr[rows + 1]
                counts = stops - starts
                entries = np.repeat(starts - np.cumsum(counts) + counts, counts) + np.arange(
                    int(counts.sum())
                )
                where = seen_positions[entries]
                inside = (where >= low) & (where < high)
                block[np.repeat(np.arange(rows.size), counts)[inside], where[inside] - low] = (
                    FILTERED_SCORE
                )
            # Only rows with a score in this block at least their (k + 1)-th best so far have
            # anything to merge.
            if low:
                changed = np.flatnonzero(block.max(axis=1) >= best_scores[rows, k])
                if changed.size < rows.size:
                    block = block[changed]
            else:
                changed = np.arange(rows.size)
            if changed.size:
                merging = rows[changed]
                if low:
                    merged = np.concatenate([best_scores[merging], block], axis=1)
                    top, best_scores[merging] = _largest_sorted(merged, k + 1)
                    previous = np.take_along_axis(best[merging], np.minimum(top, k), axis=1)
                    best[merging] = np.where(top <= k, previous, top - (k + 1) + low)
                else:  # nothing is kept yet: the first block alone holds the best k + 1
                    best[merging], best_scores[merging] = _largest_sorted(block, k + 1)
            kth, after = best_scores[rows, k - 1], best_scores[rows, k]
            if high < n:
                bound = user_norms[rows] * index.norms[high] * (1.0 + _BOUND_MARGIN)
            else:  # every item is scored: nothing is left to bound
                bound = np.full(rows.size, -np.inf)
            ready = (kth > bound) & (kth > after) & (kth > FILTERED_SCORE)
            finished.append(rows[ready])
        done[np.concatenate(finished)] = True
        if high == n:
            break
        active = active[~done[active]]
        low, high = high, min(n, high + max(1, high // 2))

    rows = np.flatnonzero(done)
    found = index.order[best[rows, :k]]
    found_scores = best_scores[rows, :k]
    # implicit's order: best score first, the higher column first among equal scores. The
    # scores are sorted already; only rows with equal scores side by side need the columns'.
    tied = np.flatnonzero((found_scores[:, 1:] == found_scores[:, :-1]).any(axis=1))
    if tied.size:
        order = np.lexsort((-found[tied], -found_scores[tied]), axis=1)
        found[tied] = np.take_along_axis(found[tied], order, axis=1)
        found_scores[tied] = np.take_along_axis(found_scores[tied], order, axis=1)
    columns[rows] = found
    scores[rows] = found_scores
    return columns, scores, done


def _largest_sorted(
    values: npt.NDArray[np.float32], count: int
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]:
    """Per row, the columns of the ``count`` largest values, largest first, and the values."""
    top = np.argpartition(values, values.shape[1] - count, axis=1)[:, -count:]
    top_values = np.take_along_axis(values, top, axis=1)
    order = np.argsort(-top_values, axis=1, kind="stable")
    return np.take_along_axis(top, order, axis=1), np.take_along_axis(top_values, order, axis=1)


class _SeenRow:
    __slots__ = ("indices",)

    def __init__(self, indices: npt.NDArray[np.int32]) -> None:
        self.indices = indices


class SeenRows:
    """Rows of a CSR matrix as implicit's top-k reads its ``filter_query_items``.

    :func:`implicit.cpu.topk.topk` only ever takes ``filter_query_items[row].indices``, once per
    query row. On a :class:`~scipy.sparse.csr_matrix` each of those is a full sparse slice (a new
    matrix, validated), about a tenth of the scoring time with 100,000 items; here it is one
    view of ``indices``. The filtered items are the same, so are the results (tested).
    """

    __slots__ = ("_indices", "_indptr")

    def __init__(self, matrix: csr_matrix) -> None:
        self._indptr = matrix.indptr
        self._indices = matrix.indices

    def __getitem__(self, row: int) -> _SeenRow:
        return _SeenRow(self._indices[self._indptr[row] : self._indptr[row + 1]])
