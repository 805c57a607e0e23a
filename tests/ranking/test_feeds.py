"""compute_feeds: interactions and a policy in, every member's feed out."""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from itertools import pairwise
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from implicit.cpu.als import AlternatingLeastSquares
from scipy.sparse import csr_matrix
from threadpoolctl import threadpool_limits

from ranking.effects import ItemAttributes
from ranking.pipeline import FeedBatch, compute_feeds
from ranking.policy import (
    FallbackParams,
    ModelParams,
    Policy,
    RankingParams,
    default_policy,
    neutral_policy,
    policy_validate,
)
from ranking.reasons import Reason

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


# --- The policy's effects, wired into compute_feeds ------------------------------------------


def bare_implicit(matrix: csr_matrix, params: ModelParams, n: int) -> tuple[np.ndarray, np.ndarray]:
    """What plain implicit recommends: the reference a neutral policy must reproduce."""
    model = AlternatingLeastSquares(
        factors=params.factors,
        regularization=params.regularization,
        alpha=params.alpha,
        iterations=params.iterations,
        random_state=params.seed,
    )
    with threadpool_limits(limits=1, user_api="blas"):
        model.fit(matrix, show_progress=False)
        ids, scores = model.recommend(
            np.arange(matrix.shape[0]), matrix, N=n, filter_already_liked_items=True
        )
    return np.asarray(ids), np.asarray(scores)


def dense_interactions(
    rng: np.random.Generator, n_members: int, n_items: int, size: int
) -> tuple[np.ndarray, np.ndarray]:
    """Random interactions in which every member and every item occurs (ids == indices)."""
    members = np.concatenate([np.arange(n_members), rng.integers(0, n_members, size)])
    items = np.concatenate([rng.integers(0, n_items, n_members), np.arange(n_items)])
    items = np.concatenate([items, rng.integers(0, n_items, size - n_items)])
    return members, items


@pytest.mark.parametrize("policy", [neutral_policy(), default_policy()], ids=["neutral", "default"])
def test_a_neutral_policy_reproduces_bare_implicit_exactly(
    rng: np.random.Generator, policy: Policy
) -> None:
    members, items = dense_interactions(rng, 60, 40, 500)
    params = ModelParams(factors=8, iterations=5, regularization=0.05, alpha=2.0, seed=11)
    policy = policy.model_copy(update={"model": params})
    matrix = csr_matrix((np.ones(members.size, dtype=np.float32), (members, items)), shape=(60, 40))
    matrix.sum_duplicates()
    matrix.data[:] = 1.0
    n = 10

    expected_ids, expected_scores = bare_implicit(matrix, params, n)
    batch = compute_feeds(
        member_ids=members,
        item_ids=items,
        weights=np.ones(members.size, dtype=np.float32),
        policy=policy,
        feed_members=np.arange(60),
        candidate_items=np.arange(40),
        n=n,
    )

    assert np.array_equal(batch.item_ids, expected_ids)
    assert np.array_equal(batch.scores, expected_scores)
    assert np.array_equal(batch.base_scores, batch.scores)
    assert np.all(batch.reasons & Reason.PERSONALISED)


def test_a_neutral_policy_reproduces_bare_implicit_on_movielens() -> None:
    path = ML_100K / "ml-100k.inter"
    if not path.is_file():
        pytest.skip(f"MovieLens 100k not found at {path}")
    data = np.loadtxt(path, delimiter="\t", skiprows=1, dtype=np.float64)
    members = data[:, 0].astype(np.int64)
    items = data[:, 1].astype(np.int64)
    params = ModelParams(factors=16, iterations=5)
    member_vocab, item_vocab = np.unique(members), np.unique(items)
    rows, cols = np.searchsorted(member_vocab, members), np.searchsorted(item_vocab, items)
    matrix = csr_matrix(
        (np.ones(rows.size, dtype=np.float32), (rows, cols)),
        shape=(member_vocab.size, item_vocab.size),
    )
    matrix.sum_duplicates()
    matrix.data[:] = 1.0

    expected_ids, expected_scores = bare_implicit(matrix, params, 10)
    batch = compute_feeds(
        member_ids=members,
        item_ids=items,
        weights=data[:, 2].astype(np.float32),
        policy=neutral_policy().model_copy(update={"model": params}),
        feed_members=member_vocab,
        candidate_items=item_vocab,
        n=10,
    )

    assert np.array_equal(batch.item_ids, item_vocab[expected_ids])
    assert np.array_equal(batch.scores, expected_scores)


