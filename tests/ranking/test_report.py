"""ranking.report: metrics at the visible depth and over the whole feed, by places and by
position-weighted exposure, against hand-computed cases and the metric functions themselves."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.sparse import csr_matrix

from ranking import metrics
from ranking.datasets import AI_GENERATED, HUMAN
from ranking.report import Catalogue, FeedReport, feed_report

# The log2 attention of a ten-place feed: 1 + 1/log2(3) + ... + 1/log2(11).
TEN_PLACES = sum(1 / math.log2(p + 2) for p in range(10))

SHARES = ("long_tail_creator_share", "new_creator_share", "ai_generated_share")


def ten_creators(long_tail_item: int = 0) -> Catalogue:
    """Twelve items, item i by creator i; only ``long_tail_item``'s creator is long tail, new
    and its item AI-generated."""
    mask = np.arange(12) == long_tail_item
    return Catalogue(
        item_creator=np.arange(12),
        n_creators=12,
        long_tail=mask,
        new=mask,
        item_provenance=np.where(mask, AI_GENERATED, HUMAN),
    )


def test_a_first_place_counts_more_than_a_tenth_as_the_discount_says() -> None:
    catalogue = ten_creators(long_tail_item=3)
    top = feed_report(np.array([[3, 0, 1, 2, 4, 5, 6, 7, 8, 9]]), catalogue)
    bottom = feed_report(np.array([[0, 1, 2, 4, 5, 6, 7, 8, 9, 3]]), catalogue)
    for name in SHARES:
        # Counting places, first or tenth is the same: one place in ten.
        assert top["at_depth"]["producers"][name] == pytest.approx(0.1)
        assert bottom["at_depth"]["producers"][name] == pytest.approx(0.1)
        # Weighted: 1 / 4.5436 = 0.2201 at the top, 0.2891 / 4.5436 = 0.0636 at the tenth.
        weighted = f"{name}_weighted"
        assert top["at_depth"]["producers"][weighted] == pytest.approx(1 / TEN_PLACES)
        assert bottom["at_depth"]["producers"][weighted] == pytest.approx(
            (1 / math.log2(11)) / TEN_PLACES
        )
    assert math.isclose(1 / TEN_PLACES, 0.220092, abs_tol=1e-6)


def test_what_lies_below_the_visible_depth_counts_only_over_the_whole_feed() -> None:
    # Twelve places; the long-tail item is the twelfth, below a depth of 10.
    report = feed_report(np.array([[0, 1, 2, 4, 5, 6, 7, 8, 9, 10, 11, 3]]), ten_creators(3))
    assert (report["depth"], report["length"], report["members"]) == (10, 12, 1)
    assert report["at_depth"]["producers"]["long_tail_creator_share"] == 0.0
    assert report["at_depth"]["producers"]["long_tail_creator_share_weighted"] == 0.0
    assert report["at_depth"]["producers"]["creator_coverage"] == pytest.approx(10 / 12)
    whole = report["whole_feed"]["producers"]
    assert whole["long_tail_creator_share"] == pytest.approx(1 / 12)
    all_places = sum(1 / math.log2(p + 2) for p in range(12))
    assert whole["long_tail_creator_share_weighted"] == pytest.approx(
        (1 / math.log2(13)) / all_places
    )
    assert whole["creator_coverage"] == 1.0


# Three members, four places, six items, a placeholder item (3), a padded row.
RECS = np.array([[0, 1, 2, 4], [3, 0, 5, -1], [2, 5, 4, 1]], dtype=np.int64)
CREATOR = np.array([0, 0, 1, -1, 2, 1], dtype=np.int64)
TAGS = csr_matrix(np.array([[1, 0], [1, 1], [0, 1], [0, 0], [1, 0], [0, 1]], dtype=np.float32))
TRUTH = csr_matrix(np.array([[0, 0, 0, 0, 1, 0], [0, 0, 0, 0, 0, 0], [0, 1, 0, 0, 0, 1]]))
HISTORY = csr_matrix(np.array([[0, 0, 0, 0, 0, 1], [1, 0, 0, 0, 0, 0], [1, 0, 0, 0, 0, 0]]))
POPULARITY = np.array([3.0, 1.0, 2.0, 0.0, 1.0, 2.0])
PROVENANCE = np.array([HUMAN, AI_GENERATED, HUMAN, AI_GENERATED, HUMAN, HUMAN])
FIRST = np.array([0.0, 100.0, math.nan])


def catalogue() -> Catalogue:
    return Catalogue(
        item_creator=CREATOR,
        n_creators=3,
        long_tail=~metrics.head_creators([5.0, 2.0, 1.0], head_fraction=0.34),
        new=metrics.new_creators(FIRST, since=50.0),
        item_provenance=PROVENANCE,
        item_popularity=POPULARITY,
        n_members=4,
        item_tags=TAGS,
    )


@pytest.mark.parametrize(("cut", "width"), [("at_depth", 2), ("whole_feed", 4)])
def test_each_cut_gives_the_numbers_of_the_metric_functions(cut: str, width: int) -> None:
    report = feed_report(RECS, catalogue(), truth=TRUTH, history=HISTORY, depth=2)
    recs = RECS[:, :width]
    consumers, producers = report[cut]["consumers"], report[cut]["producers"]

    def mean(values: np.ndarray) -> float:
        return float(np.nanmean(values))

    assert consumers[f"ndcg@{width}"] == pytest.approx(mean(metrics.ndcg_at_k(recs, TRUTH)))
    assert consumers[f"recall@{width}"] == pytest.approx(mean(metrics.recall_at_k(recs, TRUTH)))
    assert consumers["diversity_tags"] == pytest.approx(
        mean(metrics.intra_list_diversity(recs, TAGS))
    )
    assert consumers["novelty_bits"] == pytest.approx(mean(metrics.novelty(recs, POPULARITY, 4)))
    assert consumers["miscalibration_kl"] == pytest.approx(
        mean(metrics.calibration(recs, HISTORY, TAGS))
    )
    for discount, suffix in (("none", ""), ("log2", "_weighted")):
        assert producers[f"creator_gini{suffix}"] == pytest.approx(
            metrics.creator_gini(recs, CREATOR, 3, discount=discount)
        )
        assert producers[f"item_gini{suffix}"] == pytest.approx(
            metrics.item_gini(recs, 6, discount=discount)
        )
        assert producers[f"long_tail_creator_share{suffix}"] == pytest.approx(
            metrics.long_tail_creator_share(
                recs, CREATOR, [5.0, 2.0, 1.0], head_fraction=0.34, discount=discount
            )
        )
        assert producers[f"new_creator_share{suffix}"] == pytest.approx(
            metrics.new_creator_share(recs, CREATOR, FIRST, since=50.0, discount=discount)
        )
        assert producers[f"ai_generated_share{suffix}"] == pytest.approx(
            metrics.provenance_share(recs, PROVENANCE, discount=discount)
        )
    assert producers["creator_coverage"] == metrics.creator_coverage(recs, CREATOR, 3)
    assert producers["item_coverage"] == metrics.item_coverage(recs, 6)


def test_the_head_is_taken_among_the_listed_creators() -> None:
    counted = Catalogue(
        item_creator=CREATOR,
        n_creators=3,
        creator_counts=np.array([5.0, 2.0, 1.0]),
        head_fraction=0.34,
        new=np.zeros(3, bool),
        item_provenance=PROVENANCE,
    )
    same = feed_report(RECS, counted)["whole_feed"]["producers"]["long_tail_creator_share"]
    assert (
        same == feed_report(RECS, catalogue())["whole_feed"]["producers"]["long_tail_creator_share"]
    )
    # Only creator 1's items (2, 5) are listed or shown: it is the whole head, ceil(0.34 * 1).
    alone = dataclasses.replace(counted, listed=np.zeros(6, bool))
    report = feed_report(np.array([[2, 5]]), alone)
    assert report["whole_feed"]["producers"]["long_tail_creator_share"] == 0.0
    with pytest.raises(ValueError, match="either"):
        dataclasses.replace(counted, long_tail=np.ones(3, bool))


def test_batches_add_up_to_the_whole() -> None:
    whole = feed_report(RECS, catalogue(), history=HISTORY, depth=3)
    report = FeedReport(catalogue(), depth=3)
    for row in range(3):
        report.add(RECS[row : row + 1], history=HISTORY[row : row + 1])
    assert _close(report.result(), whole)


def _close(a: object, b: object) -> bool:
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_close(a[key], b[key]) for key in a)
    if isinstance(a, float) and isinstance(b, float):
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)
    return a == b


def test_coverage_counts_the_listed_catalogue_and_anything_shown() -> None:
    listed = np.array([True, True, False, False, False, False])
    report = feed_report(
        np.array([[0, 2]]),
        Catalogue(
            item_creator=CREATOR,
            n_creators=3,
            long_tail=np.zeros(3, bool),
            new=np.zeros(3, bool),
            item_provenance=PROVENANCE,
            listed=listed,
        ),
    )
    # Items 0, 1 listed and 2 shown; creators 0 (items 0, 1) and 1 (item 2).
    assert report["whole_feed"]["producers"]["item_coverage"] == pytest.approx(2 / 3)
    assert report["whole_feed"]["producers"]["creator_coverage"] == 1.0
    # Only what needs no input: the convergence, undefined for a single member.
    assert report["whole_feed"]["consumers"] == {"convergence": None}


def test_empty_feeds_give_undefined_shares_not_errors() -> None:
    report = feed_report(np.full((2, 5), -1), catalogue())
    producers = report["at_depth"]["producers"]
    assert producers["long_tail_creator_share_weighted"] is None
    assert producers["creator_gini"] is None and producers["item_coverage"] == 0.0


def test_it_refuses_a_depth_below_one_and_an_unknown_discount() -> None:
    with pytest.raises(ValueError, match="depth"):
        FeedReport(catalogue(), depth=0)
    with pytest.raises(ValueError, match="discount"):
        FeedReport(catalogue(), discount="linear")  # type: ignore[arg-type]


def test_position_weights_cut_at_the_depth() -> None:
    np.testing.assert_allclose(
        metrics.position_weights(4, "log2", depth=2), [1.0, 1 / math.log2(3), 0.0, 0.0]
    )
    np.testing.assert_allclose(metrics.position_weights(3, "none"), [1.0, 1.0, 1.0])


# --- Properties -------------------------------------------------------------------------------


@st.composite
def feeds(draw: st.DrawFn) -> tuple[np.ndarray, Catalogue]:
    n_items = draw(st.integers(1, 12))
    n_creators = draw(st.integers(1, 4))
    m = draw(st.integers(1, 5))
    n = draw(st.integers(0, 8))
    rows = []
    for _ in range(m):
        size = draw(st.integers(0, min(n, n_items)))
        chosen = draw(st.permutations(range(n_items)))[:size]
        rows.append(list(chosen) + [-1] * (n - size))
    owner = draw(st.lists(st.integers(-1, n_creators - 1), min_size=n_items, max_size=n_items))
    flags = st.lists(st.booleans(), min_size=n_creators, max_size=n_creators)
    return np.array(rows, dtype=np.int64).reshape(m, n), Catalogue(
        item_creator=np.array(owner, dtype=np.int64),
        n_creators=n_creators,
        long_tail=np.array(draw(flags)),
        new=np.array(draw(flags)),
        item_provenance=np.array(
            draw(
                st.lists(st.sampled_from([HUMAN, AI_GENERATED]), min_size=n_items, max_size=n_items)
            )
        ),
    )


@settings(max_examples=150, deadline=None)
@given(world=feeds(), depth=st.integers(1, 10))
def test_weighted_shares_are_shares(world: tuple[np.ndarray, Catalogue], depth: int) -> None:
    recs, catalogue = world
    report = feed_report(recs, catalogue, depth=depth)
    for cut in ("at_depth", "whole_feed"):
        for name, value in report[cut]["producers"].items():
            assert value is None or -1e-12 <= value <= 1.0 + 1e-12, (cut, name, value)


@settings(max_examples=150, deadline=None)
@given(world=feeds(), depth=st.integers(1, 10))
def test_without_a_discount_weighted_equals_places(
    world: tuple[np.ndarray, Catalogue], depth: int
) -> None:
    recs, catalogue = world
    report = feed_report(recs, catalogue, depth=depth, discount="none")
    for cut in ("at_depth", "whole_feed"):
        producers = report[cut]["producers"]
        for name in ("item_gini", "creator_gini", *SHARES):
            assert _close(producers[f"{name}_weighted"], producers[name]), (cut, name)


@settings(max_examples=150, deadline=None)
@given(world=feeds(), extra=st.integers(0, 5))
def test_a_depth_past_the_feed_is_the_whole_feed(
    world: tuple[np.ndarray, Catalogue], extra: int
) -> None:
    recs, catalogue = world
    report = feed_report(recs, catalogue, depth=max(recs.shape[1], 1) + extra)
    assert _close(report["at_depth"], report["whole_feed"])
