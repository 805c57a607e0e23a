"""End to end: interactions and a policy in, every member's feed out.

:func:`compute_feeds` is the one call the feed-building task makes. It maps database ids to dense
indices (:class:`~ranking.vocabulary.Vocabulary`), builds the interaction matrix the policy asks
for, fits ALS, ranks unseen candidate items for every member with history, and gives members
without history a popularity feed. Everything is vectorised over members; the only loop is over
chunks of members, to bound memory.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy.sparse import csr_matrix

from ranking.als import ALSModel, interaction_matrix
from ranking.policy import Policy
from ranking.vocabulary import Vocabulary

__all__ = ["DEFAULT_CHUNK_SIZE", "FeedBatch", "compute_feeds"]

DEFAULT_CHUNK_SIZE = 10_000
"""Members ranked per vectorised batch; bounds peak memory at ``O(chunk x candidates)``."""


@dataclass(frozen=True)
class FeedBatch:
    """The feeds computed for a batch of members.

    Row ``r`` of :attr:`item_ids` and :attr:`scores` is the feed of ``member_ids[r]``, best first.
    """

    member_ids: npt.NDArray[np.int64]
    """int64 ``[m]``: the members the feeds were made for (``feed_members``, same order)."""
    item_ids: npt.NDArray[np.int64]
    """int64 ``[m, n]``: recommended item ids (external ids, not indices); ``-1`` pads."""
    scores: npt.NDArray[np.float32]
    """float32 ``[m, n]``: ALS score, or normalised popularity for fallback rows; ``-inf`` pads."""
    metadata: dict[str, object]
    """JSON-ready facts about the run (sizes, timings, ``fallback_members``, ``id_collisions``)."""


def _as_ids(values: npt.ArrayLike, name: str) -> npt.NDArray[np.int64]:
    array = np.asarray(values)
    if array.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {array.shape}")
    if array.size == 0:
        return np.empty(0, dtype=np.int64)
    if array.dtype.kind not in "iu":
        raise TypeError(f"{name} must hold integer ids, got dtype {array.dtype}")
    return array.astype(np.int64, copy=False)


def _collisions(vocabulary: Vocabulary, ids: npt.NDArray[np.int64]) -> int:
    """Ids that do not round-trip through ``vocabulary`` (always 0 for an exact mapping)."""
    index = vocabulary.lookup(ids)
    return int(np.count_nonzero((index < 0) | (vocabulary.ids[np.maximum(index, 0)] != ids)))


def _popularity_feeds(
    rows: npt.NDArray[np.int64],
    seen: csr_matrix,
    ranked_items: npt.NDArray[np.int64],
    ranked_scores: npt.NDArray[np.float32],
    n: int,
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]:
    """The popularity feed for each member, without the items the member has seen.

    ``rows`` are the members' rows in ``seen`` (``-1`` for members absent from it);
    ``ranked_items`` / ``ranked_scores`` are the candidate item indices, most popular first.
    """
    items = np.full((rows.size, n), -1, dtype=np.int64)
    scores = np.full((rows.size, n), -np.inf, dtype=np.float32)
    k = min(n, ranked_items.size)
    if k == 0 or rows.size == 0:
        return items, scores

    # Members who have seen nothing all get the same top-k.
    unseen = rows < 0
    items[unseen, :k] = ranked_items[:k]
    scores[unseen, :k] = ranked_scores[:k]

    known = np.flatnonzero(~unseen)
    if known.size:
        sub = seen[rows[known]]
        per_row = np.diff(sub.indptr)
        # A member can lose at most nnz(row) of the top items to "seen", so the first
        # k + max(nnz) ranked items always suffice.
        width = min(ranked_items.size, k + int(per_row.max(initial=0)))
        position = np.full(seen.shape[1], -1, dtype=np.int64)
        position[ranked_items[:width]] = np.arange(width)
        blocked = np.zeros((known.size, width), dtype=bool)
        seen_row = np.repeat(np.arange(known.size), per_row)
        seen_col = position[sub.indices]
        hit = seen_col >= 0
        blocked[seen_row[hit], seen_col[hit]] = True
        # Stable sort puts the unblocked positions first, still in popularity order.
        pick = np.argsort(blocked, axis=1, kind="stable")[:, :k]
        ok = ~np.take_along_axis(blocked, pick, axis=1)
        items[known, :k] = np.where(ok, ranked_items[:width][pick], -1)
        scores[known, :k] = np.where(ok, ranked_scores[:width][pick], -np.inf)
    return items, scores


def compute_feeds(
    *,
    member_ids: npt.ArrayLike,
    item_ids: npt.ArrayLike,
    weights: npt.ArrayLike,
    policy: Policy,
    feed_members: npt.ArrayLike,
    candidate_items: npt.ArrayLike,
    n: int,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    num_threads: int = 0,
) -> FeedBatch:
    """Compute a feed of ``n`` items for every member in ``feed_members``.

    Parameters
    ----------
    member_ids, item_ids : array_like of int64, shape (k,)
        One entry per interaction: who interacted with what (database primary keys).
    weights : array_like of float32, shape (k,)
        The interactions' weights; used when ``policy.model.weighting == "weight"``.
    policy : Policy
        The ratified policy; its ``model`` section configures the matrix and ALS.
    feed_members : array_like of int64, shape (m,)
        Every member to make a feed for, including members without interactions.
    candidate_items : array_like of int64
        Ids of the items that may be recommended (e.g. the active items). Candidates nobody has
        interacted with positively cannot be scored by ALS or be popular, and are left out.
    n : int
        Feed length (``>= 0``).
    chunk_size : int, default 10_000
        Members ranked per vectorised batch.
    num_threads : int, default 0
        Threads for ALS (``0``: all cores); results do not depend on it.

    Returns
    -------
    FeedBatch
        ``member_ids`` equals ``feed_members``. A member with at least one positive entry in the
        interaction matrix gets the ALS top-``n`` among the candidates; any other member gets the
        candidates with the most distinct interacting members (ties by ascending item id),
        scored by popularity / max popularity. Rows never contain an item the member interacted
        with (whatever its weight), an item outside ``candidate_items``, or a repeated item;
        short rows are padded with ``-1`` / ``-inf``.

    Raises
    ------
    ValueError
        If the interaction arrays differ in length, ``n < 0`` or ``chunk_size < 1``.
    """
    members = _as_ids(member_ids, "member_ids")
    items = _as_ids(item_ids, "item_ids")
    weight = np.asarray(weights, dtype=np.float32)
    if not (members.shape == items.shape == weight.shape):
        raise ValueError(
            "member_ids, item_ids and weights must be parallel 1-D arrays; got shapes "
            f"{members.shape}, {items.shape}, {weight.shape}"
        )
    targets = _as_ids(feed_members, "feed_members")
    candidates = _as_ids(candidate_items, "candidate_items")
    n = int(n)
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    params = policy.model

    member_vocab = Vocabulary.from_ids(members)
    item_vocab = Vocabulary.from_ids(items)
    user_index = member_vocab.lookup(members)
    item_index = item_vocab.lookup(items)
    shape = (len(member_vocab), len(item_vocab))
    # Pairs whose weights sum to zero or less (skips, dislikes) are not evidence of interest:
    # they never train the model, under either weighting; "binary" then counts each remaining
    # pair once.
    train = interaction_matrix(user_index, item_index, weight, shape=shape, weighting="weight")
    if params.weighting == "binary":
        train.data[:] = 1.0
    # Everything a member interacted with, positive or not: never recommended back.
    seen = interaction_matrix(user_index, item_index, None, shape=shape, weighting="binary")

    has_history = np.diff(train.indptr) > 0
    popularity = np.bincount(train.indices, minlength=shape[1])
    candidate_index = item_vocab.lookup(np.unique(candidates))
    candidate_index = candidate_index[candidate_index >= 0]
    scorable = candidate_index[popularity[candidate_index] > 0]  # ascending index == ascending id

    rows = member_vocab.lookup(targets)
    use_als = rows >= 0
    use_als[use_als] = has_history[rows[use_als]]
    als_positions = np.flatnonzero(use_als)
    fallback_positions = np.flatnonzero(~use_als)

    out_items = np.full((targets.size, n), -1, dtype=np.int64)
    out_scores = np.full((targets.size, n), -np.inf, dtype=np.float32)

    fit_seconds = 0.0
    model: ALSModel | None = None
    if als_positions.size and scorable.size and n:
        started = time.perf_counter()
        model = ALSModel(params, num_threads=num_threads).fit(train)
        fit_seconds = time.perf_counter() - started

    started = time.perf_counter()
    if model is not None:
        for begin in range(0, als_positions.size, chunk_size):
            chunk = als_positions[begin : begin + chunk_size]
            out_items[chunk], out_scores[chunk] = model.recommend(
                rows[chunk], seen, n, allowed_items=scorable, exclude_seen=True
            )

    if fallback_positions.size and n:
        by_popularity = scorable[np.lexsort((scorable, -popularity[scorable]))]
        counts = popularity[by_popularity].astype(np.float64)
        peak = counts[0] if counts.size else 1.0
        ranked_scores = (counts / peak).astype(np.float32)
        for begin in range(0, fallback_positions.size, chunk_size):
            chunk = fallback_positions[begin : begin + chunk_size]
            out_items[chunk], out_scores[chunk] = _popularity_feeds(
                rows[chunk], seen, by_popularity, ranked_scores, n
            )
    recommend_seconds = time.perf_counter() - started

    item_out = np.full(out_items.shape, -1, dtype=np.int64)
    filled = out_items >= 0
    item_out[filled] = item_vocab.ids[out_items[filled]]
    metadata: dict[str, object] = {
        "n_members_trained": int(shape[0]),
        "n_items": int(shape[1]),
        "n_interactions": int(members.size),
        "nnz": int(train.nnz),
        "n_candidates_scorable": int(scorable.size),
        "factors": int(params.factors),
        "fit_seconds": round(fit_seconds, 6),
        "recommend_seconds": round(recommend_seconds, 6),
        "id_collisions": _collisions(member_vocab, members) + _collisions(item_vocab, items),
        "fallback_members": int(fallback_positions.size),
    }
    return FeedBatch(
        member_ids=targets.copy(),
        item_ids=item_out,
        scores=out_scores,
        metadata=metadata,
    )