COMMUNITY = [
    (m, 10 + int(i), 1.0)
    for m in range(1, 9)
    for i in np.random.default_rng(m).choice(12, size=2 + m % 4, replace=False)
]
ATTRIBUTES = ItemAttributes.from_records(
    list(range(10, 25)),
    creator_ids=[100 + (i % 4) for i in range(15)],
    provenance=["human", "ai_generated", "ai_assisted", "unknown", "human"] * 3,
    age_days=[float(5 * i) for i in range(15)],
    item_keys=[f"item-{i}" for i in range(10, 25)],
    creator_keys=[f"creator-{i % 4}" for i in range(15)],
    tags=[["spoilers"] if i % 5 == 0 else [] for i in range(15)],
)


def community_feeds(policy: Policy, **options: object) -> FeedBatch:
    members, items, weights = zip(*COMMUNITY, strict=True)
    return compute_feeds(
        member_ids=np.array(members),
        item_ids=np.array(items),
        weights=np.array(weights, dtype=np.float32),
        policy=policy,
        feed_members=np.array([*range(1, 9), 50]),
        candidate_items=np.arange(10, 25),
        n=5,
        **options,  # type: ignore[arg-type]
    )


def test_refusals_blocks_and_exclusions_reach_every_kind_of_feed() -> None:
    policy = policy_validate(
        {
            "model": FAST.model.model_dump(),
            "refusals": [
                {"kind": "tag", "tag": "spoilers", "reason": "No spoilers here."},
                {"kind": "item", "item": "item-13", "reason": "Reported."},
            ],
            "ranking": {"provenance": {"ai_generated": {"action": "exclude"}}},
        }
    )
    refused = {10, 15, 20, 13} | {11, 16, 21}  # tags, item rule, ai_generated

    batch = community_feeds(
        policy,
        item_attributes=ATTRIBUTES,
        refused_items=[12],
        member_blocks=([1, 50], [14, 17]),
        no_personalisation_members=[2],
    )

    shown = set(batch.item_ids[batch.item_ids >= 0].tolist())
    assert not shown & (refused | {12})
    assert 14 not in batch.item_ids[0] and 17 not in batch.item_ids[-1]
    assert batch.metadata["refused_items"] == 5  # exclusions are not refusals
    assert_well_formed(batch, COMMUNITY, [*range(1, 9), 50], list(range(10, 25)), 5)


def test_a_policy_that_needs_item_attributes_refuses_to_run_without_them() -> None:
    policy = policy_validate({"ranking": {"creator_cap": 1}})

    with pytest.raises(ValueError, match="creator_cap"):
        community_feeds(policy)


def test_the_creator_cap_holds_in_every_feed() -> None:
    policy = FAST.model_copy(update={"ranking": RankingParams(creator_cap=1)})

    batch = community_feeds(policy, item_attributes=ATTRIBUTES)

    for row in batch.item_ids:
        creators = [100 + ((i - 10) % 4) for i in row if i >= 0]
        assert len(creators) == len(set(creators))
    assert np.any(batch.reasons & Reason.RAISED_BY_CAP)


def test_members_who_refuse_personalisation_get_the_fallback() -> None:
    seen = {i for m, i, _ in COMMUNITY if m == 3}
    counts = Counter(i for _, i, _ in COMMUNITY)
    by_popularity = sorted(counts, key=lambda i: (-counts[i], i))
    by_age = list(range(10, 25))  # age 5 * (id - 10): the smallest id is the newest
    capped: list[int] = []
    for item in by_age:
        creator = (item - 10) % 4
        if item not in seen and sum((c - 10) % 4 == creator for c in capped) < 2:
            capped.append(item)

    popular = community_feeds(FAST, no_personalisation_members=[3])
    newest = community_feeds(
        FAST.model_copy(update={"fallback": FallbackParams(kind="newest", creator_cap=2)}),
        item_attributes=ATTRIBUTES,
        no_personalisation_members=[3],
    )

    assert popular.item_ids[2].tolist() == [i for i in by_popularity if i not in seen][:5]
    assert np.all(popular.reasons[2] == Reason.POPULAR)
    assert popular.metadata["no_personalisation_members"] == 1
    assert newest.item_ids[2].tolist() == capped[:5]
    assert np.all(newest.reasons[2] & Reason.NEWEST)
    assert np.allclose(newest.base_scores[2], 1 / (1 + 5 * (newest.item_ids[2] - 10)))
    # Everybody else is untouched by one member's refusal.
    mine = popular.member_ids != 3
    assert np.array_equal(popular.item_ids[mine], community_feeds(FAST).item_ids[mine])


