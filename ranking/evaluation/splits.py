"""Step 1, **split**: train / test (and validation) parts of a data set's interactions, and the
member x item matrices of each part."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
from scipy.sparse import csr_matrix

from ranking.datasets import InteractionData

SplitMethod = Literal["random", "temporal"]


SplitPart = Literal["test", "validation"]


@dataclass(frozen=True, eq=False)
class Split:
    """A train/test partition of a data set's interactions.

    Attributes
    ----------
    train : numpy.ndarray of bool, shape (n_interactions,)
        ``True`` for training interactions; the rest are held out, except ``excluded`` ones.
    method : {"random", "temporal"}
        How it was made.
    test_fraction : float
        The requested share of each member's interactions held out.
    seed : int or None
        The seed of a random split; ``None`` for a temporal one.
    part : {"test", "validation"}, default "test"
        ``"validation"`` for a split of another split's training part (:func:`split_validation`).
    excluded : numpy.ndarray of bool, shape (n_interactions,), optional
        Interactions in neither part: a validation split's outer test part, which must neither
        train the model nor be measured. ``None``: every interaction is in one part.
    """

    train: npt.NDArray[np.bool_]
    method: SplitMethod
    test_fraction: float
    seed: int | None = None
    part: SplitPart = "test"
    excluded: npt.NDArray[np.bool_] | None = None

    @property
    def test(self) -> npt.NDArray[np.bool_]:
        """``True`` for held-out interactions (``~train``, less ``excluded``)."""
        return ~self.train if self.excluded is None else ~(self.train | self.excluded)

    def describe(self) -> dict[str, Any]:
        """The split's parameters and sizes, JSON-ready."""
        return {
            "method": self.method,
            "test_fraction": self.test_fraction,
            "seed": self.seed,
            "part": self.part,
            "n_train": int(self.train.sum()),
            "n_test": int(self.test.sum()),
            "n_excluded": 0 if self.excluded is None else int(self.excluded.sum()),
        }


def _check_fraction(test_fraction: float) -> None:
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must lie in (0, 1), got {test_fraction}")


def _holdout(
    members: npt.NDArray[np.int64], order: npt.NDArray[np.int64], test_fraction: float
) -> npt.NDArray[np.bool_]:
    """Hold out the last ``n_test`` of each member's interactions in ``order``.

    ``order`` sorts the interactions by member, then by the within-member key. A member with
    ``n`` interactions holds out ``min(n - 1, floor(test_fraction * n + 0.5))``.
    """
    sorted_members = members[order]
    _, starts, counts = np.unique(sorted_members, return_index=True, return_counts=True)
    n_test = np.minimum(counts - 1, np.floor(test_fraction * counts + 0.5).astype(np.int64))
    rank = np.arange(order.size) - np.repeat(starts, counts)
    test_sorted = rank >= np.repeat(counts - n_test, counts)
    train = np.ones(order.size, dtype=bool)
    train[order[test_sorted]] = False
    return train


def split_random(data: InteractionData, *, test_fraction: float = 0.2, seed: int = 42) -> Split:
    """Per-member random holdout.

    Each member's interactions are shuffled with ``np.random.default_rng(seed)`` and
    ``min(n - 1, round(test_fraction * n))`` of their ``n`` interactions (rounding halves up)
    are held out, so every member keeps at least one training interaction and a member with a
    single interaction is entirely in train. Every member with enough interactions is thus
    evaluated, in proportion to their activity.

    Parameters
    ----------
    data : InteractionData
        The interactions.
    test_fraction : float, default 0.2
        Share held out per member, in ``(0, 1)``.
    seed : int, default 42
        Seed of the shuffle; the same seed gives the same split.

    Returns
    -------
    Split
    """
    _check_fraction(test_fraction)
    rng = np.random.default_rng(seed)
    key = rng.random(data.n_interactions)
    order = np.lexsort((key, data.member_ids)).astype(np.int64)
    train = _holdout(data.member_ids, order, test_fraction)
    return Split(train=train, method="random", test_fraction=test_fraction, seed=seed)


def split_temporal(data: InteractionData, *, test_fraction: float = 0.2) -> Split:
    """Per-member temporal holdout: each member's latest interactions are held out.

    Each member's interactions are ordered by timestamp (ties by position in the data) and the
    last ``min(n - 1, round(test_fraction * n))`` are held out. This is a **per-member** cut, not
    a global time cutoff: every member is evaluated (as in :func:`split_random`), but one
    member's training data may postdate another member's test data, so it measures "predict
    what this member does next" rather than a strict replay of the past.

    Parameters
    ----------
    data : InteractionData
        The interactions.
    test_fraction : float, default 0.2
        Share held out per member, in ``(0, 1)``.

    Returns
    -------
    Split
    """
    _check_fraction(test_fraction)
    position = np.arange(data.n_interactions)
    order = np.lexsort((position, data.timestamps, data.member_ids)).astype(np.int64)
    train = _holdout(data.member_ids, order, test_fraction)
    return Split(train=train, method="temporal", test_fraction=test_fraction, seed=None)


