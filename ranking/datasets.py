"""Interaction data sets for offline evaluation, as plain arrays.

:class:`InteractionData` holds a community's interactions (who, what, how much, when) and the item
attributes the fairness metrics need (primary creator, tags, provenance, publication time), all as
numpy arrays and one sparse matrix. :func:`load_movielens` reads MovieLens in RecBole's atomic-file
layout straight from disk (no Django, no database), with the same mapping decisions as the
product's importer (``feeds/importers/movielens.py``, ``docs/importers.md``):

* films are items; their genres (``class``) are tags, without the pseudo-genre ``unknown``;
* directors are creators; a film's **primary** creator is its first-listed director in
  ``*.directed_by.kg``; films with no known director belong to the placeholder creator
  ``unattributed``, stored as creator index ``-1`` (producer metrics leave it out);
* every film is human-made (provenance code :data:`HUMAN`);
* a film's publication time is January 1 of its ``release_year``, 00:00 UTC (``NaN`` when the
  year is not a number, as for films 267 and 1412 in ml-100k).
"""

from __future__ import annotations

import calendar
import csv
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import numpy as np
import numpy.typing as npt
from scipy.sparse import csr_matrix

__all__ = [
    "AI_ASSISTED",
    "AI_GENERATED",
    "HUMAN",
    "PROVENANCES",
    "UNKNOWN",
    "InteractionData",
    "load_movielens",
]

PROVENANCES: Final = ("human", "ai_assisted", "ai_generated", "unknown")
"""Provenance names; an item's provenance code is the index into this tuple."""
HUMAN: Final = 0
"""Provenance code of human-made items."""
AI_ASSISTED: Final = 1
"""Provenance code of AI-assisted items."""
AI_GENERATED: Final = 2
"""Provenance code of AI-generated items."""
UNKNOWN: Final = 3
"""Provenance code of items of unknown origin."""

_DROPPED_TAGS: Final = frozenset({"unknown"})


