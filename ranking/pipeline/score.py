"""The ranking stage: :func:`score_feeds` ranks any slice of a prepared run's members."""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import numpy.typing as npt
from scipy.sparse import csr_matrix

from ranking.als import ALSModel
from ranking.effects import Catalogue, apply_policy
from ranking.pipeline.common import (
    DEFAULT_CHUNK_SIZE,
    ROUTE_POPULAR,
    ROUTE_RECALCULATED,
    ROUTE_REFUSING,
    ROUTE_TRAINED,
    FeedBatch,
)
from ranking.pipeline.new_items import (
    _engaged_with_creator,
)
from ranking.pipeline.prepared import PreparedFeeds
from ranking.policy import Policy, RankingParams
from ranking.reasons import Reason
from ranking.vocabulary import Vocabulary


def score_feeds(
    prepared: PreparedFeeds,
    *,
    start: int = 0,
    stop: int | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> FeedBatch:
    """Rank the feeds of ``prepared.targets[start:stop]``: the scoring stage of a run.

    Members are ranked in blocks of ``chunk_size`` absolute positions. Shards whose bounds are
    multiples of ``chunk_size`` (and the same ``chunk_size``) concatenate to exactly, bit for
    bit, the feeds of one call over everybody; other bounds may differ in the last bit of an
    ALS score (BLAS rounds a row's dot products according to the batch it is in).

    Parameters
    ----------
    prepared : PreparedFeeds
        From :func:`prepare_feeds` (or :meth:`PreparedFeeds.load`).
    start, stop : int
        The slice of members (positions in ``prepared.targets``); ``stop=None``: to the end.
    chunk_size : int, default 10_000
        Members ranked per vectorised batch.

    Returns
    -------
    FeedBatch
        The slice's feeds; ``metadata`` is the preparation's plus ``recommend_seconds`` for
        this slice.
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    total = len(prepared)
    stop = total if stop is None else stop
    if not 0 <= start <= stop <= total:
        raise ValueError(f"slice [{start}, {stop}) is outside the {total} prepared members")
    n, pool, policy, catalogue = prepared.n, prepared.pool, prepared.policy, prepared.catalogue
    model = prepared.model
    route = prepared.route[start:stop]
    m = stop - start
    space = Vocabulary(prepared.space_ids)
    item_vectors = None
    if prepared.item_vectors_needed:
        item_vectors = np.zeros((len(space), policy.model.factors), dtype=np.float32)
        if model is not None:
            item_vectors[: prepared.n_model_items] = model.item_factors
        if prepared.new_items.size:
            item_vectors[prepared.new_items] = prepared.new_item_vectors
    new_per_member = policy.candidates.new_items if prepared.new_items.size else 0
    is_new = np.zeros(len(space) + 1, dtype=bool)  # the extra entry: padding (-1)
    is_new[prepared.new_items] = True

    out_items = np.full((m, n), -1, dtype=np.int64)
    out_scores = np.full((m, n), -np.inf, dtype=np.float32)
    out_base = np.full((m, n), -np.inf, dtype=np.float32)
    out_reasons = np.zeros((m, n), dtype=np.int32)

    def finish(
        chunk: npt.NDArray[np.int64],
        pool_items: npt.NDArray[np.int64],
        pool_scores: npt.NDArray[np.float32],
        ranking: RankingParams,
        source: Reason,
    ) -> None:
        ranked = apply_policy(
            pool_items,
            pool_scores,
            catalogue=catalogue,
            params=ranking,
            n=n,
            member_blocked=_blocked_rows(prepared, start + chunk),
            source=int(source),
            item_vectors=item_vectors,
        )
        reasons = ranked.reasons
        new = is_new[ranked.items]
        if new.any():
            known = _engaged_with_creator(prepared.seen[start + chunk], ranked.items, catalogue)
            told = np.where(known, Reason.NEW_FROM_KNOWN_CREATOR, Reason.NEW_FROM_UNSEEN_CREATOR)
            reasons = np.where(new, (reasons & ~_SOURCE_BITS) | told, reasons).astype(np.int32)
        out_items[chunk], out_scores[chunk] = ranked.items, ranked.scores
        out_base[chunk], out_reasons[chunk] = ranked.base_scores, reasons

    def with_new_items(
        rows: npt.NDArray[np.int64],
        pool_items: npt.NDArray[np.int64],
        pool_scores: npt.NDArray[np.float32],
        factors: npt.NDArray[np.float32] | None,
    ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]:
        """The pool with each member's best new items appended (the newest, without factors),
        among those not refused for everyone or blocked by the member."""
        if not new_per_member:
            return pool_items, pool_scores
        m, c = pool_items.shape[0], prepared.new_items.size
        open_ = np.broadcast_to(~catalogue.refused[prepared.new_items], (m, c)).copy()
        blocked = _blocked_rows(prepared, rows)[:, prepared.new_items]
        open_[blocked.nonzero()] = False
        if factors is None:
            scores = np.where(open_, -np.arange(c, dtype=np.float32), -np.inf)
            column, _ = _top_k(scores.astype(np.float32), new_per_member)
            extra_scores = np.where(column >= 0, 0.0, -np.inf).astype(np.float32)
        else:
            scores = np.asarray(factors, dtype=np.float32) @ prepared.new_item_vectors.T
            column, extra_scores = _top_k(np.where(open_, scores, -np.inf), new_per_member)
        extra = np.where(column >= 0, prepared.new_items[np.maximum(column, 0)], -1)
        return (
            np.hstack([pool_items, extra]).astype(np.int64, copy=False),
            np.hstack([pool_scores, extra_scores]).astype(np.float32, copy=False),
        )

    scorable, popularity = prepared.scorable, prepared.popularity
    by_popularity = scorable[np.lexsort((scorable, -popularity[scorable]))]
    counts = popularity[by_popularity].astype(np.float64)
    peak = counts[0] if counts.size else 1.0
    popularity_scores = (counts / peak).astype(np.float32)
    if policy.fallback.kind == "newest" and (route == ROUTE_REFUSING).any():
        fallback_items, fallback_scores, fallback_source = _newest(
            space, prepared.candidates, catalogue
        )
    else:
        fallback_items, fallback_scores = by_popularity, popularity_scores
        fallback_source = Reason.POPULAR
    fallback_ranking = _fallback_params(policy)
    # When every model item may be recommended, say so: implicit's top-k over the whole
    # catalogue is faster than over an explicit list of the same items (same results).
    allowed = None if scorable.size == prepared.n_model_items else scorable

    # The two personalised routes: candidates from the trained factors, and from factors solved
    # now for members left out of training. Each takes absolute rows, gives (items, scores).
    Pool = tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]
    personal: list[tuple[int, Callable[[npt.NDArray[np.int64]], Pool]]] = []
    if model is not None:
        fitted = model

        def trained(rows: npt.NDArray[np.int64]) -> Pool:
            items, scores = fitted.recommend(
                prepared.model_rows[rows],
                _model_query(prepared, fitted, rows),
                pool,
                allowed_items=allowed,
            )
            factors = fitted.user_factors[prepared.model_rows[rows]] if new_per_member else None
            return with_new_items(rows, items, scores, factors)

        def recalculated(rows: npt.NDArray[np.int64]) -> Pool:
            factors = fitted.recalculate_users(csr_matrix(prepared.train[rows]))
            items, scores = _recalculated(fitted, factors, prepared.seen, rows, scorable, pool)
            return with_new_items(rows, items, scores, factors)

        personal = [(ROUTE_TRAINED, trained), (ROUTE_RECALCULATED, recalculated)]

    started = time.perf_counter()
    # Chunks are fixed blocks of absolute positions, not of this slice: BLAS may round a row's
    # dot products differently depending on the other rows of the same product, so a shard that
    # starts on a chunk boundary reproduces the whole run's feeds bit for bit.
    for block in range(start - start % chunk_size, stop if n else start, chunk_size):
        local = np.arange(max(block, start), min(block + chunk_size, stop)) - start
        here = route[local]
        for personal_route, candidates in personal:
            chunk = local[here == personal_route]
            if chunk.size:
                # One row alone would be a matrix-vector product, rounded unlike the same row
                # inside a matrix-matrix product: score it twice and keep one.
                rows = start + (np.repeat(chunk, 2) if chunk.size == 1 else chunk)
                pool_items, pool_scores = candidates(rows)
                finish(
                    chunk,
                    pool_items[: chunk.size],
                    pool_scores[: chunk.size],
                    policy.ranking,
                    Reason.PERSONALISED,
                )
        chunk = local[here == ROUTE_POPULAR]
        if chunk.size:
            pool_items, pool_scores = _ranked_candidates(
                _blocked_rows(prepared, start + chunk), by_popularity, popularity_scores, pool
            )
            pool_items, pool_scores = with_new_items(start + chunk, pool_items, pool_scores, None)
            finish(chunk, pool_items, pool_scores, policy.ranking, Reason.POPULAR)
        chunk = local[here == ROUTE_REFUSING]
        if chunk.size:
            pool_items, pool_scores = _ranked_candidates(
                _blocked_rows(prepared, start + chunk), fallback_items, fallback_scores, pool
            )
            finish(chunk, pool_items, pool_scores, fallback_ranking, fallback_source)
    recommend_seconds = time.perf_counter() - started

    item_out = np.full(out_items.shape, -1, dtype=np.int64)
    filled = out_items >= 0
    item_out[filled] = prepared.space_ids[out_items[filled]]
    return FeedBatch(
        member_ids=prepared.targets[start:stop].copy(),
        item_ids=item_out,
        scores=out_scores,
        base_scores=out_base,
        reasons=out_reasons,
        metadata={**prepared.metadata, "recommend_seconds": round(recommend_seconds, 6)},
    )


def _ranked_candidates(
    blocked: csr_matrix,
    ranked_items: npt.NDArray[np.int64],
    ranked_scores: npt.NDArray[np.float32],
    width: int,
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]:
    """The first ``width`` items of one global ranking that each member has not blocked.

    ``blocked`` (``[m, N]``) holds each member's blocked items; ``ranked_items`` /
    ``ranked_scores`` are item indices into its columns, best first. Vectorised over members.
    """
    m = blocked.shape[0]
    items = np.full((m, width), -1, dtype=np.int64)
    scores = np.full((m, width), -np.inf, dtype=np.float32)
    k = min(width, ranked_items.size)
    if k == 0 or m == 0:
        return items, scores
    per_row = np.diff(blocked.indptr)
    # A member can lose at most nnz(row) of the top items, so the first k + max(nnz) suffice.
    span = min(ranked_items.size, k + int(per_row.max(initial=0)))
    position = np.full(blocked.shape[1], -1, dtype=np.int64)
    position[ranked_items[:span]] = np.arange(span)
    mask = np.zeros((m, span), dtype=bool)
    row = np.repeat(np.arange(m), per_row)
    column = position[blocked.indices]
    hit = column >= 0
    mask[row[hit], column[hit]] = True
    # Stable sort puts the unblocked positions first, still in ranking order.
    pick = np.argsort(mask, axis=1, kind="stable")[:, :k]
    ok = ~np.take_along_axis(mask, pick, axis=1)
    items[:, :k] = np.where(ok, ranked_items[:span][pick], -1)
    scores[:, :k] = np.where(ok, ranked_scores[:span][pick], -np.inf)
    return items, scores


def _top_k(
    scores: npt.NDArray[np.float32], k: int
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]:
    """Column indices and values of each row's ``k`` largest finite scores, best first."""
    m, width = scores.shape
    k = min(k, width)
    part = (
        np.argpartition(-scores, k - 1, axis=1)[:, :k]
        if k < width
        else np.tile(np.arange(width), (m, 1))
    )
    values = np.take_along_axis(scores, part, axis=1)
    order = np.lexsort((part, -values), axis=1)
    index = np.take_along_axis(part, order, axis=1).astype(np.int64)
    top = np.take_along_axis(values, order, axis=1).astype(np.float32)
    index[~np.isfinite(top)] = -1
    top[~np.isfinite(top)] = -np.inf
    return index, top


def _fallback_params(policy: Policy) -> RankingParams:
    """Ranking for members who refuse personalisation: provenance rules and the fallback cap."""
    return policy.ranking.model_copy(
        update={
            "popularity_penalty": 0.0,
            "creator_cap": policy.fallback.creator_cap,
            "long_tail_quota": 0.0,
            "new_creator_quota": 0.0,
            "diversity": 0.0,
            "freshness_half_life_days": None,
        }
    )


def _blocked_rows(prepared: PreparedFeeds, positions: npt.NDArray[np.int64]) -> csr_matrix:
    """``[len(positions), N]``: every seen or blocked item of those members."""
    picked = csr_matrix(prepared.seen[positions])
    picked.resize((positions.size, len(prepared.space_ids)))
    picked = csr_matrix(picked + prepared.extra_blocks[positions])
    picked.sum_duplicates()
    picked.eliminate_zeros()
    picked.sort_indices()
    return picked


def _model_query(
    prepared: PreparedFeeds, model: ALSModel, positions: npt.NDArray[np.int64]
) -> csr_matrix:
    """A ``[model.n_users, n_items]`` matrix holding the seen rows of ``positions`` at their
    model rows (the only rows :meth:`ALSModel.recommend` reads for them)."""
    rows, first = np.unique(prepared.model_rows[positions], return_index=True)
    seen = csr_matrix(prepared.seen[positions[first]])  # in ascending model-row order
    counts = np.zeros(model.n_users, dtype=np.int64)
    counts[rows] = np.diff(seen.indptr)
    indptr = np.zeros(model.n_users + 1, dtype=np.int64)
    np.cumsum(counts, out=indptr[1:])
    return csr_matrix((seen.data, seen.indices, indptr), shape=(model.n_users, seen.shape[1]))


_SOURCE_BITS = int(Reason.PERSONALISED | Reason.POPULAR | Reason.NEWEST)


def _recalculated(
    model: ALSModel,
    factors: npt.NDArray[np.float32],
    seen: csr_matrix,
    rows: npt.NDArray[np.int64],
    scorable: npt.NDArray[np.int64],
    pool: int,
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]:
    """ALS candidates for members left out of training, from factors solved from their rows."""
    scores = factors @ model.item_factors[scorable].T
    seen_rows = csr_matrix(seen[rows])
    mask = np.zeros((rows.size, model.n_items), dtype=bool)
    mask[np.repeat(np.arange(rows.size), np.diff(seen_rows.indptr)), seen_rows.indices] = True
    scores = np.where(mask[:, scorable], -np.inf, scores).astype(np.float32)
    column, top = _top_k(scores, pool)
    items = np.where(column >= 0, scorable[np.maximum(column, 0)], -1)
    return items.astype(np.int64), top


def _newest(
    space: Vocabulary, candidates: npt.NDArray[np.int64], catalogue: Catalogue
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32], Reason]:
    """Candidates of known age, youngest first (ties by id), scored ``1 / (1 + age_days)``."""
    index = space.lookup(np.unique(candidates))
    age = catalogue.age_days[index]
    dated = index[~np.isnan(age)]
    age = np.maximum(catalogue.age_days[dated], 0.0)
    order = np.lexsort((space.ids[dated], age))
    scores = (1.0 / (1.0 + age[order].astype(np.float64))).astype(np.float32)
    return dated[order], scores, Reason.NEWEST
