"""The norm-bounded top-k gives implicit's brute-force top-k, only faster.

Every test ranks the same rows twice: through :meth:`ALSModel.recommend` (or
``recommend_from_factors``) as shipped, and with the bounded path switched off so that
implicit's brute-force top-k ranks every row. With exact arithmetic (small integer factors)
items, scores, order, ties and padding must be identical; on fitted factors, identical up to
the rounding of float32 dot products, which some BLAS kernels do differently by the shape of the
product (see ``assert_equivalent``). Shards reproducing the whole run bit for bit, whatever the
kernel, is tested in ``test_feeds.py``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from scipy.sparse import csr_matrix

import ranking.als as als
from ranking import bounded_topk
from ranking.als import ALSModel
from ranking.interactions import interaction_matrix
from ranking.policy import ModelParams


@contextmanager
def brute_force() -> Iterator[None]:
    """Rank every row with implicit's top-k, as before the bounded path existed."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(als, "_BOUND_MIN_ITEMS", 10**12)
        yield


@contextmanager
def bounded_for_any_size() -> Iterator[None]:
    """Use the bounded path even on a catalogue of a few items."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(als, "_BOUND_MIN_ITEMS", 1)
        patch.setattr(als, "_BOUND_ITEMS_PER_K", 1)
        yield


def power_law_matrix(rng: np.random.Generator, users: int, items: int, per_user: int) -> csr_matrix:
    """Interactions whose item popularity follows Zipf's law, as in a real catalogue."""
    popularity = 1.0 / np.arange(1, items + 1)
    popularity = rng.permutation(popularity / popularity.sum())
    rows = np.repeat(np.arange(users), per_user)
    cols = rng.choice(items, size=rows.size, p=popularity)
    return interaction_matrix(rows, cols, None, shape=(users, items), weighting="binary")


@pytest.fixture(scope="module")
def fitted() -> tuple[ALSModel, csr_matrix]:
    rng = np.random.default_rng(3)
    matrix = power_law_matrix(rng, users=1500, items=6000, per_user=12)
    params = ModelParams(factors=16, iterations=4, regularization=1.0, alpha=2.0, seed=5)
    return ALSModel(params, num_threads=1).fit(matrix), matrix


def model_of(
    params: ModelParams, user_factors: np.ndarray, item_factors: np.ndarray
) -> tuple[ALSModel, Any]:
    """An ALSModel holding copies of these factors, and the implicit model inside it."""
    model = ALSModel(params, num_threads=1)
    implicit_model = model._new_implicit_model()
    implicit_model.user_factors = np.array(user_factors, dtype=np.float32)
    implicit_model.item_factors = np.array(item_factors, dtype=np.float32)
    model._model = implicit_model
    return model, implicit_model


def assert_same(got: tuple[np.ndarray, np.ndarray], want: tuple[np.ndarray, np.ndarray]) -> None:
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_array_equal(got[1], want[1])


def assert_equivalent(
    got: tuple[np.ndarray, np.ndarray],
    want: tuple[np.ndarray, np.ndarray],
    user_factors: np.ndarray,
    item_factors: np.ndarray,
) -> None:
    """The same top-k up to the rounding of float32 dot products.

    With OpenBLAS's SkylakeX, SandyBridge and Nehalem kernels both paths agree bit for bit.
    Its Haswell, Zen and Prescott kernels round some products one unit in the last place
    differently depending on the shape of the matrix product, so two items that close may come
    out in the other order: the scores at each rank, and the exact (float64) scores of the
    items at each rank, must agree to rounding, and almost every item must be the same.
    """
    got_items, got_scores = got
    want_items, want_scores = want
    np.testing.assert_array_equal(got_items < 0, want_items < 0)  # the same padding
    valid = want_items >= 0
    np.testing.assert_allclose(got_scores[valid], want_scores[valid], rtol=1e-5, atol=1e-7)
    rows = np.nonzero(valid)[0]
    users = user_factors.astype(np.float64)[rows]
    items = item_factors.astype(np.float64)
    np.testing.assert_allclose(
        np.einsum("ij,ij->i", users, items[got_items[valid]]),
        np.einsum("ij,ij->i", users, items[want_items[valid]]),
        rtol=1e-5,
        atol=1e-6,
    )
    assert (got_items[valid] == want_items[valid]).mean() > 0.99


def test_most_rows_are_finished_early_on_zipf_data(fitted: tuple[ALSModel, csr_matrix]) -> None:
    model, matrix = fitted
    order = model._norm_order(None)
    rows = np.arange(matrix.shape[0])
    _, _, done = bounded_topk.bounded_top_k(order, model.user_factors[rows], matrix[rows], 50)
    # The test below would pass trivially if every row fell back to brute force.
    assert done.mean() > 0.9


@pytest.mark.parametrize("n", [1, 10, 200, 750])
def test_recommend_matches_brute_force(fitted: tuple[ALSModel, csr_matrix], n: int) -> None:
    model, matrix = fitted
    rows = np.arange(matrix.shape[0])
    got = model.recommend(rows, matrix, n)
    with brute_force():
        want = model.recommend(rows, matrix, n)
    assert_equivalent(got, want, model.user_factors[rows], model.item_factors)


