"""The policy's effects on a candidate pool: refusals, score adjustments and greedy selection.

Arrays in, arrays out, vectorised over a batch of members. :func:`apply_policy` turns each
member's candidate pool (item indices and base scores, e.g. the ALS top-200) into a feed of
``n`` items, in this order:

1. **Hard refusals.** A candidate is dropped if the catalogue refuses it (community refusal
   rules, creator opt-outs: :attr:`Catalogue.refused`), if the member blocked it (seen items,
   mutes: ``member_blocked``), or if its provenance class is treated ``exclude``. Nothing later
   can bring a refused item back.
2. **Score adjustments** (see :class:`~ranking.policy.RankingParams` for the formula):
   provenance downranking, freshness decay and the popularity penalty, on the member-normalised
   score. With all three off the adjusted score *is* the base score.
3. **Greedy selection** over the ``n`` feed positions, vectorised across members: each position
   takes the best remaining candidate that keeps the per-creator cap and the provenance share
   caps, restricted to long-tail / new-creator items where a quota falls due, so that every run
   of consecutive entries (every prefix, every page) holds its share whenever the pool allows it
   (unless provenance share caps bind: see :func:`_greedy`), and scored by maximal marginal
   relevance when ``diversity > 0``.

Every output entry carries a reason bitmask (:class:`ranking.reasons.Reason`).

Item attributes come in two forms: :class:`ItemAttributes` in database-id space (what a caller
loads), which also resolves the policy's refusal rules (:meth:`ItemAttributes.refused_by`), and
:class:`Catalogue` in the dense item-index space of the model, which :func:`apply_policy` reads.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy.sparse import csr_matrix

from ranking.policy import (
    PROVENANCE_CLASSES,
    CapShare,
    CreatorRefusal,
    Downrank,
    Exclude,
    ItemRefusal,
    Label,
    OlderThanRefusal,
    ProvenanceRefusal,
    RankingParams,
    RefusalRule,
    TagRefusal,
)
from ranking.reasons import LABEL_BY_PROVENANCE, Reason

__all__ = [
    "LONG_TAIL_HEAD_SHARE",
    "PROVENANCE_CODES",
    "Catalogue",
    "ItemAttributes",
    "RankedFeeds",
    "apply_policy",
    "blocked_mask",
    "quota_required",
]

PROVENANCE_CODES: dict[str, int] = {name: code for code, name in enumerate(PROVENANCE_CLASSES)}
"""Code of each provenance class (``int8``): ``human`` 0, ``ai_assisted`` 1, ``ai_generated`` 2,
``unknown`` 3."""
_UNKNOWN = PROVENANCE_CODES["unknown"]

LONG_TAIL_HEAD_SHARE = 0.2
"""Share of creators (the most interacted-with) that are *not* long tail."""

_BLOCK = 1024
"""Members processed together: bounds the ``O(block x pool)`` memory, and keeps each block's
arrays (about 1.6 MB per int64 array for a pool of 200) near the cache."""

_SHORTCUTS = True
"""Use the loop-free equivalent of the greedy selection for a single cap, and decide rows from
the best few candidates where that is exact. Tests switch it off to compare."""

Int64Array = npt.NDArray[np.int64]
Float32Array = npt.NDArray[np.float32]
BoolArray = npt.NDArray[np.bool_]


def _column(values: npt.ArrayLike | None, size: int, dtype: type, fill: object, name: str) -> Any:
    if values is None:
        return np.full(size, fill, dtype=dtype)
    array: Any = np.asarray(values, dtype=dtype)
    if array.shape != (size,):
        raise ValueError(f"{name} has shape {array.shape}, expected ({size},)")
    return array


# --- Item attributes in database-id space ----------------------------------------------------


@dataclass(frozen=True)
class ItemAttributes:
    """What the ranking needs to know about items, in database-id space (one row per item).

    Build it with :meth:`from_records`. Items absent from it are treated as having no creator,
    ``unknown`` provenance, unknown age and no tags.
    """

    item_ids: Int64Array
    """int64 ``[k]``: the items' database ids (unique)."""
    creator_ids: Int64Array
    """int64 ``[k]``: database id of each item's primary creator; ``-1`` for none."""
    provenance: npt.NDArray[np.int8]
    """int8 ``[k]``: provenance code (:data:`PROVENANCE_CODES`)."""
    age_days: Float32Array
    """float32 ``[k]``: days since publication; NaN if unknown."""
    item_keys: npt.NDArray[np.str_]
    """str ``[k]``: the items' external ids (matched by ``item`` refusals)."""
    creator_keys: npt.NDArray[np.str_]
    """str ``[k]``: external id of each item's primary creator, ``""`` for none."""
    tags: csr_matrix
    """bool ``[k, t]``: which item carries which tag."""
    tag_names: npt.NDArray[np.str_]
    """str ``[t]``: the tag of each column of :attr:`tags`."""

    @classmethod
    def from_records(
        cls,
        item_ids: npt.ArrayLike,
        *,
        creator_ids: npt.ArrayLike | None = None,
        provenance: Sequence[str] | None = None,
        age_days: npt.ArrayLike | None = None,
        item_keys: Sequence[str] | None = None,
        creator_keys: Sequence[str] | None = None,
        tags: Sequence[Sequence[str]] | None = None,
    ) -> ItemAttributes:
        """Build attributes from parallel per-item sequences (any may be left out).

        Parameters
        ----------
        item_ids : array_like of int, shape (k,)
            Database ids, unique.
        creator_ids : array_like of int, shape (k,), optional
            Primary creator database id, ``-1`` for none. Default: none.
        provenance : sequence of str, shape (k,), optional
            One of :data:`~ranking.policy.PROVENANCE_CLASSES` per item. Default ``"unknown"``.
        age_days : array_like of float, shape (k,), optional
            Days since publication, NaN if unknown. Default: unknown.
        item_keys, creator_keys : sequence of str, shape (k,), optional
            External ids (``""`` for an item without a creator). Default: ``""``.
        tags : sequence of sequence of str, shape (k, *), optional
            Each item's tags. Default: none.

        Raises
        ------
        ValueError
            On mismatched lengths, repeated item ids or an unknown provenance class.
        """
        ids = np.asarray(item_ids, dtype=np.int64).reshape(-1)
        k = ids.size
        if np.unique(ids).size != k:
            raise ValueError("item_ids must be unique")
        codes = np.full(k, _UNKNOWN, dtype=np.int8)
        if provenance is not None:
            names = np.asarray(list(provenance), dtype=np.str_).reshape(-1)
            if names.shape != (k,):
                raise ValueError(f"provenance has {names.size} entries, expected {k}")
            known = np.asarray(PROVENANCE_CLASSES, dtype=np.str_)
            position = np.searchsorted(np.sort(known), names)
            sorted_known = np.sort(known)
            ok = (position < known.size) & (
                sorted_known[np.minimum(position, known.size - 1)] == names
            )
            if not bool(ok.all()):
                raise ValueError(f"unknown provenance class {names[~ok][0]!r}")
            lookup = np.array([PROVENANCE_CODES[str(name)] for name in sorted_known], dtype=np.int8)
            codes = lookup[position]
        keys = _column(None if item_keys is None else list(item_keys), k, np.str_, "", "item_keys")
        ckeys = _column(
            None if creator_keys is None else list(creator_keys), k, np.str_, "", "creator_keys"
        )
        if tags is None:
            tag_names = np.empty(0, dtype=np.str_)
            matrix = csr_matrix((k, 0), dtype=np.bool_)
        else:
            if len(tags) != k:
                raise ValueError(f"tags has {len(tags)} entries, expected {k}")
            lengths = np.fromiter((len(t) for t in tags), dtype=np.int64, count=k)
            flat = np.asarray([tag for item_tags in tags for tag in item_tags], dtype=np.str_)
            tag_names, column = np.unique(flat, return_inverse=True)
            rows = np.repeat(np.arange(k), lengths)
            matrix = csr_matrix(
                (np.ones(flat.size, dtype=np.bool_), (rows, column.reshape(-1))),
                shape=(k, tag_names.size),
            )
        return cls(
            item_ids=ids,
            creator_ids=_column(creator_ids, k, np.int64, -1, "creator_ids"),
            provenance=codes,
            age_days=_column(age_days, k, np.float32, np.nan, "age_days"),
            item_keys=keys,
            creator_keys=ckeys,
            tags=matrix,
            tag_names=tag_names,
        )

    def __len__(self) -> int:
        return int(self.item_ids.size)

    def refused_by(self, rules: Sequence[RefusalRule]) -> BoolArray:
        """Which items the community's refusal rules refuse.

        Parameters
        ----------
        rules : sequence of RefusalRule
            The policy's ``refusals``.

        Returns
        -------
        numpy.ndarray of bool, shape (k,)
            True for every item matched by at least one rule: ``tag`` (the item carries the tag),
            ``creator`` (its primary creator's external id), ``item`` (its external id),
            ``provenance`` (its class) and ``older_than`` (known age above ``days``; items of
            unknown age are kept).
        """
        refused = np.zeros(len(self), dtype=bool)
        tags = [r.tag for r in rules if isinstance(r, TagRefusal)]
        if tags and self.tag_names.size:
            columns = np.flatnonzero(np.isin(self.tag_names, np.asarray(tags, dtype=np.str_)))
            if columns.size:
                refused |= np.asarray(self.tags[:, columns].sum(axis=1)).reshape(-1) > 0
        creators = [r.creator for r in rules if isinstance(r, CreatorRefusal)]
        if creators:
            refused |= np.isin(self.creator_keys, np.asarray(creators, dtype=np.str_)) & (
                self.creator_keys != ""
            )
        items = [r.item for r in rules if isinstance(r, ItemRefusal)]
        if items:
            refused |= np.isin(self.item_keys, np.asarray(items, dtype=np.str_))
        classes = [
            PROVENANCE_CODES[r.provenance] for r in rules if isinstance(r, ProvenanceRefusal)
        ]
        if classes:
            refused |= np.isin(self.provenance, np.asarray(classes, dtype=np.int8))
        days = [r.days for r in rules if isinstance(r, OlderThanRefusal)]
        if days:
            with np.errstate(invalid="ignore"):
                refused |= self.age_days > min(days)
        return refused


