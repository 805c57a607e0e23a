"""End to end: interactions and a policy in, every member's feed out.

:func:`compute_feeds` is the one call the feed-building task makes. It maps database ids to dense
indices (:class:`~ranking.vocabulary.Vocabulary`), builds the interaction matrix the policy asks
for, fits ALS, takes each member's top ``policy.candidates.pool_size`` unseen candidates (ALS for
members with history, popularity for the others, the policy's fallback for members who refuse
personalisation) and cuts them to a feed with :func:`ranking.effects.apply_policy`. Everything is
vectorised over members; the only loop is over chunks of members, to bound memory.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy.sparse import csr_matrix

from ranking.als import ALSModel, interaction_matrix
from ranking.effects import PROVENANCE_CODES, Catalogue, ItemAttributes, apply_policy
from ranking.policy import CapShare, Downrank, Exclude, Policy, RankingParams
from ranking.reasons import Reason
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
    """float32 ``[m, n]``: the score the feed was ranked by (the policy-adjusted score; equal to
    :attr:`base_scores` when the policy adjusts no scores); ``-inf`` pads."""
    base_scores: npt.NDArray[np.float32]
    """float32 ``[m, n]``: ALS score, normalised popularity (popular fallback) or
    ``1 / (1 + age_days)`` (newest fallback), before the policy's adjustments; ``-inf`` pads."""
    reasons: npt.NDArray[np.int32]
    """int32 ``[m, n]``: why each item is there, a :class:`~ranking.reasons.Reason` bitmask
    (:func:`ranking.reasons.explain`); 0 pads."""
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


def _needs_attributes(policy: Policy) -> list[str]:
    """The settings of ``policy`` that cannot be applied without item attributes."""
    ranking = policy.ranking
    needs = []
    if policy.refusals:
        needs.append("refusals")
    if ranking.creator_cap is not None:
        needs.append("ranking.creator_cap")
    if ranking.long_tail_quota > 0 or ranking.new_creator_quota > 0:
        needs.append("ranking quotas")
    if ranking.freshness_half_life_days is not None:
        needs.append("ranking.freshness_half_life_days")
    if any(isinstance(t, Downrank | CapShare | Exclude) for t in ranking.provenance.values()):
        needs.append("ranking.provenance")
    if policy.fallback.kind == "newest" or policy.fallback.creator_cap is not None:
        needs.append("fallback")
    return needs


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


