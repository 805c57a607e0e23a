"""Long-tail and new-creator quotas: how many items of a group any run of entries must hold, and
the window state the greedy selection keeps (see :func:`ranking.effects.greedy._greedy`)."""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

from ranking.effects.catalogue import (
    BoolArray,
)

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