# --- The catalogue in dense item-index space -------------------------------------------------


@dataclass(frozen=True)
class Catalogue:
    """Item attributes in the model's dense item-index space, as :func:`apply_policy` reads them.

    Build it with :meth:`build`; ``Catalogue.build(n_items)`` knows nothing (no creators,
    ``unknown`` provenance, unknown age, zero popularity, nothing refused).
    """

    creator: Int64Array
    """int64 ``[N]``: dense index of each item's primary creator; ``-1`` for none."""
    provenance: npt.NDArray[np.int8]
    """int8 ``[N]``: provenance code (:data:`PROVENANCE_CODES`)."""
    age_days: Float32Array
    """float32 ``[N]``: days since publication; NaN if unknown."""
    popularity: Float32Array
    """float32 ``[N]``: distinct members with a positive interaction."""
    refused: BoolArray
    """bool ``[N]``: refused for everyone (community rules, creator opt-outs)."""
    creator_long_tail: BoolArray
    """bool ``[C]``: creator is outside the top :data:`LONG_TAIL_HEAD_SHARE` by interactions."""
    creator_first_age_days: Float32Array
    """float32 ``[C]``: age of the creator's oldest item; NaN if unknown."""

    @property
    def n_items(self) -> int:
        """Number of item columns ``N``."""
        return int(self.creator.size)

    @classmethod
    def build(
        cls,
        n_items: int,
        *,
        creator: npt.ArrayLike | None = None,
        provenance: npt.ArrayLike | None = None,
        age_days: npt.ArrayLike | None = None,
        popularity: npt.ArrayLike | None = None,
        refused: npt.ArrayLike | None = None,
        creator_interactions: npt.ArrayLike | None = None,
        creator_first_age_days: npt.ArrayLike | None = None,
    ) -> Catalogue:
        """Build a catalogue from per-item arrays (any may be left out).

        Parameters
        ----------
        n_items : int
            Number of item columns ``N``.
        creator : array_like of int, shape (N,), optional
            Dense creator index ``0 .. C-1`` per item, ``-1`` for none. ``C`` is ``max + 1``.
        provenance : array_like of int8, shape (N,), optional
            Provenance codes; default ``unknown``.
        age_days : array_like of float, shape (N,), optional
            Days since publication; default unknown (NaN).
        popularity : array_like of float, shape (N,), optional
            Distinct interacting members; default 0.
        refused : array_like of bool, shape (N,), optional
            Items refused for everyone; default none.
        creator_interactions : array_like of float, shape (C,), optional
            Interactions per creator, which decide the long tail. Default: the sum of
            ``popularity`` over the creator's items. Creators are ranked by it, descending, ties
            by ascending index; the first ``ceil(0.2 * C)`` are the head, the rest long tail.
        creator_first_age_days : array_like of float, shape (C,), optional
            Age of each creator's first item. Default: the largest ``age_days`` over the
            creator's items here (NaN if none is known).
        """
        n = int(n_items)
        creators = _column(creator, n, np.int64, -1, "creator")
        if creators.size and int(creators.min()) < -1:
            raise ValueError("creator indices must be >= -1")
        n_creators = int(creators.max()) + 1 if creators.size else 0
        pop = _column(popularity, n, np.float32, 0.0, "popularity")
        ages = _column(age_days, n, np.float32, np.nan, "age_days")
        has = creators >= 0
        if creator_interactions is None:
            totals = np.bincount(creators[has], weights=pop[has], minlength=n_creators)
        else:
            totals = _column(creator_interactions, n_creators, np.float64, 0.0, "interactions")
        rank = np.empty(n_creators, dtype=np.int64)
        rank[np.lexsort((np.arange(n_creators), -totals))] = np.arange(n_creators)
        long_tail = rank >= math.ceil(LONG_TAIL_HEAD_SHARE * n_creators)
        if creator_first_age_days is None:
            first = np.full(n_creators, -np.inf, dtype=np.float32)
            known = has & ~np.isnan(ages)
            np.maximum.at(first, creators[known], ages[known])
            first[np.isneginf(first)] = np.nan
        else:
            first = _column(creator_first_age_days, n_creators, np.float32, np.nan, "first age")
        return cls(
            creator=creators,
            provenance=_column(provenance, n, np.int8, _UNKNOWN, "provenance"),
            age_days=ages,
            popularity=pop,
            refused=_column(refused, n, np.bool_, False, "refused"),
            creator_long_tail=long_tail,
            creator_first_age_days=first,
        )


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


