"""Convergence across members and the creator-audience relation (ranking.metrics,
ranking.report): hand-computed cases, the pair sample, and properties."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.sparse import csr_matrix

from ranking import metrics
from ranking.datasets import AI_GENERATED, HUMAN
from ranking.report import Catalogue, FeedReport, feed_report

# Three members, four places; item 3 is the placeholder's (creator -1), row 1 is padded.
RECS = np.array([[0, 1, 2, 4], [3, 0, 5, -1], [2, 5, 4, 1]], dtype=np.int64)
CREATOR = np.array([0, 0, 1, -1, 2, 1], dtype=np.int64)
# Member 0 liked item 5 (creator 1); members 1 and 2 liked item 0 (creator 0).
HISTORY = csr_matrix(np.array([[0, 0, 0, 0, 0, 1], [1, 0, 0, 0, 0, 0], [1, 0, 0, 0, 0, 0]]))
PROVENANCE = np.array([HUMAN, AI_GENERATED, HUMAN, AI_GENERATED, HUMAN, HUMAN])
W = [1 / math.log2(p + 2) for p in range(4)]


def catalogue() -> Catalogue:
    return Catalogue(
        item_creator=CREATOR,
        n_creators=3,
        long_tail=np.zeros(3, bool),
        new=np.zeros(3, bool),
        item_provenance=PROVENANCE,
    )


# --- Convergence -----------------------------------------------------------------------------


def test_jaccard_compares_lists_row_by_row_and_ignores_order_and_padding() -> None:
    a = [[0, 1, -1], [0, 2, 3], [-1, -1, -1], [4, -1, -1]]
    b = [[1, 0, -1], [3, 4, -1], [-1, -1, -1], [-1, -1, -1]]
    values = metrics.jaccard(a, b)
    np.testing.assert_allclose(values[[0, 1, 3]], [1.0, 1 / 4, 0.0])
    assert math.isnan(values[2])  # two empty lists: nothing to compare


def test_convergence_is_the_mean_overlap_of_every_pair_when_there_are_few() -> None:
    # Sets {0,1,2,4}, {0,3,5}, {1,2,4,5}: pairs 1/6, 3/5, 1/6.
    assert metrics.convergence(RECS) == pytest.approx((1 / 6 + 3 / 5 + 1 / 6) / 3)
    # The top two: {0,1}, {0,3}, {2,5}: pairs 1/3, 0, 0.
    assert metrics.convergence(RECS[:, :2]) == pytest.approx(1 / 9)
    # An empty feed is no page: left out rather than counted as overlapping nothing.
    with_empty = np.vstack([RECS, np.full((1, 4), -1)])
    assert metrics.convergence(with_empty) == metrics.convergence(RECS)
    assert math.isnan(metrics.convergence(RECS[:1]))


def test_the_report_gives_the_convergence_at_both_cuts() -> None:
    report = feed_report(RECS, catalogue(), depth=2)
    assert report["at_depth"]["consumers"]["convergence"] == pytest.approx(1 / 9)
    assert report["whole_feed"]["consumers"]["convergence"] == pytest.approx(14 / 45)
    assert report["convergence_pairs"] == 3


def test_member_pairs_are_distinct_ordered_pairs_drawn_with_the_seed() -> None:
    first, second = metrics.member_pairs(200, 500, seed=7)
    assert first.size == 500 and (first < second).all() and second.max() < 200
    assert len(set(zip(first.tolist(), second.tolist(), strict=True))) == 500
    again = metrics.member_pairs(200, 500, seed=7)
    assert (again[0] == first).all() and (again[1] == second).all()
    assert not (metrics.member_pairs(200, 500, seed=8)[0] == first).all()
    # Few members: every pair, in order.
    every = metrics.member_pairs(4, 500)
    assert list(zip(*every, strict=True)) == [(0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3)]


def test_sampled_convergence_estimates_the_mean_over_all_pairs() -> None:
    # Two camps of 300 members with disjoint pages: a pair is alike (1) when both are in the
    # same camp, which happens for 299 / 599 of all pairs.
    recs = np.array([[0, 1, 2]] * 300 + [[3, 4, 5]] * 300)
    np.random.default_rng(1).shuffle(recs)
    exact = 299 / 599
    sampled = metrics.convergence(recs, pairs=2_000, seed=0)
    assert sampled == pytest.approx(exact, abs=0.05)  # sd of the estimate: 0.011
    # Fed in batches of 37, the report keeps 2 x 150 of the 600 members and estimates the same
    # figure, whichever way the batches are cut.
    report = FeedReport(catalogue_of(6), convergence_pairs=150, seed=3)
    other = FeedReport(catalogue_of(6), convergence_pairs=150, seed=3)
    for start in range(0, 600, 37):
        report.add(recs[start : start + 37])
    for start in range(0, 600, 250):
        other.add(recs[start : start + 250])
    value = report.result()["whole_feed"]["consumers"]["convergence"]
    assert value == other.result()["whole_feed"]["consumers"]["convergence"]
    assert value == pytest.approx(exact, abs=0.1)
    assert report.result()["convergence_pairs"] == 150


def catalogue_of(n_items: int) -> Catalogue:
    return Catalogue(
        item_creator=np.arange(n_items),
        n_creators=n_items,
        long_tail=np.zeros(n_items, bool),
        new=np.zeros(n_items, bool),
        item_provenance=np.full(n_items, HUMAN),
    )


def test_it_refuses_fewer_than_one_pair() -> None:
    with pytest.raises(ValueError, match="convergence_pairs"):
        FeedReport(catalogue(), convergence_pairs=0)
    with pytest.raises(ValueError, match="pairs"):
        metrics.member_pairs(3, 0)


# --- Relation kept and discovery -------------------------------------------------------------


def test_relation_kept_marks_entries_by_creators_the_member_engaged_with() -> None:
    kept = metrics.relation_kept(RECS, HISTORY, CREATOR, 3)
    np.testing.assert_array_equal(
        kept, [[0, 0, 1, 0], [np.nan, 1, 0, np.nan], [0, 0, 0, 1]]
    )  # item 3 has no creator; -1 is padding


def test_the_report_gives_relation_kept_and_discovery_by_places_and_by_position() -> None:
    report = feed_report(RECS, catalogue(), history=HISTORY, depth=2)
    whole, top = report["whole_feed"]["consumers"], report["at_depth"]["consumers"]
    # Ten entries with a creator, three kept.
    assert whole["relation_kept_share"] == pytest.approx(0.3)
    assert whole["discovery_share"] == pytest.approx(0.7)
    known = 2 * sum(W) + W[1] + W[2]
    assert whole["relation_kept_share_weighted"] == pytest.approx((W[2] + W[1] + W[3]) / known)
    # The top two: five entries with a creator, one kept (member 1's second place).
    assert top["relation_kept_share"] == pytest.approx(0.2)
    assert top["relation_kept_share_weighted"] == pytest.approx(W[1] / (2 + 3 * W[1]))
    assert top["discovery_share_weighted"] == pytest.approx(1 - W[1] / (2 + 3 * W[1]))
    assert metrics.relation_kept_share(RECS, HISTORY, CREATOR, 3) == pytest.approx(0.3)
    # Without history, nothing is said about the relation.
    assert "relation_kept_share" not in feed_report(RECS, catalogue())["at_depth"]["consumers"]


def test_a_member_without_history_discovers_every_creator() -> None:
    empty = csr_matrix((3, 6))
    assert metrics.relation_kept_share(RECS, empty, CREATOR, 3) == 0.0
    report = feed_report(RECS, catalogue(), history=empty)
    assert report["whole_feed"]["consumers"]["discovery_share"] == 1.0
    assert report["whole_feed"]["producers"]["audience_kept_mean"] is None


# --- Audience kept ---------------------------------------------------------------------------


def test_audience_kept_counts_each_creator_s_earlier_audience_still_reached() -> None:
    # Creator 0's audience is members 1 and 2, creator 1's member 0, creator 2 has none.
    whole = metrics.audience_kept(RECS, HISTORY, CREATOR, 3)
    np.testing.assert_array_equal(whole.audience, [2, 1, 0])
    np.testing.assert_array_equal(whole.kept, [2, 1, 0])
    # In the top two, member 2 no longer meets creator 0, nor member 0 creator 1.
    top = metrics.audience_kept(RECS[:, :2], HISTORY, CREATOR, 3)
    np.testing.assert_array_equal(top.kept, [1, 0, 0])
    np.testing.assert_array_equal(top.share, [0.5, 0.0, np.nan])


def test_the_report_summarises_audience_kept_and_gives_it_per_creator() -> None:
    report = FeedReport(catalogue(), depth=2)
    report.add(RECS, history=HISTORY)
    result = report.result()
    assert result["whole_feed"]["producers"]["audience_kept_mean"] == 1.0
    assert result["whole_feed"]["producers"]["audience_kept_median"] == 1.0
    assert result["at_depth"]["producers"]["audience_kept_mean"] == pytest.approx(0.25)
    assert result["at_depth"]["producers"]["audience_kept_median"] == pytest.approx(0.25)
    per_creator = report.audience_kept("at_depth")
    np.testing.assert_array_equal(per_creator.audience, [2, 1, 0])
    np.testing.assert_array_equal(per_creator.kept, [1, 0, 0])
    with pytest.raises(ValueError, match="cut"):
        report.audience_kept("top")


def test_human_share_counts_human_made_items() -> None:
    report = feed_report(RECS, catalogue())
    # Eleven places; items 1 and 3 (AI-generated) take three of them.
    assert report["whole_feed"]["producers"]["human_share"] == pytest.approx(8 / 11)
    assert report["whole_feed"]["producers"]["human_share_weighted"] == pytest.approx(
        metrics.provenance_share(RECS, PROVENANCE, codes=(HUMAN,), discount="log2")
    )


# --- Properties ------------------------------------------------------------------------------


@st.composite
def worlds(draw: st.DrawFn) -> tuple[np.ndarray, Catalogue, csr_matrix]:
    n_items = draw(st.integers(1, 10))
    n_creators = draw(st.integers(1, 4))
    m = draw(st.integers(1, 6))
    n = draw(st.integers(1, 6))
    rows = []
    for _ in range(m):
        size = draw(st.integers(0, min(n, n_items)))
        rows.append(list(draw(st.permutations(range(n_items)))[:size]) + [-1] * (n - size))
    owner = draw(st.lists(st.integers(-1, n_creators - 1), min_size=n_items, max_size=n_items))
    seen = draw(
        st.lists(
            st.lists(st.booleans(), min_size=n_items, max_size=n_items), min_size=m, max_size=m
        )
    )
    return (
        np.array(rows, dtype=np.int64).reshape(m, n),
        Catalogue(
            item_creator=np.array(owner, dtype=np.int64),
            n_creators=n_creators,
            long_tail=np.zeros(n_creators, bool),
            new=np.zeros(n_creators, bool),
            item_provenance=np.full(n_items, HUMAN),
        ),
        csr_matrix(np.array(seen, dtype=np.float64)),
    )


@settings(max_examples=150, deadline=None)
@given(world=worlds(), depth=st.integers(1, 6))
def test_relation_and_audience_are_shares_and_relation_plus_discovery_is_one(
    world: tuple[np.ndarray, Catalogue, csr_matrix], depth: int
) -> None:
    recs, catalogue, history = world
    report = FeedReport(catalogue, depth=depth)
    report.add(recs, history=history)
    result = report.result()
    for cut in ("at_depth", "whole_feed"):
        consumers, producers = result[cut]["consumers"], result[cut]["producers"]
        values = [consumers["convergence"], producers["audience_kept_mean"]]
        values += [producers["audience_kept_median"]]
        for suffix in ("", "_weighted"):
            kept = consumers[f"relation_kept_share{suffix}"]
            discovery = consumers[f"discovery_share{suffix}"]
            assert (kept is None) == (discovery is None)
            if kept is not None:
                assert kept + discovery == pytest.approx(1.0)
            values += [kept, discovery]
        for value in values:
            assert value is None or -1e-12 <= value <= 1 + 1e-12
        per_creator = report.audience_kept(cut)
        assert (per_creator.kept <= per_creator.audience).all()


@settings(max_examples=100, deadline=None)
@given(world=worlds(), split=st.integers(1, 5), pairs=st.integers(1, 3))
def test_batches_give_the_figures_of_the_whole(
    world: tuple[np.ndarray, Catalogue, csr_matrix], split: int, pairs: int
) -> None:
    # With one to three pairs the reservoir (two to six members) often drops members.
    recs, catalogue, history = world
    whole = feed_report(recs, catalogue, history=history, depth=2, convergence_pairs=pairs)
    report = FeedReport(catalogue, depth=2, convergence_pairs=pairs)
    for start in range(0, recs.shape[0], split):
        report.add(recs[start : start + split], history=history[start : start + split])
    result = report.result()
    for cut in ("at_depth", "whole_feed"):
        for side in ("consumers", "producers"):
            for name, value in whole[cut][side].items():
                assert result[cut][side][name] == pytest.approx(value), (cut, side, name)


@settings(max_examples=100, deadline=None)
@given(row=st.lists(st.integers(0, 20), min_size=1, max_size=8, unique=True), m=st.integers(2, 9))
def test_identical_lists_converge_fully(row: list[int], m: int) -> None:
    recs = np.array([row] * m)
    assert metrics.convergence(recs, pairs=5) == 1.0
    assert feed_report(recs, catalogue_of(21))["at_depth"]["consumers"]["convergence"] == 1.0