@dataclass(frozen=True, eq=False)
class InteractionData:
    """Interactions plus item and creator attributes, as parallel arrays.

    Interactions are in file order. Item attributes are indexed by the item's position in
    :attr:`items` (the *item index*, ``0 .. n_items - 1``); creator attributes by the creator
    index (``0 .. n_creators - 1``). Arrays are not copied; treat them as read-only.

    Attributes
    ----------
    member_ids : numpy.ndarray of int64, shape (k,)
        External id of the member of each interaction.
    item_ids : numpy.ndarray of int64, shape (k,)
        External id of the item of each interaction; every one is in :attr:`items`.
    weights : numpy.ndarray of float32, shape (k,)
        Weight of each interaction (MovieLens: the star rating, 1-5).
    timestamps : numpy.ndarray of int64, shape (k,)
        Unix time (seconds) of each interaction.
    items : numpy.ndarray of int64, shape (n_items,)
        The catalogue: sorted, unique external item ids, including items nobody interacted with.
    item_creator : numpy.ndarray of int64, shape (n_items,)
        Primary creator index of each item, or ``-1`` for the placeholder creator / no creator.
    creators : tuple of str, length n_creators
        External id (or name) of each creator, by creator index. The placeholder is not listed.
    item_tags : scipy.sparse.csr_matrix of float32, shape (n_items, n_tags)
        ``1.0`` where the item carries the tag.
    tag_names : tuple of str, length n_tags
        Name of each tag column, sorted.
    item_provenance : numpy.ndarray of int8, shape (n_items,)
        Provenance code of each item (index into :data:`PROVENANCES`).
    item_published : numpy.ndarray of float64, shape (n_items,)
        Publication time (unix seconds) of each item; ``NaN`` when unknown.
    creator_first_published : numpy.ndarray of float64, shape (n_creators,)
        Earliest :attr:`item_published` over the items whose primary creator is this one
        (``NaN`` when none is known): when the creator first appeared.
    name : str
        A label for reports (MovieLens: the dataset prefix, e.g. ``"ml-100k"``).
    """

    member_ids: npt.NDArray[np.int64]
    item_ids: npt.NDArray[np.int64]
    weights: npt.NDArray[np.float32]
    timestamps: npt.NDArray[np.int64]
    items: npt.NDArray[np.int64]
    item_creator: npt.NDArray[np.int64]
    creators: tuple[str, ...]
    item_tags: csr_matrix
    tag_names: tuple[str, ...]
    item_provenance: npt.NDArray[np.int8]
    item_published: npt.NDArray[np.float64]
    creator_first_published: npt.NDArray[np.float64] = field(init=False)
    name: str = "data"

    def __post_init__(self) -> None:
        k = self.member_ids.shape
        if not (k == self.item_ids.shape == self.weights.shape == self.timestamps.shape):
            raise ValueError("member_ids, item_ids, weights and timestamps must be parallel")
        n_items = self.items.size
        if self.items.size > 1 and bool(np.any(np.diff(self.items) <= 0)):
            raise ValueError("items must be sorted and unique")
        for name in ("item_creator", "item_provenance", "item_published"):
            if getattr(self, name).shape != (n_items,):
                raise ValueError(f"{name} must have shape ({n_items},)")
        if self.item_tags.shape != (n_items, len(self.tag_names)):
            raise ValueError(f"item_tags must have shape ({n_items}, {len(self.tag_names)})")
        if self.item_creator.size and (
            int(self.item_creator.min()) < -1 or int(self.item_creator.max()) >= self.n_creators
        ):
            raise ValueError(f"item_creator must lie in [-1, {self.n_creators})")
        if self.item_ids.size and bool(np.any(self.item_index(self.item_ids) < 0)):
            raise ValueError("every interaction's item must be in items")
        first = np.full(self.n_creators, np.inf)
        owned = (self.item_creator >= 0) & ~np.isnan(self.item_published)
        np.minimum.at(first, self.item_creator[owned], self.item_published[owned])
        first[np.isinf(first)] = np.nan
        object.__setattr__(self, "creator_first_published", first)

    @property
    def n_interactions(self) -> int:
        """Number of interactions."""
        return int(self.member_ids.size)

    @property
    def n_items(self) -> int:
        """Number of items in the catalogue."""
        return int(self.items.size)

    @property
    def n_creators(self) -> int:
        """Number of (real) creators; the placeholder is not counted."""
        return len(self.creators)

    @property
    def members(self) -> npt.NDArray[np.int64]:
        """Sorted, unique external ids of the members with at least one interaction."""
        return np.unique(self.member_ids)

    def item_index(self, ids: npt.ArrayLike) -> npt.NDArray[np.int64]:
        """Item index of each external item id; ``-1`` for ids outside the catalogue.

        Parameters
        ----------
        ids : array_like of int
            External item ids, any shape.

        Returns
        -------
        numpy.ndarray of int64
            Same shape as ``ids``.
        """
        query = np.asarray(ids, dtype=np.int64)
        if self.items.size == 0:
            return np.full(query.shape, -1, dtype=np.int64)
        position = np.minimum(np.searchsorted(self.items, query), self.items.size - 1)
        return np.where(self.items[position] == query, position, -1).astype(np.int64)


def _read_atomic(path: Path, columns: tuple[str, ...]) -> list[list[str]]:
    """Rows of a RecBole atomic file, checking that its header names ``columns`` in order."""
    with open(path, encoding="utf-8", newline="") as handle:
        reader = csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE)
        header = next(reader, None)
        if header is None:
            raise ValueError(f"{path}: empty file")
        names = tuple(column.split(":", 1)[0] for column in header)
        if names != columns:
            raise ValueError(f"{path}: expected columns {columns}, got {names}")
        rows = []
        for line_number, row in enumerate(reader, start=2):
            if len(row) != len(columns):
                raise ValueError(
                    f"{path}:{line_number}: expected {len(columns)} columns, got {len(row)}"
                )
            rows.append(row)
    return rows


def _year_start(year: str) -> float:
    """Unix time of January 1 of ``year``, 00:00 UTC; ``NaN`` if ``year`` is not an integer."""
    try:
        value = int(year)
    except ValueError:
        return float("nan")
    return float(calendar.timegm((value, 1, 1, 0, 0, 0)))