QUOTA_EPSILON = 1e-9
"""Slack on ``q * j`` before it is floored, so that shares such as 0.3 of 10 count as 3."""


def quota_required(quota: float, length: int) -> int:
    """Items of a quota's group that any ``length`` consecutive entries of a feed must hold.

    ``floor(quota * length)``: a quota of 0.3 asks for 3 of any 10 entries in a row, 1 of any
    4, none of any 3.
    """
    return math.floor(quota * length + QUOTA_EPSILON)


def _quota_start(quota: float, m: int) -> npt.NDArray[np.float64]:
    """The window state of each row before its first entry (see :func:`_greedy`)."""
    return np.full(m, 1.0 - quota if quota > 0 else np.inf, dtype=np.float64)


def _quota_due(
    state: npt.NDArray[np.float64], quota: float, position: int
) -> npt.NDArray[np.bool_]:
    """Whether the entry at ``position`` must be of the group for every window to keep it."""
    due: npt.NDArray[np.bool_] = state - quota * position <= QUOTA_EPSILON
    return due


def _quota_restriction(
    eligible: BoolArray,
    long_tail: BoolArray,
    new: BoolArray,
    due_lt: BoolArray,
    due_new: BoolArray,
) -> tuple[BoolArray, BoolArray]:
    """Which candidates a position may take in rows where a quota is due (or both are next).

    Rows with a quota due now keep items of every due group; failing that, of any due group.
    Rows where neither is due now but both are at the next position keep items of either
    group, so that the two never fall due together. Failing all that, any eligible item.
    Returns the allowed mask and whether the row was restricted (for the reason bits).
    """
    any_due = (due_lt | due_new)[:, None]
    every = np.where(due_lt[:, None], long_tail, True) & np.where(due_new[:, None], new, True)
    first: BoolArray = eligible & np.where(any_due, every, long_tail | new)
    second: BoolArray = eligible & np.where(
        any_due, (due_lt[:, None] & long_tail) | (due_new[:, None] & new), False
    )
    use_first: BoolArray = np.asarray(first.any(axis=1))
    use_second: BoolArray = ~use_first & np.asarray(second.any(axis=1))
    allowed: BoolArray = np.where(
        use_first[:, None], first, np.where(use_second[:, None], second, eligible)
    )
    return allowed, use_first | use_second


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