def split_validation(
    data: InteractionData,
    split: Split,
    *,
    validation_fraction: float | None = None,
    seed: int | None = None,
) -> Split:
    """Split ``split``'s training part again, the same way, into train and validation.

    The validation part is to *choose* with (a policy, its settings): the test part of ``split``
    is then left for *reporting* on, having played no part in the choice. Made like ``split``
    but on its training interactions only: for a temporal split, each member's latest
    ``validation_fraction`` of their *training* interactions (so validation precedes test for
    every member, as a tuning period before the reported one); for a random split, a random
    holdout of them. ``split``'s test part is ``excluded``: it trains nothing and is measured
    nowhere.

    Parameters
    ----------
    data : InteractionData
        The interactions ``split`` was made from.
    split : Split
        A test split (from :func:`split_random` or :func:`split_temporal`).
    validation_fraction : float, optional
        Share of each member's *training* interactions held out for validation, in ``(0, 1)``;
        default ``split.test_fraction`` (0.2 of the 80 % left by a 0.2 test split: 16 % of all).
    seed : int, optional
        Seed of a random validation holdout; default ``split.seed + 1``, so it is not the shuffle
        that made the test part. Ignored for a temporal split.

    Returns
    -------
    Split
        With ``part="validation"``, the same ``method``, ``test_fraction`` the validation
        fraction, and ``excluded`` the outer test part.

    Raises
    ------
    ValueError
        If ``split`` is itself a validation split or the fraction is outside ``(0, 1)``.
    """
    if split.part != "test":
        raise ValueError("split_validation needs a test split, not a validation split")
    fraction = split.test_fraction if validation_fraction is None else validation_fraction
    _check_fraction(fraction)
    inside = np.flatnonzero(split.train)
    members = data.member_ids[inside]
    if split.method == "temporal":
        position = np.arange(inside.size)
        local = np.lexsort((position, data.timestamps[inside], members)).astype(np.int64)
        chosen_seed = None
    else:
        chosen_seed = (0 if split.seed is None else split.seed + 1) if seed is None else seed
        key = np.random.default_rng(chosen_seed).random(inside.size)
        local = np.lexsort((key, members)).astype(np.int64)
    keep = _holdout(members, local, fraction)
    train = np.zeros_like(split.train)
    train[inside[keep]] = True
    return Split(
        train=train,
        method=split.method,
        test_fraction=fraction,
        seed=chosen_seed,
        part="validation",
        excluded=split.test.copy(),
    )


def _member_rows(
    data: InteractionData, member_ids: npt.NDArray[np.int64], mask: npt.NDArray[np.bool_]
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """(row in ``member_ids``, item index) of the interactions in ``mask`` by those members."""
    members = data.member_ids[mask]
    items = data.item_index(data.item_ids[mask])
    order = np.argsort(member_ids, kind="stable")
    sorted_ids = member_ids[order]
    position = np.minimum(np.searchsorted(sorted_ids, members), max(sorted_ids.size - 1, 0))
    known = sorted_ids.size > 0
    found = (sorted_ids[position] == members) if known else np.zeros(members.size, dtype=bool)
    return order[position[found]], items[found]


def _binary(
    rows: npt.NDArray[np.int64], cols: npt.NDArray[np.int64], shape: tuple[int, int]
) -> csr_matrix:
    matrix = csr_matrix((np.ones(rows.size, dtype=np.float32), (rows, cols)), shape=shape)
    matrix.sum_duplicates()
    matrix.data[:] = 1.0
    return matrix


def history_matrix(data: InteractionData, split: Split, member_ids: npt.ArrayLike) -> csr_matrix:
    """Training items of each member, as a binary member x item matrix.

    Parameters
    ----------
    data : InteractionData
    split : Split
    member_ids : array_like of int, shape (m,)
        External member ids; row ``r`` is ``member_ids[r]``.

    Returns
    -------
    scipy.sparse.csr_matrix of float32, shape (m, n_items)
    """
    ids = np.asarray(member_ids, dtype=np.int64)
    rows, cols = _member_rows(data, ids, split.train)
    return _binary(rows, cols, (ids.size, data.n_items))


def truth_matrix(data: InteractionData, split: Split, member_ids: npt.ArrayLike) -> csr_matrix:
    """Held-out items of each member, as a binary member x item matrix.

    Pairs the member also has in the training part are dropped (the pipeline never recommends
    an item back to a member who interacted with it).

    Parameters
    ----------
    data : InteractionData
    split : Split
    member_ids : array_like of int, shape (m,)
        External member ids; row ``r`` is ``member_ids[r]``.

    Returns
    -------
    scipy.sparse.csr_matrix of float32, shape (m, n_items)
    """
    ids = np.asarray(member_ids, dtype=np.int64)
    rows, cols = _member_rows(data, ids, split.test)
    held_out = _binary(rows, cols, (ids.size, data.n_items))
    seen = history_matrix(data, split, ids)
    truth = csr_matrix(held_out - held_out.multiply(seen))
    truth.eliminate_zeros()
    return truth


def make_split(
    data: InteractionData,
    method: SplitMethod = "random",
    *,
    test_fraction: float = 0.2,
    seed: int = 42,
    part: SplitPart = "test",
) -> Split:
    """The split the command line names: ``method``, then its validation part if asked.

    Parameters
    ----------
    data : InteractionData
    method : {"random", "temporal"}, default "random"
        :func:`split_random` (seeded with ``seed``) or :func:`split_temporal` (``seed`` unused).
    test_fraction : float, default 0.2
        Share of each member's interactions held out for test (and, for ``part="validation"``,
        of their remaining training interactions held out for validation).
    seed : int, default 42
    part : {"test", "validation"}, default "test"
        ``"validation"``: :func:`split_validation` of the test split, with its defaults.

    Returns
    -------
    Split
    """
    split = (
        split_random(data, test_fraction=test_fraction, seed=seed)
        if method == "random"
        else split_temporal(data, test_fraction=test_fraction)
    )
    return split if part == "test" else split_validation(data, split)
