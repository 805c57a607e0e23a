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
  (:func:`bounded_top_k`).
* ``recommend`` returns filtered (already seen) items with their real index and a score of
  ``-FLT_MAX`` instead of dropping them, and when ``N`` exceeds the number of items it pads with
  item ``0`` and score ``0.0``. :meth:`ALSModel.recommend` normalises both to ``-1`` / ``-inf``.
"""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path
from typing import Any

import implicit
import numpy as np
import numpy.typing as npt
from implicit.cpu.als import AlternatingLeastSquares
from implicit.cpu.topk import topk
from scipy.sparse import csr_matrix
from threadpoolctl import ThreadpoolController, threadpool_limits

from ranking.bounded_topk import FILTERED_SCORE, NormOrder, SeenRows, bounded_top_k
from ranking.interactions import (
    Weighting,
    as_csr,
    as_index_array,
    interaction_matrix,
    restrict_columns,
)
from ranking.policy import ModelParams

__all__ = ["ALSModel", "NotFittedError", "Weighting", "interaction_matrix"]

"""How interactions become matrix values; see :func:`interaction_matrix`."""

_FORMAT = "commonfeed.als"
_FORMAT_VERSION = 1
"""The score implicit's top-k gives an item it filtered out (seen, or not in ``items``)."""


_FEW_ROWS = 64
"""Up to this many rows, :meth:`ALSModel.recalculate_users` solves on one thread."""


@functools.cache
def _blas_controller() -> ThreadpoolController:
    """The thread pools of the libraries loaded with this module, inspected once."""
    return ThreadpoolController()


class NotFittedError(RuntimeError):
    """Raised when a model is used before :meth:`ALSModel.fit` (or :meth:`ALSModel.load`)."""


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
        self._norm_cache: NormOrder | None = None

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
        matrix = as_csr(user_items, "user_items")
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
        matrix = as_csr(user_items, "user_items")
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
        rows = as_index_array(user_rows, "user_rows", n_users)
        seen: csr_matrix | None = None
        if exclude_seen:
            matrix = as_csr(user_items, "user_items")
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
            seen = as_csr(user_items, "user_items")
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

        On a large catalogue the rows are ranked by :func:`bounded_top_k`, which gives the same
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
            items = np.unique(as_index_array(allowed_items, "allowed_items", n_items))
            n_eff = min(n, int(items.size))

        out_items = np.full((m, n), -1, dtype=np.int64)
        out_scores = np.full((m, n), -np.inf, dtype=np.float32)
        if n_eff == 0 or m == 0:
            return out_items, out_scores

        item_factors = model.item_factors if items is None else model.item_factors[items]
        query = None
        if seen is not None:
            query = seen if items is None else restrict_columns(seen, items)
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
                    ids[part], scores[part], done[part] = bounded_top_k(
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
                    filter_query_items=None if query is None else SeenRows(query[twice]),
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
        valid = scores > FILTERED_SCORE  # also False for NaN
        order = np.argsort(~valid, axis=1, kind="stable")
        valid = np.take_along_axis(valid, order, axis=1)
        out_items[:, :n_eff] = np.where(valid, np.take_along_axis(ids, order, axis=1), -1)
        out_scores[:, :n_eff] = np.where(valid, np.take_along_axis(scores, order, axis=1), -np.inf)
        return out_items, out_scores

    def _norm_order(self, items: npt.NDArray[np.int64] | None) -> NormOrder:
        """The items (all, or ``items``) sorted by factor norm; kept for the next call."""
        item_factors = self.item_factors
        cached = self._norm_cache
        if cached is None or not cached.matches(item_factors, items):
            cached = self._norm_cache = NormOrder(item_factors, items)
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