def test_a_member_who_refuses_training_does_not_change_anyone_elses_feed() -> None:
    without = [row for row in COMMUNITY if row[0] != 4]
    members, items, weights = zip(*without, strict=True)
    others = np.array([1, 2, 3, 5, 6, 7, 8, 50])
    reference = compute_feeds(
        member_ids=np.array(members),
        item_ids=np.array(items),
        weights=np.array(weights, dtype=np.float32),
        policy=FAST,
        feed_members=others,
        candidate_items=np.arange(10, 25),
        n=5,
    )

    batch = community_feeds(FAST, no_training_members=[4])

    mine = batch.member_ids != 4
    assert np.array_equal(batch.item_ids[mine], reference.item_ids)
    assert np.array_equal(batch.scores[mine], reference.scores)
    me = int(np.flatnonzero(~mine)[0])
    assert np.all(batch.reasons[me][batch.item_ids[me] >= 0] & Reason.PERSONALISED)
    assert batch.metadata["recalculated_members"] == 1
    assert batch.metadata["no_training_members"] == 1
    assert_well_formed(batch, COMMUNITY, [*range(1, 9), 50], list(range(10, 25)), 5)


# --- Prepared once, scored in shards ------------------------------------------------------------


def _shardable_inputs(pool_size: int = 200) -> dict[str, object]:
    """A community that reaches every route: trained, recalculated, popular and refusing."""
    rng = np.random.default_rng(7)
    members = rng.integers(1, 400, size=6_000)
    items = 1_000 + rng.zipf(1.3, size=6_000) % 150
    weights = rng.choice([1.0, 1.0, 2.0, -1.0], size=6_000).astype(np.float32)
    item_ids = np.arange(1_000, 1_160)
    attributes = ItemAttributes.from_records(
        item_ids.tolist(),
        creator_ids=[7_000 + int(i) % 13 for i in item_ids],
        provenance=["human", "ai_generated", "ai_assisted", "unknown"] * 40,
        age_days=[float(i % 30) for i in item_ids],
        item_keys=[f"item-{i}" for i in item_ids],
        creator_keys=[f"creator-{int(i) % 13}" for i in item_ids],
        tags=[["spoilers"] if i % 11 == 0 else [] for i in item_ids],
    )
    policy = policy_validate(
        {
            "model": {"factors": 8, "iterations": 4, "regularization": 0.1, "seed": 5},
            "candidates": {"pool_size": pool_size},
            "refusals": [{"kind": "tag", "tag": "spoilers", "reason": "No spoilers."}],
            "ranking": {
                "creator_cap": 3,
                "diversity": 0.3,
                "popularity_penalty": 0.2,
                "provenance": {"ai_generated": {"action": "downrank", "factor": 0.5}},
            },
            "fallback": {"kind": "newest", "creator_cap": 2},
        }
    )
    return {
        "member_ids": members,
        "item_ids": items,
        "weights": weights,
        "policy": policy,
        "feed_members": np.arange(1, 460),  # some members without any interaction
        "candidate_items": item_ids,
        "n": 12,
        "item_attributes": attributes,
        "refused_items": [1_003],
        "member_blocks": (rng.integers(1, 460, size=300), rng.choice(item_ids, size=300)),
        "no_personalisation_members": np.arange(5, 400, 17),
        "no_training_members": np.arange(3, 400, 29),
    }


def _assert_same_feeds(left: FeedBatch, right: FeedBatch) -> None:
    for name in ("member_ids", "item_ids", "scores", "base_scores", "reasons"):
        assert np.array_equal(getattr(left, name), getattr(right, name)), name


def _mapped(array: np.ndarray) -> bool:
    """Whether ``array`` is, or is a view of, a memory-mapped file."""
    while array is not None:
        if isinstance(array, np.memmap):
            return True
        array = array.base if isinstance(array.base, np.ndarray) else None
    return False