def test_rows_ranked_in_slices_match_brute_force(
    fitted: tuple[ALSModel, csr_matrix], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rows are ranked in slices (a slice of one row included): each row's result is its own."""
    model, matrix = fitted
    monkeypatch.setattr(als, "_BOUND_ROWS", 7)
    rows = np.arange(50)  # slices of 7 rows, the last of 1
    got = model.recommend(rows, matrix, 60)
    with brute_force():
        want = model.recommend(rows, matrix, 60)
    assert_equivalent(got, want, model.user_factors[rows], model.item_factors)


def test_recommend_matches_brute_force_on_allowed_items(
    fitted: tuple[ALSModel, csr_matrix],
) -> None:
    model, matrix = fitted
    allowed = np.random.default_rng(8).choice(matrix.shape[1], size=4500, replace=False)
    rows = np.arange(0, matrix.shape[0], 3)
    got = model.recommend(rows, matrix, 100, allowed_items=allowed)
    with brute_force():
        want = model.recommend(rows, matrix, 100, allowed_items=allowed)
    assert_equivalent(got, want, model.user_factors[rows], model.item_factors)
    assert np.isin(got[0], allowed).all()


def test_recommend_matches_brute_force_without_seen_filter(
    fitted: tuple[ALSModel, csr_matrix],
) -> None:
    model, matrix = fitted
    rows = np.arange(200)
    got = model.recommend(rows, matrix, 40, exclude_seen=False)
    with brute_force():
        want = model.recommend(rows, matrix, 40, exclude_seen=False)
    assert_equivalent(got, want, model.user_factors[rows], model.item_factors)


def test_rows_that_cannot_be_bounded_fall_back(fitted: tuple[ALSModel, csr_matrix]) -> None:
    """Zero factors (every score ties at 0), a member who has seen nearly everything (fewer
    eligible items than asked) and a single row: each still gets implicit's answer."""
    model, matrix = fitted
    n_items = matrix.shape[1]
    factors = model.user_factors[:4].copy()
    factors[1] = 0.0
    seen = matrix[:4].tolil()
    seen[2, :] = 1.0
    seen[2, :30] = 0.0  # 30 eligible items, 100 asked for
    seen = csr_matrix(seen)
    _, _, done = bounded_topk.bounded_top_k(model._norm_order(None), factors, seen, 100)
    assert done.tolist() == [True, False, False, True]
    got = model.recommend_from_factors(factors, seen, 100)
    with brute_force():
        want = model.recommend_from_factors(factors, seen, 100)
    assert_equivalent(got, want, factors, model.item_factors)
    assert (got[0][2] >= 0).sum() == 30
    assert not np.isin(got[0][2, :30], np.flatnonzero(seen[2].toarray()[0])).any()
    assert (got[0][2, 30:] == -1).all() and n_items > 100

    single = model.recommend_from_factors(factors[:1], seen[:1], 20)
    with brute_force():
        assert_same(single, model.recommend_from_factors(factors[:1], seen[:1], 20))


def test_non_finite_item_factors_leave_every_row_to_implicit(
    fitted: tuple[ALSModel, csr_matrix],
) -> None:
    model, matrix = fitted
    copy, implicit_model = model_of(model.params, model.user_factors, model.item_factors)
    implicit_model.item_factors[17, 0] = np.nan
    implicit_model.item_factors[99, 1] = np.inf
    rows = np.arange(100)
    _, _, done = bounded_topk.bounded_top_k(
        copy._norm_order(None), copy.user_factors[rows], matrix[rows], 50
    )
    assert not done.any()
    got = copy.recommend(rows, matrix, 50)
    with brute_force():
        want = copy.recommend(rows, matrix, 50)
    assert_same(got, want)


def test_new_item_factors_are_not_ranked_with_a_stale_order(
    fitted: tuple[ALSModel, csr_matrix],
) -> None:
    model, matrix = fitted
    copy, implicit_model = model_of(model.params, model.user_factors, model.item_factors)
    rows = np.arange(100)
    copy.recommend(rows, matrix, 50)  # builds and keeps the norm order
    implicit_model.item_factors = np.ascontiguousarray(model.item_factors[::-1])
    got = copy.recommend(rows, matrix, 50)
    with brute_force():
        want = copy.recommend(rows, matrix, 50)
    assert_equivalent(got, want, copy.user_factors[rows], copy.item_factors)


@settings(max_examples=150, deadline=None)
@given(
    data=st.data(),
    n_items=st.integers(2, 40),
    n_users=st.integers(1, 12),
    factors=st.integers(1, 4),
    k=st.integers(1, 8),
)
def test_bounded_matches_brute_force_with_ties(
    data: st.DataObject, n_items: int, n_users: int, factors: int, k: int
) -> None:
    """Small integer factors make many exact ties, at the k-th place and inside the top k."""
    small = st.integers(-3, 3).map(float)
    user_factors = data.draw(arrays(np.float32, (n_users, factors), elements=small))
    item_factors = data.draw(arrays(np.float32, (n_items, factors), elements=small))
    seen = csr_matrix(data.draw(arrays(np.bool_, (n_users, n_items))).astype(np.float32))
    allowed = data.draw(st.none() | st.lists(st.integers(0, n_items - 1), min_size=1))
    model, _ = model_of(ModelParams(factors=factors), np.zeros((1, factors)), item_factors)
    k = min(k, n_items)
    with bounded_for_any_size():
        got = model.recommend_from_factors(user_factors, seen, k, allowed_items=allowed)
    with brute_force():
        want = model.recommend_from_factors(user_factors, seen, k, allowed_items=allowed)
    assert_same(got, want)
