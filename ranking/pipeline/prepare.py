"""The training stage: :func:`prepare_feeds` (vocabularies, matrices, ALS, catalogue, routes),
and :func:`compute_feeds`, both stages in one call."""

from __future__ import annotations

import time

import numpy as np
import numpy.typing as npt
from scipy.sparse import csr_matrix

from ranking.als import ALSModel
from ranking.effects import PROVENANCE_CODES, Catalogue, ItemAttributes
from ranking.interactions import interaction_matrix
from ranking.pipeline.common import (
    DEFAULT_CHUNK_SIZE,
    ROUTE_POPULAR,
    ROUTE_RECALCULATED,
    ROUTE_REFUSING,
    ROUTE_TRAINED,
    FeedBatch,
    _as_ids,
    _member_set,
)
from ranking.pipeline.new_items import (
    NewItemEstimator,
    _item_tags,
    _new_item_candidates,
    _new_item_estimator,
)
from ranking.pipeline.prepared import PreparedFeeds
from ranking.pipeline.score import (
    score_feeds,
)
from ranking.policy import CapShare, Downrank, Exclude, Policy
from ranking.vocabulary import Vocabulary


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
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    prepared = prepare_feeds(
        member_ids=member_ids,
        item_ids=item_ids,
        weights=weights,
        policy=policy,
        feed_members=feed_members,
        candidate_items=candidate_items,
        n=n,
        num_threads=num_threads,
        item_attributes=item_attributes,
        refused_items=refused_items,
        member_blocks=member_blocks,
        no_personalisation_members=no_personalisation_members,
        no_training_members=no_training_members,
    )
    return score_feeds(prepared, chunk_size=chunk_size)