@pytest.mark.parametrize("top_k", ["implicit", "bounded"])
@pytest.mark.parametrize("mmap", [False, True], ids=["read", "mapped"])
def test_scoring_in_shards_gives_exactly_the_feeds_of_scoring_everyone_at_once(
    tmp_path: Path, mmap: bool, top_k: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import ranking.als
    import ranking.pipeline.prepared

    finished: list[int] = []
    if top_k == "bounded":
        # This community's catalogue is small: let the norm-bounded top-k rank it anyway, and
        # count the members it finished, so this case cannot pass without it.
        bounded = ranking.als.bounded_top_k
        monkeypatch.setattr(ranking.als, "_BOUND_MIN_ITEMS", 1)
        monkeypatch.setattr(ranking.als, "_BOUND_ITEMS_PER_K", 1)

        def counted(*args: Any, **kwargs: Any) -> Any:
            result = bounded(*args, **kwargs)
            finished.append(int(result[2].sum()))
            return result

        monkeypatch.setattr(ranking.als, "bounded_top_k", counted)
    from ranking.pipeline import (
        ROUTE_POPULAR,
        ROUTE_RECALCULATED,
        ROUTE_REFUSING,
        ROUTE_TRAINED,
        PreparedFeeds,
        prepare_feeds,
        score_feeds,
    )

    # A pool of 20 of the 160 items: the bounded top-k has items to skip.
    inputs = _shardable_inputs(pool_size=20 if top_k == "bounded" else 200)
    prepared = prepare_feeds(**inputs)  # type: ignore[arg-type]
    routes = set(prepared.route.tolist())
    assert routes == {ROUTE_TRAINED, ROUTE_RECALCULATED, ROUTE_POPULAR, ROUTE_REFUSING}

    whole = score_feeds(prepared, chunk_size=50)
    _assert_same_feeds(whole, compute_feeds(**inputs, chunk_size=50))  # type: ignore[arg-type]

    # Through the archive another process would load, in uneven shards on chunk boundaries.
    path = tmp_path / "prepared.npz"
    with open(path, "wb") as handle:
        prepared.save(handle)
    monkeypatch.setattr(
        ranking.pipeline.prepared, "_MAP_AT_LEAST", 0
    )  # map even this small run's arrays
    loaded = PreparedFeeds.load(path, mmap=mmap)
    assert isinstance(loaded.targets, np.memmap) == mmap
    assert _mapped(loaded.seen.indices) == mmap  # scipy keeps a plain view of the mapping
    assert loaded.model is not None and _mapped(loaded.model.user_factors) == mmap
    bounds = [0, 50, 200, 250, 450, len(loaded)]
    parts = [score_feeds(loaded, start=a, stop=b, chunk_size=50) for a, b in pairwise(bounds)]
    joined = FeedBatch(
        member_ids=np.concatenate([p.member_ids for p in parts]),
        item_ids=np.concatenate([p.item_ids for p in parts]),
        scores=np.concatenate([p.scores for p in parts]),
        base_scores=np.concatenate([p.base_scores for p in parts]),
        reasons=np.concatenate([p.reasons for p in parts]),
        metadata={},
    )
    _assert_same_feeds(whole, joined)
    assert loaded.policy == prepared.policy
    assert np.array_equal(loaded.fit_member_ids, prepared.fit_member_ids)
    assert loaded.model is not None and prepared.model is not None
    assert np.array_equal(loaded.model.item_factors, prepared.model.item_factors)
    if top_k == "bounded":
        assert sum(finished) > 0


def test_a_prepared_run_refuses_a_bad_slice_and_a_foreign_archive(tmp_path: Path) -> None:
    from ranking.pipeline import PreparedFeeds, prepare_feeds, score_feeds

    prepared = prepare_feeds(**_shardable_inputs())  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="outside"):
        score_feeds(prepared, start=10, stop=len(prepared) + 1)
    foreign = tmp_path / "other.npz"
    np.savez(foreign, header=np.array(json.dumps({"format": "something else"})))
    for mmap in (False, True):
        with pytest.raises(ValueError, match=r"not a commonfeed\.prepared_feeds"):
            PreparedFeeds.load(foreign, mmap=mmap)
    headless = tmp_path / "headless.npz"
    np.savez(headless, targets=np.arange(3))
    with pytest.raises(ValueError, match="missing 'header'"):
        PreparedFeeds.load(headless, mmap=True)
    with open(foreign, "rb") as handle, pytest.raises(TypeError, match="path"):
        PreparedFeeds.load(handle, mmap=True)


@pytest.mark.parametrize("write", [np.savez, np.savez_compressed], ids=["unaligned", "compressed"])
def test_an_archive_that_cannot_be_mapped_is_read_when_mapping_is_asked(
    tmp_path: Path, write: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import ranking.pipeline.prepared
    from ranking.pipeline import PreparedFeeds, prepare_feeds

    prepared = prepare_feeds(**_shardable_inputs())  # type: ignore[arg-type]
    plain = tmp_path / "plain.npz"
    with open(plain, "wb") as handle:
        prepared.save(handle)
    with np.load(plain) as archive:
        other = tmp_path / "other.npz"
        write(other, **{name: archive[name] for name in archive.files})
    monkeypatch.setattr(ranking.pipeline.prepared, "_MAP_AT_LEAST", 0)

    loaded = PreparedFeeds.load(other, mmap=True)

    assert not isinstance(loaded.targets, np.memmap)
    assert np.array_equal(loaded.targets, prepared.targets)
    assert loaded.model is not None and prepared.model is not None
    assert np.array_equal(loaded.model.user_factors, prepared.model.user_factors)
