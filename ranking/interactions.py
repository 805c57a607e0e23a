"""The user x item matrix ALS trains on, and the checks of the indices that build it."""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import scipy.sparse
from scipy.sparse import csr_matrix

Weighting = Literal["binary", "weight"]


def as_index_array(values: npt.ArrayLike, name: str, upper: int) -> npt.NDArray[np.int64]:
    """Validate ``values`` as a 1-D int array with every entry in ``[0, upper)``."""
    array = np.asarray(values)
    if array.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {array.shape}")
    if array.size == 0:
        return np.empty(0, dtype=np.int64)
    if array.dtype.kind not in "iu":
        raise TypeError(f"{name} must hold integers, got dtype {array.dtype}")
    if int(array.min()) < 0 or int(array.max()) >= upper:
        raise IndexError(f"{name} must lie in [0, {upper}); got [{array.min()}, {array.max()}]")
    return array.astype(np.int64, copy=False)


def interaction_matrix(
    user_index: npt.ArrayLike,
    item_index: npt.ArrayLike,
    weights: npt.ArrayLike | None,
    *,
    shape: tuple[int, int],
    weighting: Weighting,
) -> csr_matrix:
    """Build the user x item matrix that ALS factorises.

    Parameters
    ----------
    user_index, item_index : array_like of int, shape (k,)
        Dense row and column index of each interaction (see
        :class:`~ranking.vocabulary.Vocabulary`).
    weights : array_like of float, shape (k,), or None
        Weight of each interaction (e.g. a star rating). Ignored, and may be ``None``, for
        ``weighting="binary"``.
    shape : tuple of int
        ``(n_users, n_items)``.
    weighting : {"binary", "weight"}
        ``"binary"``: every interacting (user, item) pair is ``1.0`` however often it occurs and
        whatever its weights. ``"weight"``: the weights of a pair's interactions are summed (in
        float64) and pairs whose sum is not positive are dropped.

    Returns
    -------
    scipy.sparse.csr_matrix of float32, shape ``shape``
        Canonical (sorted indices, no duplicates, no explicit zeros).

    Raises
    ------
    ValueError
        On mismatched lengths, an unknown ``weighting``, a negative shape or non-finite weights.
    IndexError
        If an index falls outside ``shape``.
    """
    n_users, n_items = (int(shape[0]), int(shape[1]))
    if n_users < 0 or n_items < 0:
        raise ValueError(f"shape must be non-negative, got {shape}")
    rows = as_index_array(user_index, "user_index", n_users)
    cols = as_index_array(item_index, "item_index", n_items)
    if rows.shape != cols.shape:
        raise ValueError(f"user_index and item_index differ in length: {rows.size} != {cols.size}")

    if weighting == "binary":
        data = np.ones(rows.size, dtype=np.float64)
    elif weighting == "weight":
        if weights is None:
            raise ValueError('weighting="weight" needs weights')
        data = np.asarray(weights, dtype=np.float64)
        if data.shape != rows.shape:
            raise ValueError(f"weights has shape {data.shape}, expected {rows.shape}")
        if not bool(np.all(np.isfinite(data))):
            raise ValueError("weights must be finite")
    else:
        raise ValueError(f"unknown weighting {weighting!r}; expected 'binary' or 'weight'")

    # COO -> CSR sums duplicate (row, col) entries.
    matrix = csr_matrix((data, (rows, cols)), shape=(n_users, n_items), dtype=np.float64)
    matrix.sum_duplicates()
    if weighting == "binary":
        matrix.data[:] = 1.0
    else:
        matrix.data[matrix.data <= 0.0] = 0.0
        matrix.eliminate_zeros()
    result = matrix.astype(np.float32)
    result.has_sorted_indices = True
    return result


def restrict_columns(matrix: csr_matrix, columns: npt.NDArray[np.int64]) -> csr_matrix:
    """The entries of ``matrix`` in ``columns`` (sorted, unique), renumbered to their positions."""
    coo = matrix.tocoo()
    position = np.minimum(np.searchsorted(columns, coo.col), columns.size - 1)
    keep = (columns[position] == coo.col) & (coo.data != 0)
    return csr_matrix(
        (coo.data[keep], (coo.row[keep], position[keep])),
        shape=(matrix.shape[0], columns.size),
        dtype=np.float32,
    )


def as_csr(matrix: Any, name: str) -> csr_matrix:
    """Return ``matrix`` as a :class:`scipy.sparse.csr_matrix` (implicit rejects ``csr_array``)."""
    if isinstance(matrix, csr_matrix):
        return matrix
    if scipy.sparse.issparse(matrix):
        return csr_matrix(matrix)
    raise TypeError(f"{name} must be a scipy sparse matrix, got {type(matrix).__name__}")
