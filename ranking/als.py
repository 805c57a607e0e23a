"""Implicit-feedback matrix factorisation (ALS) on top of :mod:`implicit`.

This module turns interaction arrays into a sparse confidence matrix
(:func:`interaction_matrix`) and wraps :class:`implicit.cpu.als.AlternatingLeastSquares` in a
small estimator (:class:`ALSModel`) whose hyperparameters come from a ratified
:class:`~ranking.policy.ModelParams`. Everything is arrays in, arrays out, and seeded: the same
policy and the same interactions give bit-identical factors.

Notes on :mod:`implicit` 0.7.3 that this wrapper hides:

* Confidence is ``alpha * w`` (not ``1 + alpha * w`` as in Hu, Koren & Volinsky 2008); unobserved
  pairs have confidence 1. With ``alpha * w < 1`` an observed pair is therefore trusted *less*
  than an unobserved one.
* Calling ``fit`` twice on the same implicit object warm-starts from the previous factors, so
  :meth:`ALSModel.fit` always builds a fresh implicit model to stay reproducible.
* Its top-k scores every item for every user. :meth:`ALSModel.recommend` gets the same result
  (items, order, tie-breaking; scores up to float32 rounding) by scoring items in decreasing
  order of factor norm and stopping a user once no unscored item can enter the top ``n``
  (:func:`_bounded_top_k`).
* ``recommend`` returns filtered (already seen) items with their real index and a score of
  ``-FLT_MAX`` instead of dropping them, and when ``N`` exceeds the number of items it pads with
  item ``0`` and score ``0.0``. :meth:`ALSModel.recommend` normalises both to ``-1`` / ``-inf``.
"""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path
from typing import Any, Literal

import implicit
import numpy as np
import numpy.typing as npt
import scipy.sparse
from implicit.cpu.als import AlternatingLeastSquares
from implicit.cpu.topk import topk
from scipy.sparse import csr_matrix
from threadpoolctl import ThreadpoolController, threadpool_limits

from ranking.policy import ModelParams

__all__ = ["ALSModel", "NotFittedError", "Weighting", "interaction_matrix"]

Weighting = Literal["binary", "weight"]
"""How interactions become matrix values; see :func:`interaction_matrix`."""

_FORMAT = "commonfeed.als"
_FORMAT_VERSION = 1
_FILTERED_SCORE = np.float32(-np.finfo(np.float32).max)
"""The score implicit's top-k gives an item it filtered out (seen, or not in ``items``)."""


_FEW_ROWS = 64
"""Up to this many rows, :meth:`ALSModel.recalculate_users` solves on one thread."""


@functools.cache
def _blas_controller() -> ThreadpoolController:
    """The thread pools of the libraries loaded with this module, inspected once."""
    return ThreadpoolController()


class NotFittedError(RuntimeError):
    """Raised when a model is used before :meth:`ALSModel.fit` (or :meth:`ALSModel.load`)."""


def _as_index_array(values: npt.ArrayLike, name: str, upper: int) -> npt.NDArray[np.int64]:
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
    rows = _as_index_array(user_index, "user_index", n_users)
    cols = _as_index_array(item_index, "item_index", n_items)
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


