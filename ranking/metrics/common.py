"""What every metric shares: the ``recs`` / ``truth`` helpers, the attention model
(:func:`position_weights`) and :func:`summarize`."""

from __future__ import annotations

from typing import Literal

import numpy as np
import numpy.typing as npt
import scipy.sparse
from scipy.sparse import csr_matrix

Discount = Literal["none", "log2"]
"""How an appearance counts towards exposure: ``"none"`` = 1, ``"log2"`` = ``1/log2(pos + 2)``."""


FloatArray = npt.NDArray[np.float64]


def _recs(recs: npt.ArrayLike, n_items: int | None = None) -> npt.NDArray[np.int64]:
    array = np.asarray(recs)
    if array.ndim != 2:
        raise ValueError(f"recs must be two-dimensional (members x k), got shape {array.shape}")
    if array.size and array.dtype.kind not in "iu":
        raise TypeError(f"recs must hold integer item indices, got dtype {array.dtype}")
    array = array.astype(np.int64, copy=False)
    if array.size and int(array.min()) < -1:
        raise ValueError("recs must hold item indices >= 0, or -1 for padding")
    if n_items is not None and array.size and int(array.max()) >= n_items:
        raise IndexError(f"recs holds item index {int(array.max())}, but n_items is {n_items}")
    return array


def _csr(matrix: object, name: str, rows: int) -> csr_matrix:
    if not scipy.sparse.issparse(matrix):
        raise TypeError(f"{name} must be a scipy sparse matrix, got {type(matrix).__name__}")
    result = csr_matrix(matrix)
    if result.shape[0] != rows:
        raise ValueError(f"{name} has {result.shape[0]} rows, recs has {rows}")
    return result


def position_weights(
    n: int, discount: Discount = "log2", *, depth: int | None = None
) -> FloatArray:
    """How much a place in a feed counts, by position: the attention model of every metric.

    Parameters
    ----------
    n : int
        Number of places (feed length).
    discount : {"none", "log2"}, default "log2"
        ``"none"``: every place counts 1. ``"log2"``: place ``p`` (0 = top) counts
        ``1 / log2(p + 2)``, the nDCG discount: 1 for the first place, 0.63 for the second,
        about 0.29 for the tenth and 0.18 for the fiftieth.
    depth : int, optional
        Places from ``depth`` on count 0 (what apps do not show); ``None`` keeps every place.

    Returns
    -------
    numpy.ndarray of float64, shape (n,)
    """
    if discount == "none":
        weights = np.ones(n, dtype=np.float64)
    elif discount == "log2":
        weights = 1.0 / np.log2(np.arange(n, dtype=np.float64) + 2.0)
    else:
        raise ValueError(f"unknown discount {discount!r}; expected 'none' or 'log2'")
    if depth is not None:
        if depth < 1:
            raise ValueError(f"depth must be >= 1, got {depth}")
        weights[depth:] = 0.0
    return weights


def _indicator(recs: npt.NDArray[np.int64], n_items: int) -> csr_matrix:
    """Member x item matrix counting each member's recommended items (padding dropped)."""
    valid = recs >= 0
    rows = np.nonzero(valid)[0]
    return csr_matrix(
        (np.ones(rows.size, dtype=np.float64), (rows, recs[valid])),
        shape=(recs.shape[0], n_items),
    )


def _hits(recs: npt.NDArray[np.int64], truth: csr_matrix) -> npt.NDArray[np.bool_]:
    """``(m, k)`` bool: whether each recommended slot is in the member's truth row."""
    n_items = max(int(truth.shape[1]), int(recs.max(initial=-1)) + 1)
    truth = truth.copy()
    truth.sum_duplicates()
    truth.eliminate_zeros()
    truth_rows = np.repeat(np.arange(truth.shape[0], dtype=np.int64), np.diff(truth.indptr))
    truth_keys = truth_rows * n_items + truth.indices.astype(np.int64)
    rec_keys = np.arange(recs.shape[0], dtype=np.int64)[:, None] * n_items + recs
    return (recs >= 0) & np.isin(rec_keys, truth_keys)


def _masked_mean(values: FloatArray, valid: npt.NDArray[np.bool_]) -> FloatArray:
    """Row means of ``values`` over ``valid`` slots; ``NaN`` for rows with no valid slot."""
    count = valid.sum(axis=1)
    total = np.where(valid, values, 0.0).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def summarize(values: npt.ArrayLike) -> dict[str, float | int | None]:
    """Mean of a per-member metric over the members for whom it is defined.

    Parameters
    ----------
    values : array_like of float, shape (m,)
        Per-member values, ``NaN`` where undefined.

    Returns
    -------
    dict
        ``{"mean": float or None, "n": int, "n_excluded": int}``: the mean over the finite
        values (``None`` if there are none), how many members it averages, and how many were
        left out because their value is ``NaN``.
    """
    array = np.asarray(values, dtype=np.float64)
    defined = np.isfinite(array)
    n = int(defined.sum())
    return {
        "mean": float(array[defined].mean()) if n else None,
        "n": n,
        "n_excluded": int(array.size - n),
    }
