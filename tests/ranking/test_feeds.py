"""compute_feeds: interactions and a policy in, every member's feed out."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ranking.feeds import FeedBatch, compute_feeds
from ranking.policy import ModelParams, Policy

ML_100K = Path(__file__).resolve().parents[3] / "shared" / "data" / "ml-100k"
FAST = Policy(model=ModelParams(factors=4, iterations=3, regularization=0.1, seed=3))


def fast_policy(weighting: str = "binary") -> Policy:
    return FAST.model_copy(update={"model": FAST.model.model_copy(update={"weighting": weighting})})


def feeds(
    interactions: list[tuple[int, int, float]],
    *,
    feed_members: list[int],
    candidates: list[int],
    n: int,
    policy: Policy = FAST,
    **options: int,
) -> FeedBatch:
    members, items, weights = zip(*interactions, strict=True) if interactions else ((), (), ())
    return compute_feeds(
        member_ids=np.array(members, dtype=np.int64),
        item_ids=np.array(items, dtype=np.int64),
        weights=np.array(weights, dtype=np.float32),
        policy=policy,
        feed_members=np.array(feed_members, dtype=np.int64),
        candidate_items=np.array(candidates, dtype=np.int64),
        n=n,
        **options,
    )


def assert_well_formed(
    batch: FeedBatch,
    interactions: list[tuple[int, int, float]],
    feed_members: list[int],
    candidates: list[int],
    n: int,
) -> None:
    """Every invariant a feed must satisfy, whatever the data."""
    seen: dict[int, set[int]] = defaultdict(set)
    for member, item, _ in interactions:
        seen[member].add(item)
    assert batch.member_ids.tolist() == feed_members
    assert batch.item_ids.shape == batch.scores.shape == (len(feed_members), n)
    assert batch.item_ids.dtype == np.int64
    assert batch.scores.dtype == np.float32
    assert np.array_equal(batch.item_ids == -1, np.isneginf(batch.scores))
    for member, row, scores in zip(feed_members, batch.item_ids, batch.scores, strict=True):
        filled = row[row != -1].tolist()
        assert filled == row[: len(filled)].tolist(), "padding only at the end"
        assert len(filled) == len(set(filled)), "no item twice in a feed"
        assert set(filled) <= set(candidates), "only candidate items"
        assert not set(filled) & seen[member], "never an item the member interacted with"
        assert np.all(np.diff(scores[: len(filled)]) <= 0), "best first"
    json.dumps(batch.metadata)


@st.composite
def communities(draw: st.DrawFn) -> dict[str, object]:
    """A small community with sparse, large database ids and awkward edge cases."""
    member_pool = [1000 + 7 * k for k in range(draw(st.integers(1, 8)))]
    item_pool = [2**40 + 13 * k for k in range(draw(st.integers(1, 10)))]
    interactions = draw(
        st.lists(
            st.tuples(
                st.sampled_from(member_pool),
                st.sampled_from(item_pool),
                st.sampled_from([-1.0, 0.0, 0.5, 1.0, 4.0]),
            ),
            max_size=40,
        )
    )
    feed_members = draw(st.lists(st.sampled_from([*member_pool, 5, 6]), max_size=10))
    candidates = draw(st.lists(st.sampled_from([*item_pool, 3, 4]), max_size=12))
    return {
        "interactions": interactions,
        "feed_members": feed_members,
        "candidates": candidates,
        "n": draw(st.integers(0, 6)),
        "weighting": draw(st.sampled_from(["binary", "weight"])),
    }


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(community=communities())
def test_feeds_hold_only_unseen_candidate_items_without_repeats(
    community: dict[str, object],
) -> None:
    interactions = community["interactions"]
    feed_members = community["feed_members"]
    candidates = community["candidates"]
    n = community["n"]
    assert isinstance(interactions, list) and isinstance(feed_members, list)
    assert isinstance(candidates, list) and isinstance(n, int)

    batch = feeds(
        interactions,
        feed_members=feed_members,
        candidates=candidates,
        n=n,
        policy=fast_policy(str(community["weighting"])),
    )

    assert_well_formed(batch, interactions, feed_members, candidates, n)
    assert batch.metadata["id_collisions"] == 0


def test_it_never_recommends_an_item_the_member_has_seen(rng: np.random.Generator) -> None:
    members = rng.integers(0, 50, size=600) * 10 + 1
    items = rng.integers(0, 80, size=600) * 10 + 2
    interactions = [(int(m), int(i), 1.0) for m, i in zip(members, items, strict=True)]
    feed_members = sorted(set(members.tolist()))
    candidates = sorted(set(items.tolist()))

    batch = feeds(interactions, feed_members=feed_members, candidates=candidates, n=20)

    assert_well_formed(batch, interactions, feed_members, candidates, 20)
    assert np.all(batch.item_ids != -1)
    assert batch.metadata["fallback_members"] == 0


def test_members_without_history_get_the_most_popular_candidates() -> None:
    interactions = [(1, 10, 1.0), (2, 10, 1.0), (3, 10, 1.0), (1, 20, 1.0), (2, 20, 1.0)]
    interactions += [(1, 20, 1.0), (3, 40, 1.0), (2, 30, 1.0)]  # a repeat counts once

    batch = feeds(interactions, feed_members=[7, 1, 8], candidates=[10, 20, 30, 40, 50], n=4)

    assert batch.item_ids[0].tolist() == [10, 20, 30, 40]  # 3, 2, then ties by id
    assert batch.item_ids[2].tolist() == batch.item_ids[0].tolist()
    assert np.allclose(batch.scores[0], [1.0, 2 / 3, 1 / 3, 1 / 3])
    assert batch.metadata["fallback_members"] == 2
    assert set(batch.item_ids[1].tolist()) == {30, 40, -1}  # member 1 has history: ALS


def test_items_nobody_interacted_with_are_left_out() -> None:
    interactions = [(1, 10, 1.0), (2, 20, 1.0)]

    batch = feeds(interactions, feed_members=[1, 3], candidates=[10, 20, 99], n=3)

    assert 99 not in batch.item_ids
    assert batch.item_ids.tolist() == [[20, -1, -1], [10, 20, -1]]


def test_feeds_are_padded_when_there_are_fewer_candidates_than_n() -> None:
    interactions = [(m, i, 1.0) for m in range(1, 6) for i in (10, 20, 30) if (m + i) % 4]

    batch = feeds(interactions, feed_members=[1, 2, 3, 9], candidates=[10, 20], n=5)

    assert batch.item_ids.shape == (4, 5)
    assert np.all(batch.item_ids[:, 2:] == -1)
    assert np.all(np.isneginf(batch.scores[:, 2:]))
    assert_well_formed(batch, interactions, [1, 2, 3, 9], [10, 20], 5)


def test_a_member_whose_only_interactions_weigh_nothing_falls_back_without_seen_items() -> None:
    interactions = [(1, 10, 1.0), (2, 10, 1.0), (2, 20, 1.0), (3, 10, 0.0), (3, 30, 1.0)]
    interactions += [(4, 10, -1.0)]
    policy = fast_policy("weight")

    batch = feeds(interactions, feed_members=[4], candidates=[10, 20, 30], n=3, policy=policy)

    assert batch.item_ids.tolist() == [[20, 30, -1]]  # 10 is the most popular, but was seen
    assert batch.metadata["fallback_members"] == 1


def test_splitting_members_into_chunks_does_not_change_the_feeds(
    rng: np.random.Generator,
) -> None:
    members = rng.integers(0, 40, size=300)
    items = rng.integers(0, 30, size=300)
    interactions = [(int(m), int(i), 1.0) for m, i in zip(members, items, strict=True)]
    feed_members = [*range(-3, 45)]
    candidates = list(range(0, 30, 2))

    whole = feeds(interactions, feed_members=feed_members, candidates=candidates, n=6)
    chunked = feeds(
        interactions, feed_members=feed_members, candidates=candidates, n=6, chunk_size=7
    )

    assert np.array_equal(whole.item_ids, chunked.item_ids)
    assert np.array_equal(whole.scores, chunked.scores)


def test_the_same_policy_and_data_give_the_same_feeds(rng: np.random.Generator) -> None:
    members = rng.integers(0, 40, size=300)
    items = rng.integers(0, 30, size=300)
    interactions = [(int(m), int(i), 1.0) for m, i in zip(members, items, strict=True)]
    everyone, everything = list(range(40)), list(range(30))

    first = feeds(interactions, feed_members=everyone, candidates=everything, n=5)
    second = feeds(interactions, feed_members=everyone, candidates=everything, n=5, num_threads=1)

    assert np.array_equal(first.item_ids, second.item_ids)
    assert np.array_equal(first.scores, second.scores)


def test_without_any_interactions_every_feed_is_empty() -> None:
    batch = feeds([], feed_members=[1, 2], candidates=[10], n=2)

    assert batch.item_ids.tolist() == [[-1, -1], [-1, -1]]
    assert batch.metadata["fallback_members"] == 2
    assert batch.metadata["nnz"] == 0


def test_the_metadata_reports_the_run() -> None:
    interactions = [(1, 10, 1.0), (1, 10, 1.0), (2, 20, 1.0), (3, 20, 1.0)]

    batch = feeds(interactions, feed_members=[1, 2, 4], candidates=[10, 20], n=2)

    metadata = batch.metadata
    assert {
        key: metadata[key]
        for key in ("n_members_trained", "n_items", "n_interactions", "nnz", "factors")
    } == {"n_members_trained": 3, "n_items": 2, "n_interactions": 4, "nnz": 3, "factors": 4}
    assert metadata["id_collisions"] == 0
    assert metadata["fallback_members"] == 1
    assert isinstance(metadata["fit_seconds"], float)
    assert isinstance(metadata["recommend_seconds"], float)


def test_it_refuses_interaction_arrays_of_different_lengths() -> None:
    with pytest.raises(ValueError):
        compute_feeds(
            member_ids=np.array([1, 2]),
            item_ids=np.array([1]),
            weights=np.array([1.0, 1.0], dtype=np.float32),
            policy=FAST,
            feed_members=np.array([1]),
            candidate_items=np.array([1]),
            n=1,
        )


def test_every_movielens_member_gets_ten_unseen_items() -> None:
    path = ML_100K / "ml-100k.inter"
    if not path.is_file():
        pytest.skip(f"MovieLens 100k not found at {path}")
    data = np.loadtxt(path, delimiter="\t", skiprows=1, dtype=np.float64)
    members = data[:, 0].astype(np.int64)
    items = data[:, 1].astype(np.int64)
    ratings = data[:, 2].astype(np.float32)
    feed_members = np.unique(members)
    policy = Policy(model=ModelParams(factors=32, iterations=10))

    batch = compute_feeds(
        member_ids=members,
        item_ids=items,
        weights=ratings,
        policy=policy,
        feed_members=feed_members,
        candidate_items=np.unique(items),
        n=10,
    )

    assert len(feed_members) == 943
    assert batch.item_ids.shape == (943, 10)
    assert np.all(batch.item_ids > 0)
    assert np.all(np.isfinite(batch.scores))
    assert np.all(np.diff(np.sort(batch.item_ids, axis=1), axis=1) > 0)  # no repeats
    seen = set(zip(members.tolist(), items.tolist(), strict=True))
    recommended = zip(
        np.repeat(feed_members, 10).tolist(), batch.item_ids.ravel().tolist(), strict=True
    )
    assert not any(pair in seen for pair in recommended)
    assert batch.metadata["n_members_trained"] == 943
    assert batch.metadata["n_items"] == 1682
    assert batch.metadata["nnz"] == 100_000
    assert batch.metadata["fallback_members"] == 0


def test_a_skip_is_not_taken_as_interest_under_binary_weighting() -> None:

    # Member 1 only skipped item 10; member 2 liked item 11. Under binary weighting the skip must
    # not make member 1 a trained member nor make item 10 popular.
    batch = compute_feeds(
        member_ids=np.array([1, 2, 3], dtype=np.int64),
        item_ids=np.array([10, 11, 11], dtype=np.int64),
        weights=np.array([0.0, 1.0, 1.0], dtype=np.float32),
        policy=Policy(model=ModelParams(factors=2, iterations=2, weighting="binary")),
        feed_members=np.array([1], dtype=np.int64),
        candidate_items=np.array([10, 11], dtype=np.int64),
        n=2,
    )
    assert batch.item_ids[0].tolist() == [11, -1]
    assert batch.metadata["fallback_members"] == 1
