"""The interaction matrix and the ALS estimator."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import scipy.sparse
from scipy.sparse import csr_matrix

from ranking.als import ALSModel, NotFittedError
from ranking.interactions import interaction_matrix
from ranking.policy import ModelParams

SMALL = ModelParams(factors=8, iterations=5, regularization=0.1, alpha=2.0, seed=7)


def random_matrix(rng: np.random.Generator, users: int = 60, items: int = 40) -> csr_matrix:
    """A binary matrix where every user has between 2 and 10 items."""
    rows, cols = [], []
    for user in range(users):
        chosen = rng.choice(items, size=rng.integers(2, 11), replace=False)
        rows.extend([user] * len(chosen))
        cols.extend(chosen.tolist())
    return interaction_matrix(
        np.array(rows), np.array(cols), None, shape=(users, items), weighting="binary"
    )


@pytest.fixture
def matrix(rng: np.random.Generator) -> csr_matrix:
    return random_matrix(rng)


@pytest.fixture
def model(matrix: csr_matrix) -> ALSModel:
    return ALSModel(SMALL).fit(matrix)


# -- interaction_matrix ---------------------------------------------------------------------


def test_binary_weighting_counts_a_repeated_pair_once() -> None:
    m = interaction_matrix(
        np.array([0, 0, 0, 1]),
        np.array([2, 2, 1, 0]),
        np.array([5.0, 3.0, -1.0, 0.0]),
        shape=(2, 3),
        weighting="binary",
    )

    assert isinstance(m, csr_matrix)
    assert m.dtype == np.float32
    assert m.toarray().tolist() == [[0.0, 1.0, 1.0], [1.0, 0.0, 0.0]]


def test_weight_weighting_sums_a_repeated_pair_and_drops_non_positive_sums() -> None:
    m = interaction_matrix(
        np.array([0, 0, 0, 1, 1, 1]),
        np.array([2, 2, 1, 0, 1, 1]),
        np.array([5.0, 3.5, -1.0, 0.0, 2.0, -2.0], dtype=np.float32),
        shape=(2, 3),
        weighting="weight",
    )

    assert m.dtype == np.float32
    assert m.toarray().tolist() == [[0.0, 0.0, 8.5], [0.0, 0.0, 0.0]]
    assert m.nnz == 1  # no explicit zeros left for implicit to treat as interactions


def test_the_matrix_has_the_requested_shape_even_where_rows_are_empty() -> None:
    m = interaction_matrix(np.array([1]), np.array([1]), None, shape=(4, 5), weighting="binary")

    assert m.shape == (4, 5)
    assert m.nnz == 1


def test_the_matrix_refuses_indices_outside_its_shape() -> None:
    with pytest.raises(IndexError):
        interaction_matrix(np.array([2]), np.array([0]), None, shape=(2, 2), weighting="binary")
    with pytest.raises(IndexError):
        interaction_matrix(np.array([0]), np.array([-1]), None, shape=(2, 2), weighting="binary")


def test_the_matrix_refuses_an_unknown_weighting_and_missing_weights() -> None:
    with pytest.raises(ValueError):
        interaction_matrix(np.array([0]), np.array([0]), None, shape=(1, 1), weighting="log")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        interaction_matrix(np.array([0]), np.array([0]), None, shape=(1, 1), weighting="weight")


# -- fitting --------------------------------------------------------------------------------


def test_fitting_gives_float32_factors_of_the_policys_size(
    model: ALSModel, matrix: csr_matrix
) -> None:
    assert model.user_factors.shape == (matrix.shape[0], SMALL.factors)
    assert model.item_factors.shape == (matrix.shape[1], SMALL.factors)
    assert model.user_factors.dtype == np.float32
    assert model.item_factors.dtype == np.float32


def test_fitting_is_reproducible_with_the_same_seed(matrix: csr_matrix) -> None:
    first = ALSModel(SMALL).fit(matrix)
    second = ALSModel(SMALL, num_threads=1).fit(matrix)

    assert np.array_equal(first.user_factors, second.user_factors)
    assert np.array_equal(first.item_factors, second.item_factors)


def test_a_different_seed_gives_different_factors(matrix: csr_matrix) -> None:
    first = ALSModel(SMALL).fit(matrix)
    other = ALSModel(SMALL.model_copy(update={"seed": 8})).fit(matrix)

    assert not np.array_equal(first.item_factors, other.item_factors)


def test_fitting_twice_starts_afresh_instead_of_warm_starting(matrix: csr_matrix) -> None:
    model = ALSModel(SMALL).fit(matrix)
    once = model.item_factors.copy()

    model.fit(matrix)

    assert np.array_equal(model.item_factors, once)


def test_fitting_accepts_other_sparse_formats_and_dtypes(matrix: csr_matrix) -> None:
    reference = ALSModel(SMALL).fit(matrix)

    converted = ALSModel(SMALL).fit(scipy.sparse.coo_matrix(matrix, dtype=np.float64))

    assert np.array_equal(converted.item_factors, reference.item_factors)


def test_an_unfitted_model_says_so() -> None:
    with pytest.raises(NotFittedError):
        _ = ALSModel(SMALL).user_factors


# -- recommending ---------------------------------------------------------------------------


def test_it_never_recommends_an_item_the_user_has_seen(model: ALSModel, matrix: csr_matrix) -> None:
    users = np.arange(matrix.shape[0])

    items, _ = model.recommend(users, matrix, 10)

    for user in users:
        seen = set(matrix[user].indices.tolist())
        assert not seen & set(items[user].tolist())


def test_it_ranks_by_the_dot_product_of_the_factors(model: ALSModel, matrix: csr_matrix) -> None:
    users = np.array([3, 0, 17])

    items, scores = model.recommend(users, matrix, 5)

    full = model.user_factors[users] @ model.item_factors.T
    full[matrix[users].toarray() > 0] = -np.inf
    expected = np.argsort(-full, axis=1, kind="stable")[:, :5]
    assert items.dtype == np.int64
    assert scores.dtype == np.float32
    assert np.array_equal(np.sort(items, axis=1), np.sort(expected, axis=1))
    assert np.allclose(scores, np.take_along_axis(full, items, axis=1), rtol=1e-5, atol=1e-6)
    assert np.all(np.diff(scores, axis=1) <= 0)


def test_it_pads_with_minus_one_and_minus_infinity_when_few_items_remain() -> None:
    m = interaction_matrix(
        np.array([0, 0, 0, 1]), np.array([0, 1, 2, 0]), None, shape=(2, 4), weighting="binary"
    )
    model = ALSModel(SMALL).fit(m)

    items, scores = model.recommend(np.array([0, 1]), m, 6)

    assert items.shape == scores.shape == (2, 6)
    assert items[0].tolist() == [3, -1, -1, -1, -1, -1]
    assert sorted(items[1, :3].tolist()) == [1, 2, 3]
    assert items[1, 3:].tolist() == [-1, -1, -1]
    assert np.array_equal(np.isinf(scores), items == -1)
    assert np.all(np.isfinite(scores[items >= 0]))


def test_it_recommends_only_allowed_items_and_ignores_repeats_in_that_list(
    model: ALSModel, matrix: csr_matrix
) -> None:
    allowed = np.array([5, 1, 5, 30, 2, 1])
    users = np.arange(matrix.shape[0])

    items, scores = model.recommend(users, matrix, 6, allowed_items=allowed)

    for user in users:
        row = items[user][items[user] >= 0].tolist()
        assert set(row) <= {1, 2, 5, 30}
        assert len(row) == len(set(row))
        assert set(row) == {1, 2, 5, 30} - set(matrix[user].indices.tolist())
    assert np.all(items[:, 4:] == -1)
    assert np.all(np.isneginf(scores[:, 4:]))


def test_an_empty_allowed_list_gives_empty_feeds(model: ALSModel, matrix: csr_matrix) -> None:
    items, scores = model.recommend(np.array([0, 1]), matrix, 3, allowed_items=np.array([], int))

    assert np.all(items == -1)
    assert np.all(np.isneginf(scores))


def test_seen_items_may_come_back_when_not_excluded(model: ALSModel, matrix: csr_matrix) -> None:
    users = np.arange(matrix.shape[0])

    items, _ = model.recommend(users, matrix, matrix.shape[1], exclude_seen=False)

    assert np.all(items >= 0)
    assert all(len(set(row.tolist())) == matrix.shape[1] for row in items)


def test_asking_for_more_items_than_exist_pads_instead_of_repeating_item_zero(
    model: ALSModel, matrix: csr_matrix
) -> None:
    n = matrix.shape[1] + 5

    items, scores = model.recommend(np.array([0]), matrix, n, exclude_seen=False)

    assert sorted(items[0, : matrix.shape[1]].tolist()) == list(range(matrix.shape[1]))
    assert items[0, matrix.shape[1] :].tolist() == [-1] * 5
    assert np.all(np.isneginf(scores[0, matrix.shape[1] :]))


def test_it_refuses_users_outside_the_model(model: ALSModel, matrix: csr_matrix) -> None:
    with pytest.raises(IndexError):
        model.recommend(np.array([matrix.shape[0]]), matrix, 3)


def test_zero_items_or_zero_users_give_empty_arrays(model: ALSModel, matrix: csr_matrix) -> None:
    items, scores = model.recommend(np.array([0, 1]), matrix, 0)
    assert items.shape == scores.shape == (2, 0)

    items, scores = model.recommend(np.array([], dtype=np.int64), matrix, 4)
    assert items.shape == scores.shape == (0, 4)


@pytest.mark.parametrize("allowed", [None, [3, 9, 1, 27, 14, 33, 8]], ids=["all", "some"])
def test_it_gives_exactly_what_implicit_itself_recommends(
    model: ALSModel, matrix: csr_matrix, allowed: list[int] | None
) -> None:
    users = np.arange(matrix.shape[0])
    bare = model.implicit_model

    ours, our_scores = model.recommend(users, matrix, 5, allowed_items=allowed)
    items = None if allowed is None else np.array(allowed)
    ids, scores = bare.recommend(users, matrix[users], N=5, items=items)

    real = scores > -np.finfo(np.float32).max
    for user in users:
        keep = real[user]
        width = int(keep.sum())
        assert ours[user, :width].tolist() == ids[user][keep].tolist()
        assert np.array_equal(our_scores[user, :width], scores[user][keep])
        assert np.all(ours[user, width:] == -1)


# -- recalculating users --------------------------------------------------------------------


def test_recalculated_factors_of_a_training_row_are_close_to_the_trained_ones(
    matrix: csr_matrix,
) -> None:
    model = ALSModel(SMALL.model_copy(update={"iterations": 15})).fit(matrix)

    factors = model.recalculate_users(matrix)

    trained = model.user_factors
    assert factors.dtype == np.float32
    assert factors.shape == trained.shape
    cosine = (factors * trained).sum(axis=1) / (
        np.linalg.norm(factors, axis=1) * np.linalg.norm(trained, axis=1)
    )
    assert cosine.min() > 0.99
    relative = np.linalg.norm(factors - trained, axis=1) / np.linalg.norm(trained, axis=1)
    assert np.median(relative) < 0.05


def test_recalculating_solves_the_weighted_least_squares_with_the_models_alpha(
    rng: np.random.Generator,
) -> None:
    users, items = 30, 25
    rows = rng.integers(0, users, 200)
    cols = rng.integers(0, items, 200)
    weights = rng.uniform(0.5, 3.0, 200)
    train = interaction_matrix(rows, cols, weights, shape=(users, items), weighting="weight")
    params = SMALL.model_copy(update={"alpha": 4.0, "regularization": 0.3})
    model = ALSModel(params).fit(train)
    fresh = interaction_matrix(
        np.array([0, 0, 0, 1]),
        np.array([2, 7, 11, 4]),
        np.array([1.0, 2.5, 0.7, 3.0]),
        shape=(2, items),
        weighting="weight",
    )

    factors = model.recalculate_users(fresh)

    # Hu et al. with confidence alpha * w (implicit's convention): (Y'C Y + lambda I) x = Y'C p.
    y = model.item_factors.astype(np.float64)
    for row in range(2):
        confidence = np.ones(items)
        preference = np.zeros(items)
        start, stop = fresh.indptr[row], fresh.indptr[row + 1]
        confidence[fresh.indices[start:stop]] = params.alpha * fresh.data[start:stop]
        preference[fresh.indices[start:stop]] = 1.0
        a = y.T @ (confidence[:, None] * y) + params.regularization * np.eye(params.factors)
        expected = np.linalg.solve(a, y.T @ (confidence * preference))
        assert np.allclose(factors[row], expected, rtol=1e-3, atol=1e-4)


def test_recalculating_leaves_the_model_unchanged_and_gives_zeros_for_empty_rows(
    model: ALSModel, matrix: csr_matrix
) -> None:
    users_before = model.user_factors.copy()
    items_before = model.item_factors.copy()
    rows = csr_matrix(matrix[[4, 9]])
    empty = csr_matrix((1, matrix.shape[1]), dtype=np.float32)

    model.recalculate_users(rows)
    zeros = model.recalculate_users(empty)

    assert np.array_equal(model.user_factors, users_before)
    assert np.array_equal(model.item_factors, items_before)
    assert zeros.shape == (1, SMALL.factors)
    assert not zeros.any()
    assert model.recalculate_users(matrix[:0]).shape == (0, SMALL.factors)


def test_recalculating_refuses_a_matrix_of_the_wrong_width_or_kind(
    model: ALSModel, matrix: csr_matrix
) -> None:
    with pytest.raises(ValueError, match="items"):
        model.recalculate_users(csr_matrix((2, matrix.shape[1] + 1), dtype=np.float32))
    with pytest.raises(TypeError):
        model.recalculate_users(matrix[:2].toarray())  # type: ignore[arg-type]
    bad = matrix[:2].copy()
    bad.data[0] = np.nan
    with pytest.raises(ValueError, match="finite"):
        model.recalculate_users(bad)
    with pytest.raises(NotFittedError):
        ALSModel(SMALL).recalculate_users(matrix)


def test_recommending_from_factors_matches_recommending_by_row(
    model: ALSModel, matrix: csr_matrix
) -> None:
    users = np.array([5, 0, 12, 5])
    allowed = np.arange(0, 40, 3)

    options: list[dict[str, Any]] = [{}, {"allowed_items": allowed}, {"exclude_seen": False}]
    for kwargs in options:
        by_row = model.recommend(users, matrix, 8, **kwargs)
        by_factors = model.recommend_from_factors(
            model.user_factors[users], matrix[users], 8, **kwargs
        )
        assert np.array_equal(by_row[0], by_factors[0])
        assert np.array_equal(by_row[1], by_factors[1])


def test_recalculated_members_get_feeds_without_their_seen_items(
    model: ALSModel, matrix: csr_matrix
) -> None:
    newcomers = csr_matrix(matrix[[2, 3]])

    items, scores = model.recommend_from_factors(model.recalculate_users(newcomers), newcomers, 10)

    full = model.recalculate_users(newcomers) @ model.item_factors.T
    for row in range(2):
        assert not set(items[row].tolist()) & set(newcomers[row].indices.tolist())
        assert np.allclose(scores[row], full[row, items[row]], rtol=1e-5, atol=1e-6)


def test_recommending_from_factors_refuses_bad_shapes(model: ALSModel, matrix: csr_matrix) -> None:
    factors = model.user_factors[:2]
    with pytest.raises(ValueError, match="user_factors"):
        model.recommend_from_factors(factors[:, :3], matrix[:2], 3)
    with pytest.raises(ValueError, match="user_items"):
        model.recommend_from_factors(factors, matrix[:3], 3)
    with pytest.raises(ValueError, match="user_items"):
        model.recommend_from_factors(factors, None, 3)
    with pytest.raises(ValueError, match="finite"):
        model.recommend_from_factors(np.full_like(factors, np.nan), matrix[:2], 3)
    with pytest.raises(ValueError, match="n must be"):
        model.recommend_from_factors(factors, matrix[:2], -1)
    items, _ = model.recommend_from_factors(factors, None, 3, exclude_seen=False)
    assert items.shape == (2, 3)


# -- saving ---------------------------------------------------------------------------------


def test_a_saved_and_loaded_model_recommends_exactly_the_same(
    model: ALSModel, matrix: csr_matrix, tmp_path: Path
) -> None:
    path = tmp_path / "model.bin"
    users = np.arange(matrix.shape[0])

    model.save(path)
    loaded = ALSModel.load(path)

    assert path.exists()  # the exact path, no ".npz" appended
    assert loaded.params == model.params
    assert np.array_equal(loaded.user_factors, model.user_factors)
    assert np.array_equal(loaded.item_factors, model.item_factors)
    before = model.recommend(users, matrix, 7, allowed_items=np.arange(0, 40, 3))
    after = loaded.recommend(users, matrix, 7, allowed_items=np.arange(0, 40, 3))
    assert np.array_equal(before[0], after[0])
    assert np.array_equal(before[1], after[1])


def test_the_saved_file_holds_plain_arrays_and_json_metadata(
    model: ALSModel, tmp_path: Path
) -> None:
    path = tmp_path / "model.npz"
    model.save(path)

    with np.load(path, allow_pickle=False) as archive:
        metadata = json.loads(str(archive["metadata"]))
        assert set(archive.files) == {"user_factors", "item_factors", "metadata"}

    assert metadata["params"] == SMALL.model_dump(mode="json")
    assert metadata["format"] == "commonfeed.als"


def test_loading_refuses_a_file_that_is_not_a_saved_model(tmp_path: Path) -> None:
    path = tmp_path / "other.npz"
    with open(path, "wb") as handle:
        np.savez(handle, something=np.zeros(3))

    with pytest.raises(ValueError):
        ALSModel.load(path)


def test_loading_never_unpickles(tmp_path: Path) -> None:
    path = tmp_path / "pickled.npz"
    with open(path, "wb") as handle:
        np.savez(handle, metadata=np.array([{"format": "commonfeed.als"}], dtype=object))

    with pytest.raises(ValueError, match="pickle"):
        ALSModel.load(path)
