"""Item attributes: :class:`ItemAttributes` in database-id space (what a caller loads), which
also resolves the policy's refusal rules (:meth:`ItemAttributes.refused_by`), and
:class:`Catalogue` in the dense item-index space of the model, which
:func:`~ranking.effects.apply_policy` reads."""

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
    CreatorRefusal,
    ItemRefusal,
    OlderThanRefusal,
    ProvenanceRefusal,
    RefusalRule,
    TagRefusal,
)

PROVENANCE_CODES: dict[str, int] = {name: code for code, name in enumerate(PROVENANCE_CLASSES)}
"""Code of each provenance class (``int8``): ``human`` 0, ``ai_assisted`` 1, ``ai_generated`` 2,
``unknown`` 3."""
_UNKNOWN = PROVENANCE_CODES["unknown"]

LONG_TAIL_HEAD_SHARE = 0.2
"""Share of creators (the most interacted-with) that are *not* long tail."""

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