def _member_set(values: npt.ArrayLike | None, name: str) -> npt.NDArray[np.int64]:
    return np.unique(_as_ids([] if values is None else values, name))


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
    item_attributes: ItemAttributes | None = None,
    refused_items: npt.ArrayLike | None = None,
    member_blocks: tuple[npt.ArrayLike, npt.ArrayLike] | None = None,
    no_personalisation_members: npt.ArrayLike | None = None,
    no_training_members: npt.ArrayLike | None = None,
) -> FeedBatch:
    """Compute a feed of ``n`` items for every member in ``feed_members``.

    Parameters
    ----------
    member_ids, item_ids : array_like of int64, shape (k,)
        One entry per interaction: who interacted with what (database primary keys).
    weights : array_like of float32, shape (k,)
        The interactions' weights; used when ``policy.model.weighting == "weight"``.
    policy : Policy
        The ratified policy: ``model`` configures the matrix and ALS, ``candidates`` the pool,
        ``ranking`` / ``refusals`` / ``fallback`` the re-ranking
        (:func:`ranking.effects.apply_policy`).
    feed_members : array_like of int64, shape (m,)
        Every member to make a feed for, including members without interactions.
    candidate_items : array_like of int64
        Ids of the items that may be recommended (e.g. the active items). ALS and popularity can
        only score candidates somebody has interacted with positively; the ``newest`` fallback
        can also return candidates nobody has interacted with yet.
    n : int
        Feed length (``>= 0``).
    chunk_size : int, default 10_000
        Members ranked per vectorised batch.
    num_threads : int, default 0
        Threads for ALS (``0``: all cores); results do not depend on it.
    item_attributes : ItemAttributes, optional
        Creators, provenance, ages, keys and tags of the items. Required when the policy has
        refusals, a creator cap, quotas, freshness, a provenance treatment other than
        ``allow`` / ``label``, or a non-default fallback.
    refused_items : array_like of int64, optional
        Item ids refused for everyone besides the policy's rules (e.g. creator opt-outs).
    member_blocks : (array_like of int64, array_like of int64), optional
        Parallel ``(member ids, item ids)``: items a member must never get (mutes, resolved to
        items by the caller). Seen items are always blocked.
    no_personalisation_members : array_like of int64, optional
        Members who refuse personalisation: they get ``policy.fallback`` (``popular`` or
        ``newest``), still through the refusals, their blocks and the provenance rules, with
        the fallback's creator cap (and no penalty, quotas, diversity or freshness).
    no_training_members : array_like of int64, optional
        Members who refuse that their interactions train anything: their rows are left out of
        the training matrix and of popularity. They still get a personalised feed: their factors
        are solved from their own row against the fitted item factors (implicit's
        ``recalculate_user``); when no model can be fitted they get the popularity feed. Their
        seen items are still excluded.

    Returns
    -------
    FeedBatch
        ``member_ids`` equals ``feed_members``. A member with at least one positive entry in the
        interaction matrix gets the ALS top ``max(pool_size, n)`` candidates, re-ranked by the
        policy into ``n``; any other member gets the candidates with the most distinct
        interacting members (ties by ascending item id) scored by popularity / max popularity,
        likewise re-ranked. With no re-ranking in the policy (:func:`ranking.policy.neutral_policy`,
        or the default policy, whose only effect is a label) and no extras, the feed is exactly
        the ALS (or popularity) top-``n``. Rows never contain an item the member interacted with
        (whatever its weight), a refused or blocked item, an item outside ``candidate_items``, or
        a repeated item; short rows are padded with ``-1`` / ``-inf``.

    Raises
    ------
    ValueError
        If the interaction arrays differ in length, ``n < 0``, ``chunk_size < 1``, or the policy
        needs ``item_attributes`` and none were given.
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
    if item_attributes is None and (needs := _needs_attributes(policy)):
        raise ValueError(f"the policy's {', '.join(needs)} need item_attributes")
    params = policy.model
    pool = max(policy.candidates.pool_size, n)

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

    # Members who refuse training: their rows train nothing (neither ALS nor popularity).
    untrained = np.zeros(shape[0], dtype=bool)
    refusing_training = _member_set(no_training_members, "no_training_members")
    known = member_vocab.lookup(refusing_training)
    untrained[known[known >= 0]] = True
    if untrained.any():
        fit_rows = np.flatnonzero(~untrained)
        train_fit = csr_matrix(train[fit_rows])
        seen_fit = csr_matrix(seen[fit_rows])
    else:
        fit_rows = np.arange(shape[0])
        train_fit, seen_fit = train, seen
    model_row = np.full(shape[0], -1, dtype=np.int64)
    model_row[fit_rows] = np.arange(fit_rows.size)

    has_history = np.diff(train.indptr) > 0
    popularity = np.bincount(train_fit.indices, minlength=shape[1])
    candidate_index = item_vocab.lookup(np.unique(candidates))
    candidate_index = candidate_index[candidate_index >= 0]
    scorable = candidate_index[popularity[candidate_index] > 0]  # ascending index == ascending id

    # The catalogue's item space: the model's items first (same indices), then candidates
    # nobody has interacted with (only the newest fallback can reach them).
    space = item_vocab.extend(candidates)
    catalogue, item_vectors_needed = _catalogue(
        space, popularity, policy, item_attributes, refused_items
    )

    # Route every member: ALS (trained or recalculated), popular, or the refusal fallback.
    rows = member_vocab.lookup(targets)
    refusing = np.isin(targets, _member_set(no_personalisation_members, "no_personalisation"))
    with_history = rows >= 0
    with_history[with_history] = has_history[rows[with_history]]

    fit_seconds = 0.0
    model: ALSModel | None = None
    if (with_history & ~refusing).any() and scorable.size and n and train_fit.nnz:
        started = time.perf_counter()
        model = ALSModel(params, num_threads=num_threads).fit(train_fit)
        fit_seconds = time.perf_counter() - started
    personal = with_history & ~refusing & (model is not None)
    recalculated = personal.copy()
    recalculated[personal] = untrained[rows[personal]]
    popular = ~personal & ~refusing

    blocked = _blocked_matrix(targets, rows, seen, space, member_blocks)
    item_vectors = None
    if item_vectors_needed:
        item_vectors = np.zeros((len(space), params.factors), dtype=np.float32)
        if model is not None:
            item_vectors[: shape[1]] = model.item_factors

    out_items = np.full((targets.size, n), -1, dtype=np.int64)
    out_scores = np.full((targets.size, n), -np.inf, dtype=np.float32)
    out_base = np.full((targets.size, n), -np.inf, dtype=np.float32)
    out_reasons = np.zeros((targets.size, n), dtype=np.int32)

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
            member_blocked=csr_matrix(blocked[chunk]),
            source=int(source),
            item_vectors=item_vectors,
        )
        out_items[chunk], out_scores[chunk] = ranked.items, ranked.scores
        out_base[chunk], out_reasons[chunk] = ranked.base_scores, ranked.reasons

    started = time.perf_counter()
    if n:
        if model is not None:
            trained = np.flatnonzero(personal & ~recalculated)
            for begin in range(0, trained.size, chunk_size):
                chunk = trained[begin : begin + chunk_size]
                pool_items, pool_scores = model.recommend(
                    model_row[rows[chunk]], seen_fit, pool, allowed_items=scorable
                )
                finish(chunk, pool_items, pool_scores, policy.ranking, Reason.PERSONALISED)
            others = np.flatnonzero(recalculated)
            for begin in range(0, others.size, chunk_size):
                chunk = others[begin : begin + chunk_size]
                pool_items, pool_scores = _recalculated(
                    model, train, seen, rows[chunk], scorable, pool
                )
                finish(chunk, pool_items, pool_scores, policy.ranking, Reason.PERSONALISED)

        by_popularity = scorable[np.lexsort((scorable, -popularity[scorable]))]
        counts = popularity[by_popularity].astype(np.float64)
        peak = counts[0] if counts.size else 1.0
        popularity_scores = (counts / peak).astype(np.float32)
        for begin in range(0, int(popular.sum()), chunk_size):
            chunk = np.flatnonzero(popular)[begin : begin + chunk_size]
            pool_items, pool_scores = _ranked_candidates(
                csr_matrix(blocked[chunk]), by_popularity, popularity_scores, pool
            )
            finish(chunk, pool_items, pool_scores, policy.ranking, Reason.POPULAR)

        if refusing.any():
            if policy.fallback.kind == "newest":
                fallback_items, fallback_scores, source = _newest(space, candidates, catalogue)
            else:
                fallback_items, fallback_scores = by_popularity, popularity_scores
                source = Reason.POPULAR
            fallback_ranking = _fallback_params(policy)
            for begin in range(0, int(refusing.sum()), chunk_size):
                chunk = np.flatnonzero(refusing)[begin : begin + chunk_size]
                pool_items, pool_scores = _ranked_candidates(
                    csr_matrix(blocked[chunk]), fallback_items, fallback_scores, pool
                )
                finish(chunk, pool_items, pool_scores, fallback_ranking, source)
    recommend_seconds = time.perf_counter() - started

    item_out = np.full(out_items.shape, -1, dtype=np.int64)
    filled = out_items >= 0
    item_out[filled] = space.ids[out_items[filled]]
    metadata: dict[str, object] = {
        "n_members_trained": int(fit_rows.size),
        "n_items": int(shape[1]),
        "n_interactions": int(members.size),
        "nnz": int(train_fit.nnz),
        "n_candidates_scorable": int(scorable.size),
        "factors": int(params.factors),
        "fit_seconds": round(fit_seconds, 6),
        "recommend_seconds": round(recommend_seconds, 6),
        "id_collisions": _collisions(member_vocab, members) + _collisions(item_vocab, items),
        "fallback_members": int(popular.sum()),
        "no_personalisation_members": int(refusing.sum()),
        "no_training_members": int(untrained.sum()),
        "recalculated_members": int(recalculated.sum()),
        "refused_items": int(catalogue.refused.sum()),
        "pool_size": int(pool),
    }
    return FeedBatch(
        member_ids=targets.copy(),
        item_ids=item_out,
        scores=out_scores,
        base_scores=out_base,
        reasons=out_reasons,
        metadata=metadata,
    )


def _catalogue(
    space: Vocabulary,
    popularity: npt.NDArray[np.int64],
    policy: Policy,
    attributes: ItemAttributes | None,
    refused_items: npt.ArrayLike | None,
) -> tuple[Catalogue, bool]:
    """The :class:`Catalogue` over ``space``, and whether diversity needs item vectors."""
    size = len(space)
    pop = np.zeros(size, dtype=np.float32)
    pop[: popularity.size] = popularity
    refused = np.zeros(size, dtype=bool)
    if refused_items is not None:
        index = space.lookup(_as_ids(refused_items, "refused_items"))
        refused[index[index >= 0]] = True
    if attributes is None:
        catalogue = Catalogue.build(size, popularity=pop, refused=refused)
        return catalogue, policy.ranking.diversity > 0
    at = space.lookup(attributes.item_ids)
    inside = at >= 0
    target = at[inside]
    refused[target] |= attributes.refused_by(policy.refusals)[inside]
    creators = Vocabulary.from_ids(attributes.creator_ids[attributes.creator_ids >= 0])
    creator_of = creators.lookup(attributes.creator_ids)  # -1 where none
    first = np.full(len(creators), -np.inf, dtype=np.float32)
    dated = (creator_of >= 0) & ~np.isnan(attributes.age_days)
    np.maximum.at(first, creator_of[dated], attributes.age_days[dated])
    first[np.isneginf(first)] = np.nan
    creator = np.full(size, -1, dtype=np.int64)
    creator[target] = creator_of[inside]
    provenance = np.full(size, PROVENANCE_CODES["unknown"], dtype=np.int8)
    provenance[target] = attributes.provenance[inside]
    age = np.full(size, np.nan, dtype=np.float32)
    age[target] = attributes.age_days[inside]
    interactions = np.bincount(
        creator[creator >= 0], weights=pop[creator >= 0], minlength=len(creators)
    )
    catalogue = Catalogue.build(
        size,
        creator=creator,
        provenance=provenance,
        age_days=age,
        popularity=pop,
        refused=refused,
        creator_interactions=interactions,
        creator_first_age_days=first,
    )
    return catalogue, policy.ranking.diversity > 0


def _blocked_matrix(
    targets: npt.NDArray[np.int64],
    rows: npt.NDArray[np.int64],
    seen: csr_matrix,
    space: Vocabulary,
    member_blocks: tuple[npt.ArrayLike, npt.ArrayLike] | None,
) -> csr_matrix:
    """``[m, len(space)]``: per feed member, every seen or blocked item."""
    m = targets.size
    known = rows >= 0
    if seen.shape[0]:
        picked = csr_matrix(seen[np.maximum(rows, 0)])
        picked = csr_matrix(picked.multiply(known[:, None].astype(np.float32)))
        picked.resize((m, len(space)))
    else:
        picked = csr_matrix((m, len(space)), dtype=np.float32)
    if member_blocks is not None:
        who = _as_ids(member_blocks[0], "member_blocks members")
        what = _as_ids(member_blocks[1], "member_blocks items")
        if who.shape != what.shape:
            raise ValueError("member_blocks must be two parallel arrays")
        order = np.argsort(targets, kind="stable")
        position = np.searchsorted(targets[order], who)
        position = np.minimum(position, max(m - 1, 0))
        found = (m > 0) & (targets[order][position] == who) if m else np.zeros(0, dtype=bool)
        item = space.lookup(what)
        ok = found & (item >= 0)
        extra = csr_matrix(
            (np.ones(int(ok.sum()), dtype=np.float32), (order[position[ok]], item[ok])),
            shape=(m, len(space)),
        )
        picked = csr_matrix(picked + extra)
    picked.sum_duplicates()
    picked.eliminate_zeros()
    picked.sort_indices()
    return picked


def _recalculated(
    model: ALSModel,
    train: csr_matrix,
    seen: csr_matrix,
    rows: npt.NDArray[np.int64],
    scorable: npt.NDArray[np.int64],
    pool: int,
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]:
    """ALS candidates for members left out of training: factors solved from their own rows."""
    implicit_model = model._fitted()  # implicit's recalculate_user (not exposed by ALSModel)
    factors = np.asarray(
        implicit_model.recalculate_user(np.arange(rows.size), csr_matrix(train[rows])),
        dtype=np.float32,
    ).reshape(rows.size, -1)
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
