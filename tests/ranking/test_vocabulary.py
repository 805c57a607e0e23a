"""Vocabulary: an exact, growable id <-> index mapping."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from ranking.vocabulary import Vocabulary

INT64 = st.integers(min_value=-(2**63), max_value=2**63 - 1)
id_lists = st.lists(INT64, max_size=60)


def test_it_indexes_distinct_ids_in_ascending_order() -> None:
    vocab = Vocabulary.from_ids(np.array([30, 10, 30, 20, 10], dtype=np.int64))

    assert len(vocab) == 3
    assert vocab.ids.tolist() == [10, 20, 30]
    assert vocab.ids.dtype == np.int64
    assert vocab.lookup(np.array([10, 20, 30])).tolist() == [0, 1, 2]


def test_lookup_returns_minus_one_for_unknown_ids() -> None:
    vocab = Vocabulary.from_ids(np.array([5, 7]))

    assert vocab.lookup(np.array([4, 5, 6, 7, 8, -1])).tolist() == [-1, 0, -1, 1, -1, -1]


def test_lookup_keeps_the_shape_of_its_input() -> None:
    vocab = Vocabulary.from_ids(np.array([1, 2, 3]))

    result = vocab.lookup(np.array([[3, 9], [1, 2]]))

    assert result.dtype == np.int64
    assert result.tolist() == [[2, -1], [0, 1]]


def test_ids_that_a_hash_would_confuse_get_distinct_indices() -> None:
    ids = np.array([1, 2**32 + 1, 2**40 + 1, -(2**63), 2**63 - 1, 0], dtype=np.int64)
    vocab = Vocabulary.from_ids(ids)

    index = vocab.lookup(ids)

    assert len(set(index.tolist())) == len(ids)
    assert np.array_equal(vocab.ids[index], ids)


@given(ids=id_lists, queries=id_lists)
def test_lookup_agrees_with_a_dictionary(ids: list[int], queries: list[int]) -> None:
    vocab = Vocabulary.from_ids(np.array(ids, dtype=np.int64))
    reference = {id_: index for index, id_ in enumerate(sorted(set(ids)))}

    found = vocab.lookup(np.array(queries + ids, dtype=np.int64))

    assert found.tolist() == [reference.get(q, -1) for q in queries + ids]


@st.composite
def dense_ids(draw: st.DrawFn) -> tuple[list[int], list[int]]:
    """Database-like keys (a narrow window anywhere in int64, read through a direct table) and
    queries inside, around and far outside it."""
    base = draw(st.integers(min_value=-(2**63), max_value=2**63 - 1 - 200))
    ids = draw(st.lists(st.integers(0, 200).map(lambda k: base + k), max_size=60))
    near = st.integers(-5, 205).map(lambda k: min(max(base + k, -(2**63)), 2**63 - 1))
    queries = draw(st.lists(st.one_of(near, INT64), max_size=60))
    return ids, queries


@given(case=dense_ids())
def test_lookup_of_dense_keys_agrees_with_a_dictionary(case: tuple[list[int], list[int]]) -> None:
    ids, queries = case
    vocab = Vocabulary.from_ids(np.array(ids, dtype=np.int64))
    reference = {id_: index for index, id_ in enumerate(sorted(set(ids)))}

    found = vocab.lookup(np.array(queries + ids, dtype=np.int64))

    assert found.tolist() == [reference.get(q, -1) for q in queries + ids]
    if ids:
        assert vocab._table is not None  # the direct table, not the binary search


def test_sparse_keys_are_searched_not_tabled() -> None:
    vocab = Vocabulary.from_ids(np.array([5, 2**40, -(2**50)], dtype=np.int64))

    assert vocab._table is None
    assert vocab.lookup(np.array([2**40, 6, -(2**50)])).tolist() == [2, -1, 0]


@given(first=id_lists, second=id_lists)
def test_extend_keeps_every_existing_index_and_appends_the_unseen_ids(
    first: list[int], second: list[int]
) -> None:
    old = Vocabulary.from_ids(np.array(first, dtype=np.int64))

    new = old.extend(np.array(second, dtype=np.int64))

    assert np.array_equal(new.ids[: len(old)], old.ids)
    assert new.ids[len(old) :].tolist() == sorted(set(second) - set(first))
    assert np.array_equal(new.lookup(old.ids), np.arange(len(old)))
    assert len(set(new.ids.tolist())) == len(new)


def test_extend_returns_a_new_vocabulary_and_leaves_the_old_one_alone() -> None:
    old = Vocabulary.from_ids(np.array([10, 20]))

    new = old.extend(np.array([15, 20, 5, 5]))

    assert old.ids.tolist() == [10, 20]
    assert new.ids.tolist() == [10, 20, 5, 15]
    assert new.lookup(np.array([5, 10, 15, 20])).tolist() == [2, 0, 3, 1]


def test_extending_with_only_known_ids_changes_nothing() -> None:
    vocab = Vocabulary.from_ids(np.array([1, 2, 3]))

    assert vocab.extend(np.array([3, 1])) == vocab


@given(ids=id_lists, extra=id_lists)
def test_it_round_trips_through_json(ids: list[int], extra: list[int]) -> None:
    vocab = Vocabulary.from_ids(np.array(ids, dtype=np.int64)).extend(
        np.array(extra, dtype=np.int64)
    )

    restored = Vocabulary.from_json(vocab.to_json())

    assert restored == vocab
    assert restored.ids.dtype == np.int64
    assert np.array_equal(restored.lookup(vocab.ids), np.arange(len(vocab)))


def test_its_json_is_plain_data() -> None:
    data = json.loads(Vocabulary.from_ids(np.array([3, 1])).to_json())

    assert data == {"format": "commonfeed.vocabulary", "version": 1, "ids": [1, 3]}


def test_it_refuses_a_json_document_that_is_not_a_vocabulary() -> None:
    with pytest.raises(ValueError):
        Vocabulary.from_json('{"format": "other", "version": 1, "ids": []}')
    with pytest.raises(ValueError):
        Vocabulary.from_json('{"format": "commonfeed.vocabulary", "version": 1, "ids": [1.5]}')


def test_it_refuses_duplicate_ids_when_given_the_index_order_directly() -> None:
    with pytest.raises(ValueError, match="unique"):
        Vocabulary(np.array([1, 2, 1]))


def test_it_refuses_ids_that_are_not_integers() -> None:
    with pytest.raises(TypeError):
        Vocabulary.from_ids(np.array([1.0, 2.0]))
    with pytest.raises(TypeError):
        Vocabulary.from_ids(np.array([1])).lookup(np.array([1.0]))


def test_an_empty_vocabulary_knows_no_ids() -> None:
    vocab = Vocabulary.from_ids(np.array([], dtype=np.int64))

    assert len(vocab) == 0
    assert vocab.lookup(np.array([1, 2])).tolist() == [-1, -1]
    assert vocab.extend(np.array([4])).ids.tolist() == [4]


def test_unsigned_ids_beyond_int64_are_unknown_rather_than_wrapped() -> None:
    vocab = Vocabulary.from_ids(np.array([-1, 1], dtype=np.int64))

    assert vocab.lookup(np.array([2**64 - 1, 1], dtype=np.uint64)).tolist() == [-1, 1]


def test_its_ids_cannot_be_modified_in_place() -> None:
    vocab = Vocabulary.from_ids(np.array([1, 2]))

    with pytest.raises(ValueError):
        vocab.ids[0] = 5


def test_it_scales_to_a_million_ids(rng: np.random.Generator) -> None:
    ids = rng.choice(2**62, size=1_000_000, replace=False).astype(np.int64)
    vocab = Vocabulary.from_ids(ids)

    index = vocab.lookup(ids)

    assert len(vocab) == 1_000_000
    assert np.array_equal(vocab.ids[index], ids)
