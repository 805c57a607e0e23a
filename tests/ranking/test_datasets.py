"""ranking.datasets: MovieLens in RecBole's layout read straight into arrays."""

from __future__ import annotations

import calendar
from pathlib import Path

import numpy as np
import pytest
from scipy.sparse import csr_matrix

from ranking.datasets import HUMAN, InteractionData, load_movielens

ML_100K = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "ml-100k"
needs_ml100k = pytest.mark.skipif(not ML_100K.is_dir(), reason=f"{ML_100K} not found")


@pytest.fixture(scope="module")
def ml100k() -> InteractionData:
    if not ML_100K.is_dir():
        pytest.skip(f"{ML_100K} not found")
    return load_movielens(ML_100K)


def tiny(**changes: object) -> InteractionData:
    fields: dict[str, object] = {
        "member_ids": np.array([1, 1, 2], dtype=np.int64),
        "item_ids": np.array([10, 30, 10], dtype=np.int64),
        "weights": np.ones(3, dtype=np.float32),
        "timestamps": np.array([5, 6, 7], dtype=np.int64),
        "items": np.array([10, 20, 30], dtype=np.int64),
        "item_creator": np.array([0, 1, 0], dtype=np.int64),
        "creators": ("a", "b"),
        "item_tags": csr_matrix(np.eye(3, 2, dtype=np.float32)),
        "tag_names": ("x", "y"),
        "item_provenance": np.zeros(3, dtype=np.int8),
        "item_published": np.array([300.0, 100.0, 200.0]),
    }
    fields.update(changes)
    return InteractionData(**fields)  # type: ignore[arg-type]


def test_creator_first_published_is_earliest_primary_item() -> None:
    data = tiny()
    # Creator 0 owns items 10 (t=300) and 30 (t=200) -> 200; creator 1 owns item 20 -> 100.
    np.testing.assert_array_equal(data.creator_first_published, [200.0, 100.0])
    # A creator whose items have no known time gets NaN.
    data = tiny(item_published=np.array([np.nan, 100.0, np.nan]))
    assert np.isnan(data.creator_first_published[0])


def test_item_index() -> None:
    data = tiny()
    np.testing.assert_array_equal(data.item_index([30, 10, 99, -1]), [2, 0, -1, -1])
    np.testing.assert_array_equal(data.members, [1, 2])
    assert (data.n_interactions, data.n_items, data.n_creators) == (3, 3, 2)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"weights": np.ones(2, dtype=np.float32)}, "parallel"),
        ({"items": np.array([10, 10, 30])}, "sorted and unique"),
        ({"item_creator": np.array([0, 2, 0])}, "item_creator"),
        ({"item_ids": np.array([10, 31, 10])}, "in items"),
        ({"tag_names": ("x",)}, "item_tags"),
    ],
)
def test_invalid_data_is_rejected(changes: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        tiny(**changes)


@needs_ml100k
def test_ml100k_sizes(ml100k: InteractionData) -> None:
    data = ml100k
    assert data.name == "ml-100k"
    assert data.n_interactions == 100_000
    assert data.members.size == 943
    assert data.n_items == 1682
    # 1,131 directors in the knowledge graph, of whom 1,056 are some film's first-listed one.
    assert data.n_creators == 1056
    assert int((data.item_creator == -1).sum()) == 92  # no known director: "unattributed"
    assert set(np.unique(data.weights).tolist()) == {1.0, 2.0, 3.0, 4.0, 5.0}
    assert bool(np.all(data.item_provenance == HUMAN))
    assert data.item_ids.dtype == np.int64 and data.timestamps.dtype == np.int64


@needs_ml100k
def test_ml100k_items(ml100k: InteractionData) -> None:
    data = ml100k
    assert "unknown" not in data.tag_names and len(data.tag_names) == 18
    toy_story = int(data.item_index([1])[0])
    tags = {data.tag_names[j] for j in data.item_tags[toy_story].indices}
    assert tags == {"Animation", "Children's", "Comedy"}
    assert data.item_published[toy_story] == calendar.timegm((1995, 1, 1, 0, 0, 0))
    # Film 267 has release year "unkonwn", film 1412 "V": no publication time, no crash.
    assert np.isnan(data.item_published[data.item_index([267, 1412])]).all()
    assert data.item_tags[int(data.item_index([267])[0])].nnz == 0  # only "unknown"


@needs_ml100k
def test_ml100k_primary_creator_is_first_listed_director(ml100k: InteractionData) -> None:
    data = ml100k
    # Film 1533 (m.096rvd) lists m.06zf4cd then m.06zf4d9.
    creator = int(data.item_creator[data.item_index([1533])[0]])
    assert data.creators[creator] == "m.06zf4cd"
    owned = data.item_creator >= 0
    first = np.full(data.n_creators, np.inf)
    np.minimum.at(
        first, data.item_creator[owned], np.nan_to_num(data.item_published, nan=np.inf)[owned]
    )
    np.testing.assert_array_equal(
        np.where(np.isinf(first), np.nan, first), data.creator_first_published
    )


def test_missing_file_and_bad_header(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        load_movielens(tmp_path)
    (tmp_path / "x.inter").write_text("user_id:token\titem:token\trating:float\ttimestamp:float\n")
    with pytest.raises(ValueError, match="expected columns"):
        load_movielens(tmp_path, dataset="x")


def test_reads_a_tiny_dataset(tmp_path: Path) -> None:
    files = {
        "t.inter": "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
        "7\t2\t4\t100.0\n8\t1\t1\t90\n",
        "t.item": "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n"
        "2\tB\t1990\tDrama unknown\n1\tA\t1980\tComedy Drama\n3\tC\tx\tunknown\n",
        "t.link": "item_id:token\tentity_id:token\n1\te1\n2\te2\n",
        "t.directed_by.kg": "head_id:token\trelation_id:token\ttail_id:token\n"
        "e2\tfilm.film.directed_by\td9\ne1\tfilm.film.directed_by\td5\n"
        "e1\tfilm.film.directed_by\td9\n",
    }
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    data = load_movielens(tmp_path, dataset="t")
    np.testing.assert_array_equal(data.items, [1, 2, 3])
    assert data.creators == ("d5", "d9")
    np.testing.assert_array_equal(data.item_creator, [0, 1, -1])
    assert data.tag_names == ("Comedy", "Drama")
    np.testing.assert_array_equal(data.item_tags.toarray(), [[1, 1], [0, 1], [0, 0]])
    np.testing.assert_array_equal(data.member_ids, [7, 8])
    np.testing.assert_array_equal(data.timestamps, [100, 90])
    y1980 = calendar.timegm((1980, 1, 1, 0, 0, 0))
    np.testing.assert_array_equal(
        data.creator_first_published, [y1980, calendar.timegm((1990, 1, 1, 0, 0, 0))]
    )
    assert np.isnan(data.item_published[2])
    (tmp_path / "t.inter").write_text(
        "user_id:token\titem_id:token\trating:float\ttimestamp:float\n7\t4\t4\t100\n"
    )
    with pytest.raises(ValueError, match="in items"):
        load_movielens(tmp_path, dataset="t")
