"""Cold start: candidates nobody has interacted with yet, and their estimated factors.

ALS can only score items somebody interacted with. With ``candidates.new_items`` above
0, the :data:`NEW_ITEMS_CONSIDERED` newest candidates nobody has interacted with positively are
candidates too: each gets a vector in the model's factor space, the mean of the factors of its
creator's other items, else of the items sharing its tags, else of all items; a member's score for
it is the dot product with their factors, as for any item, so the best ``new_items`` of them join
the member's ALS candidates on the same scale. Members without history get the newest ones at a
score below any popular item. They go through the same refusals, blocks, caps and quotas, and
their entries say so (:attr:`Reason.NEW_FROM_KNOWN_CREATOR` /
:attr:`Reason.NEW_FROM_UNSEEN_CREATOR`), so a new-creator quota can be met by items nobody has
interacted with yet.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt
from scipy.sparse import csr_matrix

from ranking.als import ALSModel
from ranking.effects import Catalogue, ItemAttributes
from ranking.policy import Policy
from ranking.vocabulary import Vocabulary

if TYPE_CHECKING:
    from ranking.pipeline.prepared import PreparedFeeds


NEW_ITEMS_CONSIDERED = 1_000
"""How many of the newest items nobody has interacted with are scored for each member when the
policy's ``candidates.new_items`` is above 0 (bounds the cost at ``O(members x this x
factors)``)."""


def _engaged_with_creator(
    seen: csr_matrix, items: npt.NDArray[np.int64], catalogue: Catalogue
) -> npt.NDArray[np.bool_]:
    """Whether each member (row) interacted with an item of the creator of each of ``items``."""
    n_creators = int(catalogue.creator.max(initial=-1)) + 2
    rows = np.repeat(np.arange(seen.shape[0], dtype=np.int64), np.diff(seen.indptr))
    keys = rows * n_creators + catalogue.creator[seen.indices] + 1
    creator = np.where(items >= 0, catalogue.creator[np.maximum(items, 0)], -1)
    query = np.arange(items.shape[0], dtype=np.int64)[:, None] * n_creators + creator + 1
    engaged: npt.NDArray[np.bool_] = np.isin(query, keys) & (creator >= 0)
    return engaged


@dataclass(frozen=True)
class NewItemEstimator:
    """Factors for items the model has never seen, from what it knows of their creator and tags.

    An item's estimate is the mean factors of its creator's scorable items; failing that, the
    mean over its tags of each tag's mean factors over scorable items; failing that,
    :attr:`overall`, the mean factors of all scorable items. Built once per run and kept with it,
    so items published after the run are estimated the same way
    (:func:`~ranking.pipeline.refresh_feeds`).
    """

    creator_ids: npt.NDArray[np.int64]
    """int64 ``[C]``: database id of each creator (the catalogue's dense creator index)."""
    creator_vectors: npt.NDArray[np.float32]
    """float32 ``[C, f]``: mean factors of each creator's scorable items (0 where none)."""
    creator_known: npt.NDArray[np.bool_]
    """bool ``[C]``: whether the creator has a scorable item."""
    tag_names: npt.NDArray[np.str_]
    """str ``[T]``: tags that scorable items carry, sorted."""
    tag_vectors: npt.NDArray[np.float32]
    """float32 ``[T, f]``: mean factors of the scorable items carrying each tag."""
    overall: npt.NDArray[np.float32]
    """float32 ``[f]``: mean factors of every scorable item."""

    def estimate(
        self, creators: npt.NDArray[np.int64], tags: Sequence[Sequence[str]]
    ) -> npt.NDArray[np.float32]:
        """Factors of items with these dense creator indices (``-1``: none, or unknown to the
        run) and these tags."""
        vectors = np.tile(self.overall.astype(np.float64), (creators.size, 1))
        column = {str(name): k for k, name in enumerate(self.tag_names)}
        for row, item_tags in enumerate(tags):
            at = [column[t] for t in item_tags if t in column]
            if at:
                vectors[row] = self.tag_vectors[at].astype(np.float64).mean(axis=0)
        inside = (creators >= 0) & (creators < self.creator_ids.size)
        use = np.zeros(creators.size, dtype=bool)
        use[inside] = self.creator_known[creators[inside]]
        vectors[use] = self.creator_vectors[creators[use]]
        return vectors.astype(np.float32)

    @classmethod
    def empty(cls, factors: int) -> NewItemEstimator:
        return cls(
            creator_ids=np.empty(0, dtype=np.int64),
            creator_vectors=np.empty((0, factors), dtype=np.float32),
            creator_known=np.empty(0, dtype=bool),
            tag_names=np.empty(0, dtype=np.str_),
            tag_vectors=np.empty((0, factors), dtype=np.float32),
            overall=np.zeros(factors, dtype=np.float32),
        )


def _new_item_estimator(
    model: ALSModel | None,
    popularity: npt.NDArray[np.int64],
    catalogue: Catalogue,
    creator_ids: npt.NDArray[np.int64],
    space: Vocabulary,
    attributes: ItemAttributes | None,
    factors: int,
) -> NewItemEstimator:
    if model is None:
        return dataclasses.replace(NewItemEstimator.empty(factors), creator_ids=creator_ids)
    item_factors = model.item_factors.astype(np.float64)
    known = np.flatnonzero(popularity > 0)
    overall = item_factors[known].mean(axis=0) if known.size else np.zeros(factors)

    creator = catalogue.creator[known]
    has = creator >= 0
    n_creators = creator_ids.size
    sums = np.zeros((n_creators, factors), dtype=np.float64)
    np.add.at(sums, creator[has], item_factors[known[has]])
    counts = np.bincount(creator[has], minlength=n_creators)
    creator_vectors = sums / np.maximum(counts, 1)[:, None]

    tag_names = np.empty(0, dtype=np.str_)
    tag_vectors = np.empty((0, factors), dtype=np.float64)
    if attributes is not None and attributes.tag_names.size:
        rows = np.full(len(space), -1, dtype=np.int64)
        at = space.lookup(attributes.item_ids)
        rows[at[at >= 0]] = np.flatnonzero(at >= 0)
        model_rows = rows[known]
        with_row = model_rows >= 0
        model_tags = csr_matrix(attributes.tags[model_rows[with_row]], dtype=np.float64)
        tag_sums = model_tags.T @ item_factors[known[with_row]]
        tag_counts = np.asarray(model_tags.sum(axis=0)).reshape(-1)
        carried = tag_counts > 0
        tag_names = attributes.tag_names[carried]
        tag_vectors = tag_sums[carried] / tag_counts[carried, None]
    return NewItemEstimator(
        creator_ids=creator_ids,
        creator_vectors=creator_vectors.astype(np.float32),
        creator_known=counts > 0,
        tag_names=tag_names,
        tag_vectors=np.asarray(tag_vectors, dtype=np.float32).reshape(-1, factors),
        overall=np.asarray(overall, dtype=np.float32),
    )


def _item_tags(
    attributes: ItemAttributes | None, space: Vocabulary, indices: npt.NDArray[np.int64]
) -> list[list[str]]:
    """The tags of the items at these catalogue indices (none for items without attributes)."""
    if attributes is None:
        return [[] for _ in indices]
    at = space.lookup(attributes.item_ids)
    row_of = np.full(len(space), -1, dtype=np.int64)
    row_of[at[at >= 0]] = np.flatnonzero(at >= 0)
    rows = row_of[indices]
    return [
        [] if row < 0 else [str(t) for t in attributes.tag_names[attributes.tags[int(row)].indices]]
        for row in rows
    ]


def _new_item_candidates(
    policy: Policy,
    space: Vocabulary,
    candidates: npt.NDArray[np.int64],
    popularity: npt.NDArray[np.int64],
    catalogue: Catalogue,
    estimator: NewItemEstimator,
    tags: Callable[[npt.NDArray[np.int64]], Sequence[Sequence[str]]],
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]:
    """The cold-start candidates, newest first, and their estimated factors.

    The candidates nobody interacted with positively and no rule refuses, the
    :data:`NEW_ITEMS_CONSIDERED` newest of them (unknown age last, ties by index), estimated
    by ``estimator``.
    """
    factors = policy.model.factors
    empty = np.empty(0, dtype=np.int64), np.empty((0, factors), dtype=np.float32)
    if policy.candidates.new_items == 0:
        return empty
    index = space.lookup(np.unique(candidates))
    index = index[index >= 0]
    unused = index >= popularity.size
    unused[~unused] = popularity[index[~unused]] == 0
    cold = index[unused]
    cold = cold[~catalogue.refused[cold]]
    if cold.size == 0:
        return empty
    age = catalogue.age_days[cold].astype(np.float64)
    order = np.lexsort((cold, np.where(np.isnan(age), np.inf, age)))
    cold = cold[order][:NEW_ITEMS_CONSIDERED].astype(np.int64)
    return cold, estimator.estimate(catalogue.creator[cold], tags(cold))


def _with_published(prepared: PreparedFeeds, published: ItemAttributes) -> PreparedFeeds:
    """``prepared`` with items published since the run in its catalogue and new-item candidates.

    A no-op unless the run does cold start. The items take the next catalogue indices; their
    creators keep the run's dense index where the run knew them, and creators new to the run
    get new ones (long tail: nobody has interacted with them). Refusal rules of the run's
    policy apply to them.
    """
    estimator, policy = prepared.estimator, prepared.policy
    if estimator is None or policy.candidates.new_items == 0 or len(published) == 0:
        return prepared
    space = Vocabulary(prepared.space_ids)
    fresh = np.flatnonzero(space.lookup(published.item_ids) < 0)
    if fresh.size == 0:
        return prepared
    ids = published.item_ids[fresh]
    extended = space.extend(ids)
    index = extended.lookup(ids)
    catalogue = prepared.catalogue

    creator_vocab = Vocabulary(estimator.creator_ids)
    creator_ids = published.creator_ids[fresh]
    dense = np.where(creator_ids >= 0, creator_vocab.lookup(np.maximum(creator_ids, 0)), -1)
    unknown = np.unique(creator_ids[(creator_ids >= 0) & (dense < 0)])
    if unknown.size:
        creator_vocab = creator_vocab.extend(unknown)
        dense = np.where(creator_ids >= 0, creator_vocab.lookup(np.maximum(creator_ids, 0)), -1)
    n_creators = max(catalogue.creator_long_tail.size, int(dense.max(initial=-1)) + 1)
    pad = n_creators - catalogue.creator_long_tail.size
    long_tail = np.append(catalogue.creator_long_tail, np.ones(pad, dtype=bool))
    first_age = np.append(catalogue.creator_first_age_days, np.full(pad, np.nan, np.float32))
    ages = published.age_days[fresh]
    for creator, age in zip(dense.tolist(), ages.tolist(), strict=True):
        if creator >= 0 and not np.isnan(age) and not first_age[creator] >= age:
            first_age[creator] = age

    refused = published.refused_by(policy.refusals)[fresh]
    grown = Catalogue(
        creator=np.append(catalogue.creator, dense).astype(np.int64),
        provenance=np.append(catalogue.provenance, published.provenance[fresh]).astype(np.int8),
        age_days=np.append(catalogue.age_days, ages).astype(np.float32),
        popularity=np.append(catalogue.popularity, np.zeros(ids.size, np.float32)),
        refused=np.append(catalogue.refused, refused),
        creator_long_tail=long_tail,
        creator_first_age_days=first_age.astype(np.float32),
    )
    tags = [
        [str(t) for t in published.tag_names[published.tags[int(row)].indices]] for row in fresh
    ]
    usable = ~refused
    vectors = estimator.estimate(
        dense[usable], [t for t, ok in zip(tags, usable, strict=True) if ok]
    )
    cold = np.concatenate([prepared.new_items, index[usable]])
    cold_vectors = np.vstack(
        [prepared.new_item_vectors.reshape(-1, vectors.shape[1]), vectors]
    ).astype(np.float32)
    age = grown.age_days[cold].astype(np.float64)
    order = np.lexsort((cold, np.where(np.isnan(age), np.inf, age)))[:NEW_ITEMS_CONSIDERED]
    return dataclasses.replace(
        prepared,
        space_ids=np.asarray(extended.ids, dtype=np.int64),
        candidates=np.concatenate([prepared.candidates, ids]),
        catalogue=grown,
        extra_blocks=csr_matrix(
            (
                prepared.extra_blocks.data,
                prepared.extra_blocks.indices,
                prepared.extra_blocks.indptr,
            ),
            shape=(prepared.extra_blocks.shape[0], len(extended)),
        ),
        new_items=cold[order].astype(np.int64),
        new_item_vectors=cold_vectors[order],
        estimator=dataclasses.replace(
            estimator,
            creator_ids=np.asarray(creator_vocab.ids, dtype=np.int64),
            creator_vectors=np.vstack(
                [estimator.creator_vectors, np.zeros((unknown.size, vectors.shape[1]), np.float32)]
            ),
            creator_known=np.append(estimator.creator_known, np.zeros(unknown.size, bool)),
        ),
    )