class ALSModel:
    """Implicit-feedback alternating least squares, configured by a policy's model section.

    A thin, reproducible wrapper around :class:`implicit.cpu.als.AlternatingLeastSquares`
    (CPU only, float32 factors, conjugate-gradient solver). Confidence of an observed pair with
    matrix value ``w`` is ``params.alpha * w``.

    Parameters
    ----------
    params : ModelParams, optional
        Hyperparameters (``factors``, ``regularization``, ``alpha``, ``iterations``, ``seed``).
        Defaults to ``ModelParams()``. ``params.weighting`` is not used here; it governs
        :func:`interaction_matrix`.
    num_threads : int, default 0
        Threads for fitting and for implicit's top-k; ``0`` uses every core. The norm-bounded
        top-k that ranks most rows on large catalogues runs on the calling thread (parallelism
        comes from scoring shards in several workers). Results do not depend on it.

    Attributes
    ----------
    params : ModelParams
        The hyperparameters.

    Examples
    --------
    >>> m = interaction_matrix([0, 0, 1], [0, 1, 1], None, shape=(2, 3), weighting="binary")
    >>> model = ALSModel(ModelParams(factors=4, iterations=3)).fit(m)
    >>> items, scores = model.recommend(np.array([0, 1]), m, n=2)
    >>> items.shape, items.dtype, scores.dtype
    ((2, 2), dtype('int64'), dtype('float32'))
    """

    def __init__(self, params: ModelParams | None = None, *, num_threads: int = 0) -> None:
        if num_threads < 0:
            raise ValueError(f"num_threads must be >= 0, got {num_threads}")
        self.params: ModelParams = params if params is not None else ModelParams()
        self._num_threads = num_threads
        self._model: Any = None
        self._norm_cache: _NormOrder | None = None

    def __repr__(self) -> str:
        shape = f"{self.n_users}x{self.n_items}" if self.is_fitted else "unfitted"
        return f"ALSModel({shape}, factors={self.params.factors})"

    def _new_implicit_model(self) -> Any:
        p = self.params
        return AlternatingLeastSquares(
            factors=p.factors,
            regularization=p.regularization,
            alpha=p.alpha,
            dtype=np.float32,
            iterations=p.iterations,
            calculate_training_loss=False,
            num_threads=self._num_threads,
            random_state=p.seed,
        )

    def _fitted(self) -> Any:
        if self._model is None:
            raise NotFittedError("this ALSModel is not fitted; call fit() or ALSModel.load()")
        return self._model

    @property
    def is_fitted(self) -> bool:
        """Whether the model has factors (from :meth:`fit` or :meth:`load`)."""
        return self._model is not None

    @property
    def implicit_model(self) -> Any:
        """The fitted ``implicit`` model this wraps (CPU ``AlternatingLeastSquares``).

        For comparisons against bare ``implicit`` on the very same factors (``bench/``) and for
        calls this wrapper does not offer. Mutating it changes this model too.
        """
        return self._fitted()

    @property
    def user_factors(self) -> npt.NDArray[np.float32]:
        """User factors, float32 array of shape ``(n_users, factors)``."""
        factors: npt.NDArray[np.float32] = self._fitted().user_factors
        return factors

    @property
    def item_factors(self) -> npt.NDArray[np.float32]:
        """Item factors, float32 array of shape ``(n_items, factors)``."""
        factors: npt.NDArray[np.float32] = self._fitted().item_factors
        return factors

    @property
    def n_users(self) -> int:
        """Number of users (rows of the training matrix)."""
        return int(self.user_factors.shape[0])

    @property
    def n_items(self) -> int:
        """Number of items (columns of the training matrix)."""
        return int(self.item_factors.shape[0])

    def fit(self, user_items: csr_matrix) -> ALSModel:
        """Learn user and item factors from a user x item matrix.

        Always starts from a fresh, seeded initialisation (never warm-starts), and runs with
        BLAS limited to one thread as :mod:`implicit` recommends; parallelism comes from
        ``num_threads`` instead.

        Parameters
        ----------
        user_items : scipy.sparse.csr_matrix, shape (n_users, n_items)
            Positive interaction strengths, usually from :func:`interaction_matrix`. Other
            sparse formats are converted; values are cast to float32.

        Returns
        -------
        ALSModel
            ``self``, fitted.
        """
        matrix = _as_csr(user_items, "user_items")
        if matrix.shape[0] == 0 or matrix.shape[1] == 0:
            raise ValueError(f"cannot fit on an empty matrix of shape {matrix.shape}")
        if matrix.dtype != np.float32:
            matrix = matrix.astype(np.float32)
        with threadpool_limits(limits=1, user_api="blas"):
            model = self._new_implicit_model()
            model.fit(matrix, show_progress=False)
        model.user_factors = np.ascontiguousarray(model.user_factors, dtype=np.float32)
        model.item_factors = np.ascontiguousarray(model.item_factors, dtype=np.float32)
        self._model = model
        return self

    def recalculate_users(self, user_items: csr_matrix) -> npt.NDArray[np.float32]:
        """Solve user factors for members from their interaction rows, against the item factors.

        The exact least-squares step of ALS for each row (implicit's ``recalculate_user``), with
        the model's confidence ``params.alpha * w`` and regularisation, for members who were not
        in training or whose interactions changed since. The model is left unchanged.

        Parameters
        ----------
        user_items : scipy.sparse.csr_matrix, shape (m, n_items)
            One row per member, built like the training matrix (same :func:`interaction_matrix`
            weighting). Other sparse formats are converted; values are cast to float32.

        Returns
        -------
        numpy.ndarray of float32, shape (m, factors)
            Row ``r``: the factors of the member whose interactions are row ``r``; a row without
            interactions gets zeros.

        Raises
        ------
        NotFittedError
            If the model has no factors.
        ValueError
            If ``user_items`` does not have ``n_items`` columns, or holds non-finite values.
        TypeError
            If ``user_items`` is not a scipy sparse matrix.
        """
        model = self._fitted()
        matrix = _as_csr(user_items, "user_items")
        if matrix.shape[1] != self.n_items:
            raise ValueError(
                f"user_items has shape {matrix.shape}; the model has {self.n_items} items"
            )
        factors = np.zeros((matrix.shape[0], self.params.factors), dtype=np.float32)
        if matrix.shape[0] == 0:
            return factors
        if matrix.dtype != np.float32:
            matrix = matrix.astype(np.float32)
        if not bool(np.all(np.isfinite(matrix.data))):
            raise ValueError("user_items must hold finite values")
        # A handful of rows (a fold-in refresh) is solved in well under a millisecond: starting
        # OpenMP's thread team and re-reading the loaded BLAS libraries (threadpool_limits)
        # cost ten to a hundred times that on a busy machine. The result does not depend on the
        # number of threads.
        threads = model.num_threads
        if matrix.shape[0] <= _FEW_ROWS:
            model.num_threads = 1
        try:
            with _blas_controller().limit(limits=1, user_api="blas"):
                solved = model.recalculate_user(np.arange(matrix.shape[0]), matrix)
        finally:
            model.num_threads = threads
        factors[:] = np.asarray(solved, dtype=np.float32).reshape(factors.shape)
        return factors

    def recommend(
        self,
        user_rows: npt.ArrayLike,
        user_items: csr_matrix,
        n: int,
        *,
        allowed_items: npt.ArrayLike | None = None,
        exclude_seen: bool = True,
    ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]:
        """Top-``n`` items for a batch of users, in one vectorised call.

        Parameters
        ----------
        user_rows : array_like of int, shape (m,)
            Row indices of the users (rows of the training matrix).
        user_items : scipy.sparse.csr_matrix, shape (n_users, n_items)
            The **full** user x item matrix (all users, not only ``user_rows``); its non-zero
            pattern is what each user has seen. Only read when ``exclude_seen``.
        n : int
            Feed length (``>= 0``).
        allowed_items : array_like of int, optional
            Item indices that may be recommended; duplicates are ignored. ``None`` allows all.
        exclude_seen : bool, default True
            Never recommend an item that is non-zero in the user's row of ``user_items``.

        Returns
        -------
        items : numpy.ndarray of int64, shape (m, n)
            Item indices, best first; ``-1`` where fewer than ``n`` items qualify.
        scores : numpy.ndarray of float32, shape (m, n)
            Predicted preference (dot product of factors); ``-inf`` where ``items`` is ``-1``.
        """
        self._fitted()
        n_users, n_items = self.n_users, self.n_items
        rows = _as_index_array(user_rows, "user_rows", n_users)
        seen: csr_matrix | None = None
        if exclude_seen:
            matrix = _as_csr(user_items, "user_items")
            if matrix.shape != (n_users, n_items):
                raise ValueError(
                    f"user_items has shape {matrix.shape}; the model has {(n_users, n_items)}"
                )
            seen = matrix[rows]
        return self._top_n(self.user_factors[rows], seen, n, allowed_items)

    def recommend_from_factors(
        self,
        user_factors: npt.ArrayLike,
        user_items: csr_matrix | None,
        n: int,
        *,
        allowed_items: npt.ArrayLike | None = None,
        exclude_seen: bool = True,
    ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]:
        """Top-``n`` items for arbitrary user factors (e.g. from :meth:`recalculate_users`).

        Same ranking, filtering and padding as :meth:`recommend`, which is this method applied
        to ``user_factors[user_rows]`` and ``user_items[user_rows]``.

        Parameters
        ----------
        user_factors : array_like of float, shape (m, factors)
            One factor vector per user.
        user_items : scipy.sparse.csr_matrix, shape (m, n_items), or None
            Row ``r``: what user ``r`` has seen (non-zero = seen). Only read, and may be
            ``None``, when ``exclude_seen`` is false.
        n : int
            Feed length (``>= 0``).
        allowed_items : array_like of int, optional
            Item indices that may be recommended; duplicates are ignored. ``None`` allows all.
        exclude_seen : bool, default True
            Never recommend an item that is non-zero in the user's row of ``user_items``.

        Returns
        -------
        items, scores
            As :meth:`recommend`.

        Raises
        ------
        ValueError
            On a factor matrix of the wrong shape or with non-finite entries, a ``user_items``
            of the wrong shape, or ``n < 0``.
        """
        self._fitted()
        factors = np.asarray(user_factors, dtype=np.float32)
        if factors.ndim != 2 or factors.shape[1] != self.params.factors:
            raise ValueError(
                f"user_factors has shape {factors.shape}, expected (m, {self.params.factors})"
            )
        if not bool(np.all(np.isfinite(factors))):
            raise ValueError("user_factors must be finite")
        seen: csr_matrix | None = None
        if exclude_seen:
            if user_items is None:
                raise ValueError("exclude_seen needs user_items")
            seen = _as_csr(user_items, "user_items")
            if seen.shape != (factors.shape[0], self.n_items):
                raise ValueError(
                    f"user_items has shape {seen.shape}, expected "
                    f"{(factors.shape[0], self.n_items)}"
                )
        return self._top_n(factors, seen, n, allowed_items)

    def _top_n(
        self,
        factors: npt.NDArray[np.float32],
        seen: csr_matrix | None,
        n: int,
        allowed_items: npt.ArrayLike | None,
    ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]:
        """implicit's top-k over ``factors @ item_factors.T``, normalised to -1 / -inf padding.

        On a large catalogue the rows are ranked by :func:`_bounded_top_k`, which gives the same
        items in the same order (scores up to float32 rounding) while scoring only the items
        that can qualify; implicit ranks the rows it leaves (ties at the cut, zero factors), a
        single row, and small catalogues.
        """
        model = self._fitted()
        n_items = self.n_items
        m = factors.shape[0]
        n = int(n)
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")

        items: npt.NDArray[np.int64] | None = None
        n_eff = min(n, n_items)
        if allowed_items is not None:
            items = np.unique(_as_index_array(allowed_items, "allowed_items", n_items))
            n_eff = min(n, int(items.size))

        out_items = np.full((m, n), -1, dtype=np.int64)
        out_scores = np.full((m, n), -np.inf, dtype=np.float32)
        if n_eff == 0 or m == 0:
            return out_items, out_scores

        item_factors = model.item_factors if items is None else model.item_factors[items]
        query = None
        if seen is not None:
            query = seen if items is None else _restrict_columns(seen, items)
        factors = np.ascontiguousarray(factors, dtype=np.float32)
        with threadpool_limits(limits=1, user_api="blas"):
            n_ranked = item_factors.shape[0]
            ids = np.empty((m, n_eff), dtype=np.int64)
            scores = np.empty((m, n_eff), dtype=np.float32)
            done = np.zeros(m, dtype=bool)
            # A single row is left to implicit, which ranks it with a matrix-vector product.
            if m > 1 and n_ranked >= _BOUND_MIN_ITEMS and _BOUND_ITEMS_PER_K * n_eff <= n_ranked:
                by_norm = self._norm_order(items)
                # In slices of rows, so that the bounded top-k's working arrays stay small.
                for first in range(0, m, _BOUND_ROWS):
                    part = slice(first, min(m, first + _BOUND_ROWS))
                    ids[part], scores[part], done[part] = _bounded_top_k(
                        by_norm, factors[part], None if query is None else query[part], n_eff
                    )
            rest = np.flatnonzero(~done)
            if rest.size:
                # One row alone would be a matrix-vector product: rank it twice (see above).
                twice = np.repeat(rest, 2) if rest.size == 1 and m > 1 else rest
                rest_ids, rest_scores = topk(
                    item_factors,
                    factors[twice],
                    n_eff,
                    filter_query_items=None if query is None else _SeenRows(query[twice]),
                    num_threads=self._num_threads,
                )
                ids[rest] = np.asarray(rest_ids, dtype=np.int64).reshape(-1, n_eff)[: rest.size]
                scores[rest] = np.asarray(rest_scores, dtype=np.float32).reshape(-1, n_eff)[
                    : rest.size
                ]
        if items is not None:
            ids = items[ids]

        # implicit keeps filtered items in the result with score -FLT_MAX; move them to the end
        # (stable, so the ranking of real results is untouched) and blank them out.
        valid = scores > _FILTERED_SCORE  # also False for NaN
        order = np.argsort(~valid, axis=1, kind="stable")
        valid = np.take_along_axis(valid, order, axis=1)
        out_items[:, :n_eff] = np.where(valid, np.take_along_axis(ids, order, axis=1), -1)
        out_scores[:, :n_eff] = np.where(valid, np.take_along_axis(scores, order, axis=1), -np.inf)
        return out_items, out_scores

    def _norm_order(self, items: npt.NDArray[np.int64] | None) -> _NormOrder:
        """The items (all, or ``items``) sorted by factor norm; kept for the next call."""
        item_factors = self.item_factors
        cached = self._norm_cache
        if cached is None or not cached.matches(item_factors, items):
            cached = self._norm_cache = _NormOrder(item_factors, items)
        return cached

    def save(self, path: str | os.PathLike[str]) -> None:
        """Save factors and hyperparameters to one ``.npz`` file (no pickle).

        The archive holds ``user_factors``, ``item_factors`` and ``metadata`` (a JSON string
        with the format version, the :class:`ModelParams` and the :mod:`implicit` version). The
        file is written to a temporary name and renamed into place, so readers never see a
        half-written model. ``path`` is used exactly as given (no ``.npz`` is appended).
        """
        model = self._fitted()
        target = Path(path)
        metadata = {
            "format": _FORMAT,
            "version": _FORMAT_VERSION,
            "params": self.params.model_dump(mode="json"),
            "implicit_version": implicit.__version__,
            "n_users": self.n_users,
            "n_items": self.n_items,
        }
        temporary = target.with_name(f".{target.name}.tmp")
        with open(temporary, "wb") as handle:
            np.savez(
                handle,
                user_factors=np.asarray(model.user_factors, dtype=np.float32),
                item_factors=np.asarray(model.item_factors, dtype=np.float32),
                metadata=np.array(json.dumps(metadata, sort_keys=True)),
            )
        os.replace(temporary, target)

    @classmethod
    def load(cls, path: str | os.PathLike[str], *, num_threads: int = 0) -> ALSModel:
        """Load a model written by :meth:`save`.

        Loads with ``allow_pickle=False``; a file that needs pickle is rejected.

        Raises
        ------
        ValueError
            If the file is not a saved ALSModel of a supported version, or is inconsistent.
        """
        with np.load(Path(path), allow_pickle=False) as archive:
            try:
                metadata = json.loads(str(archive["metadata"]))
                user_factors = np.ascontiguousarray(archive["user_factors"], dtype=np.float32)
                item_factors = np.ascontiguousarray(archive["item_factors"], dtype=np.float32)
            except KeyError as error:
                raise ValueError(f"{path} is not a saved ALSModel: missing {error}") from None
        if metadata.get("format") != _FORMAT or metadata.get("version") != _FORMAT_VERSION:
            raise ValueError(f"{path} is not a {_FORMAT} file of version {_FORMAT_VERSION}")
        params = ModelParams.model_validate(metadata["params"])
        if (
            user_factors.ndim != 2
            or item_factors.ndim != 2
            or user_factors.shape[1] != params.factors
            or item_factors.shape[1] != params.factors
        ):
            raise ValueError(
                f"{path}: factor shapes {user_factors.shape}, {item_factors.shape} do not match "
                f"factors={params.factors}"
            )
        result = cls(params, num_threads=num_threads)
        model = result._new_implicit_model()
        model.user_factors = user_factors
        model.item_factors = item_factors
        result._model = model
        return result


