"""Producer metrics: over the whole batch of lists, one number (or one value per item /
creator); exposure as in :mod:`ranking.metrics`."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import numpy.typing as npt

from ranking.datasets import AI_GENERATED
from ranking.metrics.common import (
    Discount,
    FloatArray,
    _recs,
    position_weights,
)


def exposure(recs: npt.ArrayLike, n_items: int, *, discount: Discount = "none") -> FloatArray:
    """Exposure of every item: its appearances across all lists, optionally position-discounted.

    Parameters
    ----------
    recs : array_like of int, shape (m, k)
        Recommended item indices, ``-1`` padded.
    n_items : int
        Catalogue size.
    discount : {"none", "log2"}, default "none"
        ``"none"``: each appearance counts 1. ``"log2"``: an appearance at position ``p``
        (0 = top) counts ``1 / log2(p + 2)``.

    Returns
    -------
    numpy.ndarray of float64, shape (n_items,)
    """
    array = _recs(recs, n_items)
    weight = np.broadcast_to(position_weights(array.shape[1], discount), array.shape)
    valid = array >= 0
    return np.bincount(array[valid], weights=weight[valid], minlength=n_items).astype(np.float64)


def creator_exposure(
    recs: npt.ArrayLike,
    item_creator: npt.ArrayLike,
    n_creators: int,
    *,
    discount: Discount = "none",
) -> FloatArray:
    """Exposure of every creator: the summed exposure of the items they are primary creator of.

    Parameters
    ----------
    recs : array_like of int, shape (m, k)
        Recommended item indices, ``-1`` padded.
    item_creator : array_like of int, shape (n_items,)
        Creator index of each item; ``-1`` (placeholder / none) is left out.
    n_creators : int
        Number of creators.
    discount : {"none", "log2"}, default "none"
        See :func:`exposure`.

    Returns
    -------
    numpy.ndarray of float64, shape (n_creators,)
    """
    owner = np.asarray(item_creator, dtype=np.int64)
    return creator_totals(exposure(recs, owner.size, discount=discount), owner, n_creators)


def creator_totals(
    item_values: npt.ArrayLike, item_creator: npt.ArrayLike, n_creators: int
) -> FloatArray:
    """Sum a per-item value (e.g. :func:`exposure`) over each creator's items.

    Parameters
    ----------
    item_values : array_like of float, shape (n_items,)
    item_creator : array_like of int, shape (n_items,)
        Creator index of each item; ``-1`` items are left out.
    n_creators : int

    Returns
    -------
    numpy.ndarray of float64, shape (n_creators,)
    """
    values = np.asarray(item_values, dtype=np.float64)
    owner = np.asarray(item_creator, dtype=np.int64)
    owned = owner >= 0
    return np.bincount(owner[owned], weights=values[owned], minlength=n_creators).astype(np.float64)


def exposure_share(values: npt.ArrayLike, mask: npt.ArrayLike) -> float:
    """Share of the total of ``values`` (exposure per item or per creator) held by ``mask``.

    Returns
    -------
    float
        In ``[0, 1]`` for non-negative values; ``NaN`` if the values sum to 0.
    """
    array = np.asarray(values, dtype=np.float64)
    total = float(array.sum())
    return float(array[np.asarray(mask, dtype=bool)].sum() / total) if total > 0 else math.nan


def gini(values: npt.ArrayLike) -> float:
    """Gini coefficient of non-negative values (0 = perfectly equal).

    ``G = sum_i (2 i - n - 1) x_(i) / (n sum_i x_i)`` over the values sorted ascending
    (``i = 1 .. n``). Equal values give 0; all mass on one of ``n`` values gives ``(n - 1) / n``.

    Parameters
    ----------
    values : array_like of float, shape (n,)
        E.g. :func:`exposure` over the whole catalogue, zeros included.

    Returns
    -------
    float
        ``NaN`` if there are no values or they sum to 0.

    Raises
    ------
    ValueError
        If a value is negative.
    """
    array = np.sort(np.asarray(values, dtype=np.float64).ravel())
    if array.size and float(array[0]) < 0:
        raise ValueError("gini needs non-negative values")
    total = float(array.sum())
    if array.size == 0 or total <= 0:
        return math.nan
    n = array.size
    rank = np.arange(1, n + 1, dtype=np.float64)
    return float(((2.0 * rank - n - 1.0) * array).sum() / (n * total))


def item_gini(recs: npt.ArrayLike, n_items: int, *, discount: Discount = "none") -> float:
    """Gini coefficient of item exposure over the whole catalogue (never-shown items count 0).

    See :func:`exposure` and :func:`gini`.
    """
    return gini(exposure(recs, n_items, discount=discount))


def creator_gini(
    recs: npt.ArrayLike,
    item_creator: npt.ArrayLike,
    n_creators: int,
    *,
    discount: Discount = "none",
) -> float:
    """Gini coefficient of creator exposure over all ``n_creators`` (placeholder left out).

    See :func:`creator_exposure` and :func:`gini`.
    """
    return gini(creator_exposure(recs, item_creator, n_creators, discount=discount))


def item_coverage(recs: npt.ArrayLike, n_items: int) -> float:
    """Share of the ``n_items`` catalogue recommended to at least one member."""
    array = _recs(recs, n_items)
    if n_items <= 0:
        return math.nan
    return float(np.unique(array[array >= 0]).size / n_items)


def creator_coverage(recs: npt.ArrayLike, item_creator: npt.ArrayLike, n_creators: int) -> float:
    """Share of the ``n_creators`` creators with at least one item recommended to someone.

    Items of the placeholder creator (``-1``) do not count.
    """
    owner = np.asarray(item_creator, dtype=np.int64)
    array = _recs(recs, owner.size)
    if n_creators <= 0:
        return math.nan
    shown = owner[np.unique(array[array >= 0])]
    return float(np.unique(shown[shown >= 0]).size / n_creators)


def head_creators(
    creator_counts: npt.ArrayLike, *, head_fraction: float = 0.2
) -> npt.NDArray[np.bool_]:
    """The "head": the top ``ceil(head_fraction * n_creators)`` creators by interaction count.

    Parameters
    ----------
    creator_counts : array_like, shape (n_creators,)
        Training interactions with each creator's items.
    head_fraction : float, default 0.2
        Share of creators in the head, in ``[0, 1]``.

    Returns
    -------
    numpy.ndarray of bool, shape (n_creators,)
        ``True`` for head creators. Ties at the boundary go to the lower creator index, so the
        head has exactly ``ceil(head_fraction * n_creators)`` members.
    """
    counts = np.asarray(creator_counts, dtype=np.float64)
    if not 0.0 <= head_fraction <= 1.0:
        raise ValueError(f"head_fraction must lie in [0, 1], got {head_fraction}")
    size = math.ceil(head_fraction * counts.size - 1e-9)
    order = np.argsort(-counts, kind="stable")
    head = np.zeros(counts.size, dtype=bool)
    head[order[:size]] = True
    return head


def creator_exposure_share(
    recs: npt.ArrayLike,
    item_creator: npt.ArrayLike,
    creator_mask: npt.ArrayLike,
    *,
    discount: Discount = "none",
) -> float:
    """Share of the exposure of attributed items that goes to the creators in ``creator_mask``.

    Parameters
    ----------
    recs : array_like of int, shape (m, k)
        Recommended item indices, ``-1`` padded.
    item_creator : array_like of int, shape (n_items,)
        Creator index of each item; ``-1`` items are left out of numerator and denominator.
    creator_mask : array_like of bool, shape (n_creators,)
        The group of creators.
    discount : {"none", "log2"}, default "none"
        See :func:`exposure`.

    Returns
    -------
    float
        In ``[0, 1]``; ``NaN`` if no attributed item was recommended.
    """
    mask = np.asarray(creator_mask, dtype=bool)
    return exposure_share(creator_exposure(recs, item_creator, mask.size, discount=discount), mask)


def long_tail_creator_share(
    recs: npt.ArrayLike,
    item_creator: npt.ArrayLike,
    creator_counts: npt.ArrayLike,
    *,
    head_fraction: float = 0.2,
    discount: Discount = "none",
) -> float:
    """Share of (attributed) exposure going to long-tail creators.

    The long tail is every creator outside :func:`head_creators` (the top ``head_fraction`` of
    creators by training interactions). See :func:`creator_exposure_share`.
    """
    tail = ~head_creators(creator_counts, head_fraction=head_fraction)
    return creator_exposure_share(recs, item_creator, tail, discount=discount)


def new_creator_share(
    recs: npt.ArrayLike,
    item_creator: npt.ArrayLike,
    creator_first_published: npt.ArrayLike,
    *,
    since: float,
    discount: Discount = "none",
) -> float:
    """Share of (attributed) exposure going to new creators.

    A creator is *new* if their first item was published at or after ``since`` (unix seconds);
    creators with an unknown first publication (``NaN``) are not new. See
    :func:`creator_exposure_share`.
    """
    new = new_creators(creator_first_published, since=since)
    return creator_exposure_share(recs, item_creator, new, discount=discount)


def new_creators(creator_first_published: npt.ArrayLike, *, since: float) -> npt.NDArray[np.bool_]:
    """Which creators are *new*: first item published at or after ``since`` (unix seconds).

    A creator whose first publication is unknown (``NaN``) is not new.
    """
    first = np.asarray(creator_first_published, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        return first >= since


def provenance_share(
    recs: npt.ArrayLike,
    item_provenance: npt.ArrayLike,
    *,
    codes: Sequence[int] = (AI_GENERATED,),
    discount: Discount = "none",
) -> float:
    """Share of all exposure going to items whose provenance code is in ``codes``.

    Parameters
    ----------
    recs : array_like of int, shape (m, k)
        Recommended item indices, ``-1`` padded.
    item_provenance : array_like of int, shape (n_items,)
        Provenance code per item (see :data:`ranking.datasets.PROVENANCES`).
    codes : sequence of int, default ``(AI_GENERATED,)``
        The provenance codes counted; the default gives the AI-generated share.
    discount : {"none", "log2"}, default "none"
        See :func:`exposure`.

    Returns
    -------
    float
        ``NaN`` if nothing was recommended.
    """
    provenance = np.asarray(item_provenance, dtype=np.int64)
    per_item = exposure(recs, provenance.size, discount=discount)
    return exposure_share(per_item, np.isin(provenance, np.asarray(list(codes), dtype=np.int64)))


class Churn(NamedTuple):
    """Result of :func:`churn`."""

    per_member: FloatArray
    """float64 ``(m,)``: ``1 - |A ∩ B| / k`` per member."""
    mean: float
    """Mean of :attr:`per_member` (``NaN`` for no members)."""


def churn(recs_a: npt.ArrayLike, recs_b: npt.ArrayLike) -> Churn:
    """How much each member's list changes between two rankings (order ignored).

    Parameters
    ----------
    recs_a, recs_b : array_like of int, shape (m, k)
        Two rankings of the same members in the same row order, ``-1`` padded.

    Returns
    -------
    Churn
        ``per_member = 1 - |A ∩ B| / k`` with ``k`` the number of columns (padding is never
        shared, so two identical lists of fewer than ``k`` items still churn), and its mean.
        ``0`` = same items, ``1`` = nothing in common.
    """
    a = _recs(recs_a)
    b = _recs(recs_b)
    if a.shape != b.shape:
        raise ValueError(f"recs_a and recs_b differ in shape: {a.shape} != {b.shape}")
    m, k = a.shape
    if k == 0:
        per_member = np.full(m, np.nan)
    else:
        width = int(max(a.max(initial=-1), b.max(initial=-1))) + 1
        row = np.arange(m, dtype=np.int64)[:, None] * width
        shared = (a >= 0) & np.isin(row + a, (row + b)[b >= 0])
        per_member = 1.0 - shared.sum(axis=1) / float(k)
    mean = float(per_member.mean()) if m and k else math.nan
    return Churn(per_member=per_member.astype(np.float64), mean=mean)
