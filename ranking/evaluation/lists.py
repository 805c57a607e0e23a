"""Step 2, **recommend**: the lists of the product's own pipeline (:func:`recommend`, with item
attributes from the data set) and of bare :mod:`implicit` (:func:`implicit_baseline`)."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from implicit.cpu.als import AlternatingLeastSquares
from scipy.sparse import csr_matrix
from threadpoolctl import threadpool_limits

from ranking.datasets import PROVENANCES, InteractionData
from ranking.effects import ItemAttributes
from ranking.evaluation.splits import (
    Split,
    _binary,
    truth_matrix,
)
from ranking.pipeline import compute_feeds
from ranking.policy import ModelParams, Policy


def reference_time(data: InteractionData, split: Split | None = None) -> float:
    """Unix time "now" for item ages: the latest training interaction (of all, without a split).

    ``0.0`` when there is no interaction.
    """
    stamps = data.timestamps if split is None else data.timestamps[split.train]
    return float(stamps.max()) if stamps.size else 0.0


def item_attributes(data: InteractionData, split: Split | None = None) -> ItemAttributes:
    """The item attributes that :func:`ranking.pipeline.compute_feeds` needs, from a data set.

    One row per catalogue item (``data.items``):

    * ``item_ids``: the external item ids; ``item_keys`` the same, as text;
    * ``creator_ids``: the primary creator's index in ``data.creators`` (``-1`` for none, e.g.
      the ``unattributed`` placeholder); ``creator_keys`` the creator's name (``""`` for none),
      so ``creator`` refusals match ``data.creators`` entries. The creator ids are the
      creator indices, so the re-ranking's long tail (creators ranked by training popularity,
      ties to the lower index) is the same as :func:`metrics_report`'s;
    * ``provenance``: :data:`~ranking.datasets.PROVENANCES` name of the item's code;
    * ``age_days``: days from the item's publication to :func:`reference_time` (the latest
      *training* interaction, so nothing from the test period leaks in); ``NaN`` when unknown;
    * ``tags``: the item's tags (``data.tag_names`` of its non-zero ``item_tags`` columns).

    Parameters
    ----------
    data : InteractionData
    split : Split, optional
        The split whose training part defines "now"; without one, all interactions do.

    Returns
    -------
    ItemAttributes
    """
    now = reference_time(data, split)
    creator = data.item_creator.astype(np.int64)
    creator_keys = [data.creators[c] if c >= 0 else "" for c in creator.tolist()]
    tags_csr = csr_matrix(data.item_tags, copy=True)  # never touch the data set's arrays
    tags_csr.eliminate_zeros()
    tags_csr.sort_indices()
    tag_names = np.asarray(data.tag_names, dtype=object)
    item_tags = [
        [str(tag_names[c]) for c in tags_csr.indices[start:stop]]
        for start, stop in zip(tags_csr.indptr[:-1], tags_csr.indptr[1:], strict=True)
    ]
    return ItemAttributes.from_records(
        data.items,
        creator_ids=creator,
        provenance=[PROVENANCES[int(code)] for code in data.item_provenance],
        age_days=(now - data.item_published) / 86_400.0,
        item_keys=[str(item) for item in data.items.tolist()],
        creator_keys=creator_keys,
        tags=item_tags,
    )


@dataclass(frozen=True, eq=False)
class Recommendations:
    """Top-k lists produced for an evaluation.

    Attributes
    ----------
    member_ids : numpy.ndarray of int64, shape (m,)
        External ids of the evaluated members (those with held-out items), ascending.
    items : numpy.ndarray of int64, shape (m, k)
        Recommended **item indices** into ``data.items``, best first; ``-1`` pads.
    metadata : dict
        :attr:`ranking.pipeline.FeedBatch.metadata` of the run.
    seconds : float
        Wall time of :func:`~ranking.pipeline.compute_feeds`.
    """

    member_ids: npt.NDArray[np.int64]
    items: npt.NDArray[np.int64]
    metadata: dict[str, object]
    seconds: float


def evaluated_members(data: InteractionData, split: Split) -> npt.NDArray[np.int64]:
    """Ascending external ids of the members with at least one held-out item not in train."""
    members = np.unique(data.member_ids[split.test])
    truth = truth_matrix(data, split, members)
    has_truth = np.asarray(truth.getnnz(axis=1)) > 0
    result: npt.NDArray[np.int64] = members[has_truth]
    return result


def recommend(
    policy: Policy,
    data: InteractionData,
    split: Split,
    *,
    k: int = 10,
    num_threads: int = 0,
    feed_options: Mapping[str, Any] | None = None,
) -> Recommendations:
    """Train ``policy`` on the training part and recommend ``k`` items to each evaluated member.

    Calls :func:`ranking.pipeline.compute_feeds` with the training interactions, the whole
    catalogue as ``candidate_items`` and the members with held-out items as ``feed_members``.

    Parameters
    ----------
    policy : Policy
    data : InteractionData
    split : Split
    k : int, default 10
        List length.
    num_threads : int, default 0
        ALS threads (``0``: all cores); results do not depend on it.
    feed_options : mapping, optional
        Further keyword arguments for :func:`~ranking.pipeline.compute_feeds`. Unless it has
        ``item_attributes``, those of :func:`item_attributes` ``(data, split)`` are passed, so
        every re-ranking effect of the policy applies.

    Returns
    -------
    Recommendations
    """
    train = split.train
    members = evaluated_members(data, split)
    options = dict(feed_options or {})
    if "item_attributes" not in options:
        options["item_attributes"] = item_attributes(data, split)
    started = time.perf_counter()
    batch = compute_feeds(
        member_ids=data.member_ids[train],
        item_ids=data.item_ids[train],
        weights=data.weights[train],
        policy=policy,
        feed_members=members,
        candidate_items=data.items,
        n=k,
        num_threads=num_threads,
        **options,
    )
    seconds = time.perf_counter() - started
    items = np.where(batch.item_ids >= 0, data.item_index(batch.item_ids), -1)
    return Recommendations(
        member_ids=members, items=items, metadata=dict(batch.metadata), seconds=seconds
    )


def implicit_baseline(
    params: ModelParams,
    data: InteractionData,
    split: Split,
    *,
    k: int = 10,
    num_threads: int = 0,
) -> Recommendations:
    """The same lists made with bare :mod:`implicit`, bypassing :mod:`ranking.pipeline`.

    A reference implementation for checking the pipeline: binarise the training pairs into a
    members x items matrix (rows and columns: the sorted ids that occur in training), fit
    :class:`implicit.cpu.als.AlternatingLeastSquares` with ``params`` and call its
    ``recommend(..., filter_already_liked_items=True)``. With ``weighting="binary"`` and no
    re-ranking in the policy, :func:`recommend` should return exactly these lists.

    Parameters
    ----------
    params : ModelParams
        ``factors``, ``regularization``, ``alpha``, ``iterations`` and ``seed`` are used
        (``weighting`` is not: the matrix is always binary).
    data, split, k, num_threads
        As in :func:`recommend`.

    Returns
    -------
    Recommendations
        For :func:`evaluated_members`, with item indices into ``data.items``.
    """
    train = split.train
    member_vocab = np.unique(data.member_ids[train])
    item_vocab = np.unique(data.item_ids[train])
    rows = np.searchsorted(member_vocab, data.member_ids[train])
    cols = np.searchsorted(item_vocab, data.item_ids[train])
    matrix = _binary(rows, cols, (member_vocab.size, item_vocab.size))
    members = evaluated_members(data, split)
    started = time.perf_counter()
    model = AlternatingLeastSquares(
        factors=params.factors,
        regularization=params.regularization,
        alpha=params.alpha,
        iterations=params.iterations,
        random_state=params.seed,
        dtype=np.float32,
        calculate_training_loss=False,
        num_threads=num_threads,
    )
    user_rows = np.searchsorted(member_vocab, members)
    with threadpool_limits(limits=1, user_api="blas"):
        model.fit(matrix, show_progress=False)
        ids, _scores = model.recommend(
            user_rows, matrix[user_rows], N=k, filter_already_liked_items=True
        )
    seconds = time.perf_counter() - started
    ids = np.asarray(ids, dtype=np.int64).reshape(members.size, k)
    items = data.item_index(item_vocab[ids])
    return Recommendations(member_ids=members, items=items, metadata={}, seconds=seconds)