_BOUND_MIN_ITEMS = 4096
"""Catalogues smaller than this are ranked by implicit's brute-force top-k alone."""

_BOUND_ITEMS_PER_K = 8
"""...and so are top-k's whose ``k`` is more than an eighth of the catalogue: few rows would
finish before the last block."""

_BOUND_ROWS = 16_384
"""Rows ranked by one call of the bounded top-k (its arrays of the best ``k + 1`` so far are
12 bytes per row and candidate: 40 MB at this many rows and a pool of 200)."""

_BOUND_MARGIN = 1e-4
"""Relative slack on the Cauchy-Schwarz bound: a float32 dot product of ``f`` terms is within
about ``f * 2**-24`` of the exact one, far below this for any factor count the policy allows."""

_BOUND_BLOCK_FLOATS = 4 * 1024 * 1024
"""Scores held at once while ranking one block of items for a batch of rows (16 MiB)."""


class _NormOrder:
    """The items of a top-k, sorted by the norm of their factors (largest first).

    Column ``c`` of the top-k is row ``c`` of the factors it was built on; ``order[p]`` is the
    column at sorted position ``p``, ``position`` the inverse, ``norms`` the sorted norms
    (float64) and ``factors`` the sorted factor rows.
    """

    __slots__ = ("factors", "finite", "items", "norms", "order", "position", "source")

    def __init__(
        self,
        item_factors: npt.NDArray[np.float32],
        items: npt.NDArray[np.int64] | None,
    ) -> None:
        self.source = item_factors
        self.items = items
        factors = item_factors if items is None else item_factors[items]
        norms = np.sqrt(np.einsum("ij,ij->i", factors, factors, dtype=np.float64))
        # A non-finite item factor has no norm to bound it: then implicit ranks every row.
        self.finite = bool(np.isfinite(norms).all())
        self.order = np.argsort(-norms, kind="stable")
        self.position = np.empty(self.order.size, dtype=np.int64)
        self.position[self.order] = np.arange(self.order.size)
        self.norms = norms[self.order]
        self.factors = np.ascontiguousarray(factors[self.order], dtype=np.float32)

    def matches(
        self, item_factors: npt.NDArray[np.float32], items: npt.NDArray[np.int64] | None
    ) -> bool:
        if self.source is not item_factors:
            return False
        if items is None or self.items is None:
            return items is None and self.items is None
        return bool(np.array_equal(items, self.items))


