"""Fold-in: :func:`refresh_feeds` re-ranks a few members against a prepared run."""

from __future__ import annotations

import dataclasses

import numpy as np
import numpy.typing as npt
from scipy.sparse import csr_matrix

from ranking.effects import ItemAttributes
from ranking.interactions import interaction_matrix
from ranking.pipeline.common import (
    DEFAULT_CHUNK_SIZE,
    ROUTE_POPULAR,
    ROUTE_RECALCULATED,
    ROUTE_REFUSING,
    FeedBatch,
    _as_ids,
    _member_set,
)
from ranking.pipeline.new_items import (
    _with_published,
)
from ranking.pipeline.prepare import (
    _extra_blocks,
)
from ranking.pipeline.prepared import PreparedFeeds
from ranking.pipeline.score import (
    score_feeds,
)
from ranking.vocabulary import Vocabulary


def refresh_feeds(
    prepared: PreparedFeeds,
    *,
    feed_members: npt.ArrayLike,
    member_ids: npt.ArrayLike,
    item_ids: npt.ArrayLike,
    weights: npt.ArrayLike,
    member_blocks: tuple[npt.ArrayLike, npt.ArrayLike] | None = None,
    no_personalisation_members: npt.ArrayLike | None = None,
    refused_items: npt.ArrayLike | None = None,
    published_items: ItemAttributes | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> FeedBatch:
    """Re-rank a few members against a prepared run, from their current histories (fold-in).

    The run's model, catalogue, popularity and policy stay as they are; only the given members'
    rows change. Each member is routed from their current choices: a member who refuses
    personalisation gets the policy's fallback; a member with a positive interaction with one
    of the model's items gets ALS candidates from factors solved from their whole current
    history against the run's item factors (:meth:`ALSModel.recalculate_users`, exactly as
    :data:`ROUTE_RECALCULATED` in :func:`score_feeds`), whether they were trained, recalculated,
    popular or not a member at all when the run was prepared; anyone else gets the popularity
    ranking. Every interaction (whatever its weight) blocks its item, as in a run; items the
    model does not know cannot be ALS candidates, and items outside the run's catalogue cannot
    be recommended at all.

    Parameters
    ----------
    prepared : PreparedFeeds
        The served run (:func:`prepare_feeds` or :meth:`PreparedFeeds.load`).
    feed_members : array_like of int64, shape (m,)
        The members to re-rank; the result has one row per member, in ascending id order.
    member_ids, item_ids : array_like of int64, shape (k,)
        The current interactions of those members (all of them, not only new ones); rows of
        other members are ignored.
    weights : array_like of float32, shape (k,)
        The interactions' weights, as for :func:`prepare_feeds` (pairs whose weights sum to
        zero or less block their item but are no evidence of interest).
    member_blocks : (array_like of int64, array_like of int64), optional
        Parallel ``(member ids, item ids)``: the members' current mutes, resolved to items.
    no_personalisation_members : array_like of int64, optional
        Those of the members who refuse personalisation now.
    refused_items : array_like of int64, optional
        Item ids refused for everyone besides the run's refusals (e.g. creators who opted out,
        items deactivated since the run). Refusals only ever grow: the run's stay.
    published_items : ItemAttributes, optional
        Items published since the run (those already in its catalogue are ignored). With the
        run's policy asking for ``candidates.new_items``, they join the catalogue and the
        cold-start candidates, estimated as the run estimated its own new items; the policy's
        refusal rules apply to them as to any item. Otherwise they are ignored.
    chunk_size : int, default 10_000
        Members ranked per vectorised batch.

    Returns
    -------
    FeedBatch
        As :func:`score_feeds`; ``metadata`` is the run's plus ``refreshed_members``, the
        number of members per route (``refresh_routes``) and ``recommend_seconds``.

    Raises
    ------
    ValueError
        If the interaction arrays differ in length or hold non-finite weights.
    """
    targets = np.unique(_as_ids(feed_members, "feed_members"))
    members = _as_ids(member_ids, "member_ids")
    items = _as_ids(item_ids, "item_ids")
    weight = np.asarray(weights, dtype=np.float32)
    if not (members.shape == items.shape == weight.shape):
        raise ValueError(
            "member_ids, item_ids and weights must be parallel 1-D arrays; got shapes "
            f"{members.shape}, {items.shape}, {weight.shape}"
        )
    if published_items is not None:
        prepared = _with_published(prepared, published_items)
    m, n_model = targets.size, prepared.n_model_items
    space = Vocabulary(prepared.space_ids)
    row = np.searchsorted(targets, members)
    row = np.minimum(row, max(m - 1, 0))
    column = space.lookup(items)
    mine = (targets[row] == members) if m else np.zeros(members.size, dtype=bool)
    mine &= column >= 0  # items outside the run's catalogue cannot be recommended anyway
    row, column, weight = row[mine], column[mine], weight[mine]
    in_model = column < n_model

    # Built exactly as prepare_feeds builds a member's training and seen rows, over the model's
    # items; interactions with catalogue items the model does not know only block them.
    train = interaction_matrix(
        row[in_model], column[in_model], weight[in_model], shape=(m, n_model), weighting="weight"
    )
    if prepared.policy.model.weighting == "binary":
        train.data[:] = 1.0
    seen = interaction_matrix(
        row[in_model], column[in_model], None, shape=(m, n_model), weighting="binary"
    )
    blocks = _extra_blocks(targets, space, member_blocks)
    outside = ~in_model
    if outside.any():
        blocks = csr_matrix(
            blocks
            + csr_matrix(
                (np.ones(int(outside.sum()), dtype=np.float32), (row[outside], column[outside])),
                shape=blocks.shape,
            )
        )
        blocks.data[:] = 1.0
        blocks.sort_indices()

    refusing = np.isin(targets, _member_set(no_personalisation_members, "no_personalisation"))
    personal = ~refusing & (np.diff(train.indptr) > 0) & (prepared.model is not None)
    route = np.full(m, ROUTE_POPULAR, dtype=np.int8)
    route[personal] = ROUTE_RECALCULATED
    route[refusing] = ROUTE_REFUSING
    # Only ROUTE_RECALCULATED rows read ``train``; keep it empty for the others, as a run does.
    train = csr_matrix(train.multiply(personal[:, None].astype(np.float32)))
    train.eliminate_zeros()
    train.sort_indices()

    catalogue = prepared.catalogue
    if refused_items is not None:
        index = space.lookup(_as_ids(refused_items, "refused_items"))
        if (index >= 0).any():
            refused = catalogue.refused.copy()
            refused[index[index >= 0]] = True
            catalogue = dataclasses.replace(catalogue, refused=refused)
    counts = np.bincount(route, minlength=4)
    refreshed = dataclasses.replace(
        prepared,
        targets=targets,
        route=route,
        model_rows=np.full(m, -1, dtype=np.int64),
        seen=seen,
        train=train,
        extra_blocks=blocks,
        catalogue=catalogue,
        metadata={
            **prepared.metadata,
            "refreshed_members": int(m),
            "refresh_routes": {
                "recalculated": int(counts[ROUTE_RECALCULATED]),
                "popular": int(counts[ROUTE_POPULAR]),
                "refusing": int(counts[ROUTE_REFUSING]),
            },
        },
    )
    return score_feeds(refreshed, chunk_size=chunk_size)