def load_movielens(directory: str | Path, *, dataset: str | None = None) -> InteractionData:
    """Load MovieLens from RecBole's atomic-file layout, with film directors as creators.

    Reads ``{dataset}.inter``, ``{dataset}.item``, ``{dataset}.link`` and
    ``{dataset}.directed_by.kg`` (``{dataset}.user`` is not needed). See the module docstring
    for the mapping decisions.

    Parameters
    ----------
    directory : str or pathlib.Path
        Folder holding the files, e.g. ``shared/data/ml-100k``.
    dataset : str, optional
        File-name prefix; defaults to the folder's name.

    Returns
    -------
    InteractionData
        Interactions in file order (weights = star ratings); the catalogue is every film of
        ``{dataset}.item``; creators are the distinct primary directors, indexed in sorted order
        of their Freebase ids.

    Raises
    ------
    FileNotFoundError
        If a file is missing.
    ValueError
        On a malformed file, or an interaction whose film is not in ``{dataset}.item``.

    Examples
    --------
    >>> data = load_movielens("../shared/data/ml-100k")  # doctest: +SKIP
    >>> data.n_interactions, data.n_items, data.n_creators  # doctest: +SKIP
    (100000, 1682, 1056)
    """
    folder = Path(directory)
    prefix = dataset if dataset is not None else folder.name

    inter = _read_atomic(folder / f"{prefix}.inter", ("user_id", "item_id", "rating", "timestamp"))
    table = np.array(inter, dtype=np.float64).reshape(-1, 4)
    member_ids = table[:, 0].astype(np.int64)
    item_ids = table[:, 1].astype(np.int64)
    weights = table[:, 2].astype(np.float32)
    timestamps = table[:, 3].astype(np.int64)

    films = _read_atomic(
        folder / f"{prefix}.item", ("item_id", "movie_title", "release_year", "class")
    )
    film_ids = np.array([int(row[0]) for row in films], dtype=np.int64)
    order = np.argsort(film_ids, kind="stable")
    items = film_ids[order]
    if items.size > 1 and bool(np.any(np.diff(items) == 0)):
        raise ValueError(f"{prefix}.item: repeated item_id")
    films = [films[i] for i in order.tolist()]
    published = np.array([_year_start(row[2]) for row in films], dtype=np.float64)

    item_tag_names = [
        sorted({tag for tag in row[3].split() if tag not in _DROPPED_TAGS}) for row in films
    ]
    tag_names = tuple(sorted({tag for tags in item_tag_names for tag in tags}))
    tag_column = {tag: column for column, tag in enumerate(tag_names)}
    tag_rows = np.repeat(np.arange(items.size), [len(tags) for tags in item_tag_names])
    tag_cols = np.array(
        [tag_column[tag] for tags in item_tag_names for tag in tags], dtype=np.int64
    )
    item_tags = csr_matrix(
        (np.ones(tag_rows.size, dtype=np.float32), (tag_rows, tag_cols)),
        shape=(items.size, len(tag_names)),
    )

    entity_of: dict[str, int] = {}
    for item, entity in _read_atomic(folder / f"{prefix}.link", ("item_id", "entity_id")):
        entity_of.setdefault(entity, int(item))
    primary: dict[int, str] = {}
    for head, _relation, tail in _read_atomic(
        folder / f"{prefix}.directed_by.kg", ("head_id", "relation_id", "tail_id")
    ):
        film = entity_of.get(head)
        if film is not None:
            primary.setdefault(film, tail)  # first-listed director is the primary creator
    creators = tuple(sorted(set(primary.values())))
    creator_index = {creator: index for index, creator in enumerate(creators)}
    item_creator = np.array(
        [creator_index[primary[i]] if i in primary else -1 for i in items.tolist()],
        dtype=np.int64,
    )

    data = InteractionData(
        member_ids=member_ids,
        item_ids=item_ids,
        weights=weights,
        timestamps=timestamps,
        items=items,
        item_creator=item_creator,
        creators=creators,
        item_tags=item_tags,
        tag_names=tag_names,
        item_provenance=np.full(items.size, HUMAN, dtype=np.int8),
        item_published=published,
        name=prefix,
    )
    return data