def _bounded_top_k(
    index: _NormOrder,
    factors: npt.NDArray[np.float32],
    seen: csr_matrix | None,
    k: int,
    *,
    stats: dict[str, int] | None = None,
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32], npt.NDArray[np.bool_]]:
    """Exact top-``k`` of ``factors @ items.T`` that scores only the items that can qualify.

    Items are visited in blocks of decreasing factor norm, the first of ``max(8k, n/64)``
    items, each next one half as large as all before it. After each block a row's ``k``-th
    best score so far is compared with the Cauchy-Schwarz bound ``|u| * |v|`` of every item not
    yet scored (``|v|`` is at most the next block's first norm); once the ``k``-th best is above
    it, no later item can enter the row's top-``k`` and the row is finished. With ALS factors
    the norm of an item grows with its popularity, so most rows finish early: on
    ``seed_demo``'s data this computes a fifth of the products implicit's top-k does.

    Rows whose result could differ from implicit's brute-force top-k are left to it: a tie
    between the ``k``-th and the next score (implicit breaks those by scan order), fewer than
    ``k`` eligible items, or factors that are not finite or large enough to overflow. The
    others get implicit's result in its order (best score first, the higher column first among
    equal scores), with the same float32 dot products as far as BLAS gives them: OpenBLAS's
    SkylakeX, SandyBridge and Nehalem kernels compute each product the same whatever the
    block, so both paths agree bit for bit; its Haswell, Zen and Prescott kernels round some
    products one unit in the last place differently by the shape of the block, so two items
    that close may swap. A row's result depends only on the rows ranked with it (fixed chunks
    of absolute positions in :func:`ranking.pipeline.score_feeds`), so shards still reproduce a
    whole run bit for bit.

    Returns ``(columns, scores, done)``: for rows with ``done`` set, columns (into the item
    list ``index`` was built on) and scores, best first; other rows are to be ranked by the
    caller. ``stats``, if given, receives ``products``: how many row x item scores were computed.
    """
    m, n = factors.shape[0], index.order.size
    columns = np.full((m, k), -1, dtype=np.int64)
    scores = np.full((m, k), _FILTERED_SCORE, dtype=np.float32)
    done = np.zeros(m, dtype=bool)
    if m == 0 or k == 0 or n <= k or not index.finite:
        return columns, scores, done
    user_norms = np.sqrt(np.einsum("ij,ij->i", factors, factors, dtype=np.float64))
    # |score| <= |u| |v|: rows that might overflow float32 (or are not finite) go to implicit,
    # and so do zero rows (every score ties at 0).
    active = np.flatnonzero((user_norms > 0) & (user_norms * index.norms[0] < 1e30))
    if seen is not None:
        seen_positions = index.position[seen.indices]
    # The best k + 1 so far (sorted positions and scores): a tie between the k-th and the next
    # must still be seen when both were scored in an earlier block.
    best = np.full((m, k + 1), -1, dtype=np.int64)
    best_scores = np.full((m, k + 1), _FILTERED_SCORE, dtype=np.float32)
    low, high = 0, min(n, max(8 * k, n // 64))
    while active.size:
        width = high - low
        if stats is not None:
            stats["products"] = stats.get("products", 0) + int(active.size) * width
        finished: list[npt.NDArray[np.int64]] = []
        step = max(1, _BOUND_BLOCK_FLOATS // (width + k + 1))
        for first in range(0, active.size, step):
            rows = active[first : first + step]
            query = factors[rows]
            # One row alone would be a matrix-vector product, rounded unlike the rows of a
            # matrix-matrix product (and unlike implicit's): score it twice.
            block = (np.repeat(query, 2, axis=0) if rows.size == 1 else query) @ index.factors[
                low:high
            ].T
            block = block[: rows.size]
            if seen is not None:
                starts, stops = seen.indptr[rows], seen.indptr[rows + 1]
                counts = stops - starts
                entries = np.repeat(starts - np.cumsum(counts) + counts, counts) + np.arange(
                    int(counts.sum())
                )
                where = seen_positions[entries]
                inside = (where >= low) & (where < high)
                block[np.repeat(np.arange(rows.size), counts)[inside], where[inside] - low] = (
                    _FILTERED_SCORE
                )
            # Only rows with a score in this block at least their (k + 1)-th best so far have
            # anything to merge.
            if low:
                changed = np.flatnonzero(block.max(axis=1) >= best_scores[rows, k])
                if changed.size < rows.size:
                    block = block[changed]
            else:
                changed = np.arange(rows.size)
            if changed.size:
                merging = rows[changed]
                if low:
                    merged = np.concatenate([best_scores[merging], block], axis=1)
                    top, best_scores[merging] = _largest_sorted(merged, k + 1)
                    previous = np.take_along_axis(best[merging], np.minimum(top, k), axis=1)
                    best[merging] = np.where(top <= k, previous, top - (k + 1) + low)
                else:  # nothing is kept yet: the first block alone holds the best k + 1
                    best[merging], best_scores[merging] = _largest_sorted(block, k + 1)
            kth, after = best_scores[rows, k - 1], best_scores[rows, k]
            if high < n:
                bound = user_norms[rows] * index.norms[high] * (1.0 + _BOUND_MARGIN)
            else:  # every item is scored: nothing is left to bound
                bound = np.full(rows.size, -np.inf)
            ready = (kth > bound) & (kth > after) & (kth > _FILTERED_SCORE)
            finished.append(rows[ready])
        done[np.concatenate(finished)] = True
        if high == n:
            break
        active = active[~done[active]]
        low, high = high, min(n, high + max(1, high // 2))

    rows = np.flatnonzero(done)
    found = index.order[best[rows, :k]]
    found_scores = best_scores[rows, :k]
    # implicit's order: best score first, the higher column first among equal scores. The
    # scores are sorted already; only rows with equal scores side by side need the columns'.
    tied = np.flatnonzero((found_scores[:, 1:] == found_scores[:, :-1]).any(axis=1))
    if tied.size:
        order = np.lexsort((-found[tied], -found_scores[tied]), axis=1)
        found[tied] = np.take_along_axis(found[tied], order, axis=1)
        found_scores[tied] = np.take_along_axis(found_scores[tied], order, axis=1)
    columns[rows] = found
    scores[rows] = found_scores
    return columns, scores, done


def _largest_sorted(
    values: npt.NDArray[np.float32], count: int
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]:
    """Per row, the columns of the ``count`` largest values, largest first, and the values."""
    top = np.argpartition(values, values.shape[1] - count, axis=1)[:, -count:]
    top_values = np.take_along_axis(values, top, axis=1)
    order = np.argsort(-top_values, axis=1, kind="stable")
    return np.take_along_axis(top, order, axis=1), np.take_along_axis(top_values, order, axis=1)


class _SeenRow:
    __slots__ = ("indices",)

    def __init__(self, indices: npt.NDArray[np.int32]) -> None:
        self.indices = indices


class _SeenRows:
    """Rows of a CSR matrix as implicit's top-k reads its ``filter_query_items``.

    :func:`implicit.cpu.topk.topk` only ever takes ``filter_query_items[row].indices``, once per
    query row. On a :class:`~scipy.sparse.csr_matrix` each of those is a full sparse slice (a new
    matrix, validated), about a tenth of the scoring time with 100,000 items; here it is one
    view of ``indices``. The filtered items are the same, so are the results (tested).
    """

    __slots__ = ("_indices", "_indptr")

    def __init__(self, matrix: csr_matrix) -> None:
        self._indptr = matrix.indptr
        self._indices = matrix.indices

    def __getitem__(self, row: int) -> _SeenRow:
        return _SeenRow(self._indices[self._indptr[row] : self._indptr[row + 1]])


def _restrict_columns(matrix: csr_matrix, columns: npt.NDArray[np.int64]) -> csr_matrix:
    """The entries of ``matrix`` in ``columns`` (sorted, unique), renumbered to their positions."""
    coo = matrix.tocoo()
    position = np.minimum(np.searchsorted(columns, coo.col), columns.size - 1)
    keep = (columns[position] == coo.col) & (coo.data != 0)
    return csr_matrix(
        (coo.data[keep], (coo.row[keep], position[keep])),
        shape=(matrix.shape[0], columns.size),
        dtype=np.float32,
    )


def _as_csr(matrix: Any, name: str) -> csr_matrix:
    """Return ``matrix`` as a :class:`scipy.sparse.csr_matrix` (implicit rejects ``csr_array``)."""
    if isinstance(matrix, csr_matrix):
        return matrix
    if scipy.sparse.issparse(matrix):
        return csr_matrix(matrix)
    raise TypeError(f"{name} must be a scipy sparse matrix, got {type(matrix).__name__}")