def prepare_feeds(
    *,
    member_ids: npt.ArrayLike,
    item_ids: npt.ArrayLike,
    weights: npt.ArrayLike,
    policy: Policy,
    feed_members: npt.ArrayLike,
    candidate_items: npt.ArrayLike,
    n: int,
    num_threads: int = 0,
    item_attributes: ItemAttributes | None = None,
    refused_items: npt.ArrayLike | None = None,
    member_blocks: tuple[npt.ArrayLike, npt.ArrayLike] | None = None,
    no_personalisation_members: npt.ArrayLike | None = None,
    no_training_members: npt.ArrayLike | None = None,
) -> PreparedFeeds:
    """The training stage of :func:`compute_feeds`: everything but the per-member ranking.

    Takes the same arguments as :func:`compute_feeds` (bar ``chunk_size``) and raises the same
    errors. :func:`score_feeds` on the result, over all members or any slices of them, gives
    exactly :func:`compute_feeds`'s feeds.
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
    else:
        fit_rows = np.arange(shape[0])
        train_fit = train
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
    catalogue, item_vectors_needed, creator_ids = _catalogue(
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
    estimator = NewItemEstimator.empty(params.factors)
    if policy.candidates.new_items > 0:
        estimator = _new_item_estimator(
            model, popularity, catalogue, creator_ids, space, item_attributes, params.factors
        )
    new_items, new_item_vectors = _new_item_candidates(
        policy,
        space,
        candidates,
        popularity,
        catalogue,
        estimator,
        lambda indices: _item_tags(item_attributes, space, indices),
    )
    personal = with_history & ~refusing & (model is not None)
    recalculated = personal.copy()
    recalculated[personal] = untrained[rows[personal]]
    popular = ~personal & ~refusing

    route = np.full(targets.size, ROUTE_POPULAR, dtype=np.int8)
    route[personal] = ROUTE_TRAINED
    route[recalculated] = ROUTE_RECALCULATED
    route[refusing] = ROUTE_REFUSING
    target_model_rows = np.full(targets.size, -1, dtype=np.int64)
    if model is not None:
        target_model_rows[rows >= 0] = model_row[rows[rows >= 0]]
    metadata: dict[str, object] = {
        "n_members_trained": int(fit_rows.size),
        "n_items": int(shape[1]),
        "n_interactions": int(members.size),
        "nnz": int(train_fit.nnz),
        "n_candidates_scorable": int(scorable.size),
        "factors": int(params.factors),
        "fit_seconds": round(fit_seconds, 6),
        "id_collisions": _collisions(member_vocab, members, user_index)
        + _collisions(item_vocab, items, item_index),
        "fallback_members": int(popular.sum()),
        "no_personalisation_members": int(refusing.sum()),
        "no_training_members": int(untrained.sum()),
        "recalculated_members": int(recalculated.sum()),
        "refused_items": int(catalogue.refused.sum()),
        "pool_size": int(pool),
        "new_item_candidates": int(new_items.size),
        "max_item_id": int(np.max(np.asarray(space.ids), initial=0)),
    }
    return PreparedFeeds(
        policy=policy,
        n=n,
        pool=pool,
        targets=targets.copy(),
        route=route,
        model_rows=target_model_rows,
        seen=_rows_of(seen, rows),
        train=_rows_of(train, np.where(recalculated, rows, -1)),
        extra_blocks=_extra_blocks(targets, space, member_blocks),
        space_ids=np.asarray(space.ids, dtype=np.int64),
        n_model_items=int(shape[1]),
        scorable=scorable.astype(np.int64, copy=False),
        popularity=popularity.astype(np.int64, copy=False),
        candidates=candidates.copy(),
        catalogue=catalogue,
        item_vectors_needed=item_vectors_needed,
        model=model,
        fit_member_ids=np.asarray(member_vocab.ids[fit_rows], dtype=np.int64),
        metadata=metadata,
        new_items=new_items,
        new_item_vectors=new_item_vectors,
        estimator=estimator if policy.candidates.new_items > 0 else None,
    )


def _collisions(
    vocabulary: Vocabulary, ids: npt.NDArray[np.int64], index: npt.NDArray[np.int64]
) -> int:
    """Ids that do not round-trip through ``vocabulary`` (always 0 for an exact mapping), given
    their looked-up ``index``."""
    return int(np.count_nonzero((index < 0) | (vocabulary.ids[np.maximum(index, 0)] != ids)))


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
    if policy.candidates.new_items > 0:
        needs.append("candidates.new_items")
    return needs


def _rows_of(matrix: csr_matrix, rows: npt.NDArray[np.int64]) -> csr_matrix:
    """``matrix[rows]`` with an empty row wherever ``rows`` is negative (canonical CSR)."""
    if matrix.shape[0] == 0 or not (rows >= 0).any():
        return csr_matrix((rows.size, matrix.shape[1]), dtype=np.float32)
    known = rows >= 0
    picked = csr_matrix(matrix[np.maximum(rows, 0)])
    if not known.all():
        picked = csr_matrix(picked.multiply(known[:, None].astype(np.float32)))
        picked.eliminate_zeros()
    picked.sort_indices()
    return csr_matrix(picked, dtype=np.float32)


def _extra_blocks(
    targets: npt.NDArray[np.int64],
    space: Vocabulary,
    member_blocks: tuple[npt.ArrayLike, npt.ArrayLike] | None,
) -> csr_matrix:
    """``[m, len(space)]``: the items each feed member blocked, besides what they saw."""
    m = targets.size
    if member_blocks is None:
        return csr_matrix((m, len(space)), dtype=np.float32)
    who = _as_ids(member_blocks[0], "member_blocks members")
    what = _as_ids(member_blocks[1], "member_blocks items")
    if who.shape != what.shape:
        raise ValueError("member_blocks must be two parallel arrays")
    order = np.argsort(targets, kind="stable")
    position = np.searchsorted(targets[order], who)
    position = np.minimum(position, max(m - 1, 0))
    found = (targets[order][position] == who) if m else np.zeros(who.size, dtype=bool)
    item = space.lookup(what)
    ok = found & (item >= 0)
    extra = csr_matrix(
        (np.ones(int(ok.sum()), dtype=np.float32), (order[position[ok]], item[ok])),
        shape=(m, len(space)),
    )
    extra.sum_duplicates()
    extra.sort_indices()
    return extra


def _catalogue(
    space: Vocabulary,
    popularity: npt.NDArray[np.int64],
    policy: Policy,
    attributes: ItemAttributes | None,
    refused_items: npt.ArrayLike | None,
) -> tuple[Catalogue, bool, npt.NDArray[np.int64]]:
    """The :class:`Catalogue` over ``space``, whether diversity needs item vectors, and the
    database id of each dense creator index."""
    size = len(space)
    pop = np.zeros(size, dtype=np.float32)
    pop[: popularity.size] = popularity
    refused = np.zeros(size, dtype=bool)
    if refused_items is not None:
        index = space.lookup(_as_ids(refused_items, "refused_items"))
        refused[index[index >= 0]] = True
    if attributes is None:
        catalogue = Catalogue.build(size, popularity=pop, refused=refused)
        return catalogue, policy.ranking.diversity > 0, np.empty(0, dtype=np.int64)
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
    return catalogue, policy.ranking.diversity > 0, np.asarray(creators.ids, dtype=np.int64)
