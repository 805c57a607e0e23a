"""A feed run's array code: the COPY text of the feed rows, and counting members per item.

Both replaced slower per-row or per-pair code; each is checked against what that code gave.
"""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from feeds.runs.copytext import feed_copy_text
from feeds.runs.services import _members_per_item
from feeds.runs.store import _feed_rows
from ranking.pipeline import FeedBatch


def _batch(
    items: np.ndarray, scores: np.ndarray, base: np.ndarray, reasons: np.ndarray
) -> FeedBatch:
    rows = items.shape[0]
    return FeedBatch(
        member_ids=np.arange(rows, dtype=np.int64) * 7919 + 3,
        item_ids=items,
        scores=scores.astype(np.float32),
        base_scores=base.astype(np.float32),
        reasons=reasons.astype(np.int64),
        metadata={},
    )


def _parsed(batch: FeedBatch) -> list[list[object]]:
    text = b"".join(
        feed_copy_text(
            42, batch.member_ids, batch.item_ids, batch.scores, batch.base_scores, batch.reasons
        )
    )
    assert text == b"" or text.endswith(b"\n")
    lines = text.decode().splitlines()
    return [[json.loads(field) for field in line.split("\t")] for line in lines]


def _expected(batch: FeedBatch) -> list[list[object]]:
    return [[42, *row] for row in _feed_rows(batch)]


def test_it_writes_what_json_dumps_wrote_for_the_same_rows() -> None:
    items = np.array(
        [
            [12, 7, 123_456_789_012, -1],  # an id past 32 bits, one padding entry
            [-1, -1, -1, -1],  # no entries at all
            [5, -1, 9, 0],  # padding in the middle, item id 0
        ],
        dtype=np.int64,
    )
    scores = np.array([[1.5, -0.25, 3e-7, 0.0], [0, 0, 0, 0], [-1e-9, 0.0, -2.0000004, 7.1234567]])
    base = np.array([[123456.75, 0.1, -0.0, 2.5], [0, 0, 0, 0], [1e-6, 9.9999996, 0, -3]])
    reasons = np.array([[1, 0, 31, 4], [0, 0, 0, 0], [2, 0, 8, 1]])
    batch = _batch(items, scores, base, reasons)

    assert _parsed(batch) == _expected(batch)


def test_it_writes_the_scores_with_six_decimals_and_no_spaces() -> None:
    batch = _batch(
        np.array([[3, 4]]), np.array([[0.5, -12.25]]), np.array([[1, 0]]), np.array([[1, 0]])
    )

    text = b"".join(
        feed_copy_text(
            7, batch.member_ids, batch.item_ids, batch.scores, batch.base_scores, batch.reasons
        )
    )

    assert text == b"7\t3\t[3,4]\t[0.500000,-12.250000]\t[1.000000,0.000000]\t[1,0]\n"


def test_padding_may_hold_any_score_but_a_real_entry_must_be_finite() -> None:
    items = np.array([[3, -1, -1]])
    scores = np.array([[0.5, np.nan, -np.inf]])
    padded = _batch(items, scores, scores, np.array([[1, 0, 0]]))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "invalid value encountered in cast" either
        assert _parsed(padded) == _expected(padded)

    broken = _batch(
        np.array([[3, 4]]), np.array([[0.5, np.nan]]), np.zeros((1, 2)), np.ones((1, 2))
    )
    with pytest.raises(ValueError, match="not a finite number"):
        _parsed(broken)


def test_an_empty_batch_writes_nothing() -> None:
    empty = np.zeros((0, 5))
    batch = _batch(empty.astype(np.int64), empty, empty, empty)
    assert _parsed(batch) == []


@settings(max_examples=60, deadline=None)
@given(
    shape=st.tuples(st.integers(1, 12), st.integers(1, 9)),
    data=st.data(),
)
def test_any_batch_reads_back_as_the_same_rows(shape: tuple[int, int], data: st.DataObject) -> None:
    items = data.draw(hnp.arrays(np.int64, shape, elements=st.integers(-1, 2**53)))
    floats = st.floats(-1e6, 1e6, allow_nan=False, width=32)
    scores = data.draw(hnp.arrays(np.float32, shape, elements=floats))
    base = data.draw(hnp.arrays(np.float32, shape, elements=floats))
    reasons = data.draw(hnp.arrays(np.int64, shape, elements=st.integers(0, 2**20)))

    batch = _batch(items, scores, base, reasons)

    assert _parsed(batch) == _expected(batch)


@pytest.mark.parametrize("rows", [4_999, 5_000, 5_001])
def test_blocks_of_rows_join_into_one_text(rows: int) -> None:
    rng = np.random.default_rng(rows)
    items = rng.integers(-1, 10**6, (rows, 3))
    batch = _batch(
        items, rng.standard_normal((rows, 3)), rng.random((rows, 3)), rng.integers(0, 9, (rows, 3))
    )

    assert _parsed(batch) == _expected(batch)


def _members_per_item_slowly(members: np.ndarray, items: np.ndarray) -> tuple[list, list]:
    pairs = set(zip(members.tolist(), items.tolist(), strict=True))
    counts: dict[int, int] = {}
    for _, item in pairs:
        counts[item] = counts.get(item, 0) + 1
    ordered = sorted(counts)
    return ordered, [counts[item] for item in ordered]


@settings(max_examples=80, deadline=None)
@given(
    pairs=st.lists(st.tuples(st.integers(1, 60), st.integers(1, 40)), max_size=200),
    # Small ids count with bincount; ids too far apart to bincount, or to pack into one int64
    # key, take the other paths.
    offset=st.sampled_from([(0, 0), (0, 10**12), (2**40, 2**30)]),
)
def test_members_per_item_counts_each_member_once(
    pairs: list[tuple[int, int]], offset: tuple[int, int]
) -> None:
    members = np.array([m for m, _ in pairs], dtype=np.int64) + offset[0]
    items = np.array([i for _, i in pairs], dtype=np.int64) + offset[1]

    found, counts = _members_per_item(members, items)

    assert (found.tolist(), counts.tolist()) == _members_per_item_slowly(members, items)
