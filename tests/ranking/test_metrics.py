"""ranking.metrics: every metric against a tiny hand-computed case, plus edge cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.sparse import csr_matrix

from ranking import metrics
from ranking.datasets import AI_ASSISTED, AI_GENERATED, HUMAN

LOG3 = math.log2(3.0)

# Three members, k = 3, six items. Row 1 is short (one pad), row 2 is all padding.
RECS = np.array([[0, 1, 2], [3, 0, -1], [-1, -1, -1]], dtype=np.int64)


def sparse(rows: list[list[int]], n_cols: int = 6) -> csr_matrix:
    r = [i for i, row in enumerate(rows) for _ in row]
    c = [j for row in rows for j in row]
    return csr_matrix((np.ones(len(r), dtype=np.float32), (r, c)), shape=(len(rows), n_cols))


# Held out: member 0 -> {1, 4}; member 1 -> nothing; member 2 -> {5}.
TRUTH = sparse([[1, 4], [], [5]])

# Tags (columns A, B): item 0 {A}, 1 {A, B}, 2 {B}, 3 none, 4 {A}, 5 {B}.
TAGS = sparse([[0], [0, 1], [1], [], [0], [1]], n_cols=2)
CREATOR = np.array([0, 0, 1, -1, 2, 1], dtype=np.int64)  # item 3: placeholder creator


# ---------------------------------------------------------------- accuracy


def test_precision_hand_computed() -> None:
    # Member 0: item 1 is a hit, 1 hit / k=3. Member 1: no truth -> NaN. Member 2: 0 / 3.
    got = metrics.precision_at_k(RECS, TRUTH)
    np.testing.assert_allclose(got, [1 / 3, np.nan, 0.0])


def test_recall_hand_computed() -> None:
    # Member 0: 1 hit / |{1, 4}| = 1/2. Member 2: 0 / 1.
    np.testing.assert_allclose(metrics.recall_at_k(RECS, TRUTH), [0.5, np.nan, 0.0])


def test_ndcg_hand_computed() -> None:
    # Member 0: hit at position 1 -> DCG = 1/log2(3) = 0.6309;
    # ideal puts min(3, 2) = 2 hits on top -> IDCG = 1 + 1/log2(3) = 1.6309; nDCG = 0.3869.
    expected = (1 / LOG3) / (1 + 1 / LOG3)
    np.testing.assert_allclose(metrics.ndcg_at_k(RECS, TRUTH), [expected, np.nan, 0.0])
    assert expected == pytest.approx(0.386853, abs=1e-6)


def test_ndcg_ideal_uses_min_k_truth() -> None:
    # Five relevant items but k = 2: both slots hit -> DCG = IDCG = 1 + 1/log2(3) -> 1.0.
    truth = sparse([[0, 1, 2, 3, 4]])
    assert metrics.ndcg_at_k(np.array([[3, 1]]), truth)[0] == pytest.approx(1.0)
    # Recall is 2/5 there: the denominator is |truth|, not min(k, |truth|).
    assert metrics.recall_at_k(np.array([[3, 1]]), truth)[0] == pytest.approx(0.4)


def test_summarize_excludes_and_counts_undefined_rows() -> None:
    # Mean of the defined values (1/3 and 0) = 1/6; member 1 (no truth) excluded and counted.
    summary = metrics.summarize(metrics.precision_at_k(RECS, TRUTH))
    assert summary == {"mean": pytest.approx(1 / 6), "n": 2, "n_excluded": 1}
    assert metrics.summarize([np.nan]) == {"mean": None, "n": 0, "n_excluded": 1}


def test_accuracy_matches_a_naive_reference(rng: np.random.Generator) -> None:
    m, k, n_items = 40, 5, 30
    recs = np.stack([rng.permutation(n_items)[:k] for _ in range(m)])
    recs[rng.random((m, k)) < 0.2] = -1  # arbitrary padding, including gaps
    dense = rng.random((m, n_items)) < 0.15
    dense[:5] = False  # some members without truth
    truth = csr_matrix(dense.astype(np.float32))
    precision, recall, ndcg = [], [], []
    for row, relevant in zip(recs, dense, strict=True):
        hits = [int(i >= 0 and relevant[i]) for i in row]
        size = int(relevant.sum())
        if size == 0:
            precision.append(np.nan)
            recall.append(np.nan)
            ndcg.append(np.nan)
            continue
        dcg = sum(h / math.log2(p + 2) for p, h in enumerate(hits))
        idcg = sum(1 / math.log2(p + 2) for p in range(min(k, size)))
        precision.append(sum(hits) / k)
        recall.append(sum(hits) / size)
        ndcg.append(dcg / idcg)
    np.testing.assert_allclose(metrics.precision_at_k(recs, truth), precision)
    np.testing.assert_allclose(metrics.recall_at_k(recs, truth), recall)
    np.testing.assert_allclose(metrics.ndcg_at_k(recs, truth), ndcg)


def test_accuracy_rejects_mismatched_rows() -> None:
    with pytest.raises(ValueError, match="rows"):
        metrics.precision_at_k(RECS, sparse([[1]]))
    with pytest.raises(ValueError, match="two-dimensional"):
        metrics.precision_at_k(np.array([1, 2]), TRUTH)


# ---------------------------------------------------------------- beyond accuracy


def test_intra_list_diversity_hand_computed() -> None:
    # Unit tag vectors: v0 = (1, 0), v1 = (1, 1)/sqrt2, v2 = (0, 1), v3 = 0.
    # Row 0: cos(0,1) = 0.7071, cos(0,2) = 0, cos(1,2) = 0.7071 -> mean distance
    #        1 - (0.7071 + 0 + 0.7071) / 3 = 1 - 0.4714 = 0.5286.
    # Row 1: items 3 and 0; the zero vector has similarity 0 -> distance 1.
    # Row 2: no items -> NaN.
    expected = 1 - (2 / math.sqrt(2)) / 3
    np.testing.assert_allclose(metrics.intra_list_diversity(RECS, TAGS), [expected, 1.0, np.nan])
    assert expected == pytest.approx(0.528595, abs=1e-6)


def test_intra_list_diversity_dense_factors() -> None:
    # Opposite vectors: cosine -1 -> distance 2; a one-item list is undefined.
    factors = np.array([[1.0, 0.0], [-2.0, 0.0], [0.0, 3.0]])
    got = metrics.intra_list_diversity(np.array([[0, 1], [0, 2], [2, -1]]), factors)
    np.testing.assert_allclose(got, [2.0, 1.0, np.nan])


def test_novelty_hand_computed() -> None:
    # 8 members; popularity 4, 2, 1, 0 -> shares 1/2, 1/4, 1/8, (0 counted as 1) 1/8
    # -> self-information 1, 2, 3, 3 bits. Row 0: (1 + 2 + 3) / 3 = 2. Row 1: (3 + 1) / 2 = 2.
    popularity = np.array([4, 2, 1, 0, 8, 8])
    np.testing.assert_allclose(metrics.novelty(RECS, popularity, 8), [2.0, 2.0, np.nan])


def test_average_popularity_hand_computed() -> None:
    # Row 0: (4 + 2 + 1) / 3 = 7/3. Row 1: (0 + 4) / 2 = 2. Row 2: empty -> NaN.
    popularity = np.array([4, 2, 1, 0, 8, 8])
    np.testing.assert_allclose(metrics.average_popularity(RECS, popularity), [7 / 3, 2.0, np.nan])


def test_calibration_hand_computed() -> None:
    recs = np.array([[0, 1, 2], [2, -1, -1], [0, -1, -1], [0, -1, -1], [3, -1, -1]])
    history = sparse([[0, 2], [0], [0, 2], [3], [0]])
    # Item tag distributions: 0 -> (1, 0), 1 -> (.5, .5), 2 -> (0, 1), 3 -> none.
    # Row 0: p = mean((1,0), (0,1)) = (.5,.5); q = mean((1,0), (.5,.5), (0,1)) = (.5,.5) -> 0.
    # Row 1: p = (1, 0); q = (0, 1); q~ = .99 q + .01 p = (.01, .99)
    #        -> KL = 1 * ln(1 / .01) = ln 100 = 4.6052; Hellinger = sqrt(1 - 0) = 1.
    # Row 2: p = (.5, .5); q = (1, 0); q~ = (.995, .005)
    #        -> KL = .5 ln(.5/.995) + .5 ln(.5/.005) = -0.3441 + 2.3026 = 1.9585;
    #        Hellinger = sqrt(1 - sqrt(.5)) = sqrt(.2929) = 0.5412.
    # Row 3: history has no tagged item -> NaN.  Row 4: list has no tagged item -> NaN.
    kl = metrics.calibration(recs, history, TAGS)
    np.testing.assert_allclose(
        kl,
        [0.0, math.log(100), 0.5 * math.log(0.5 / 0.995) + 0.5 * math.log(100), np.nan, np.nan],
        atol=1e-12,
    )
    assert kl[2] == pytest.approx(1.958517, abs=1e-6)
    hellinger = metrics.calibration(recs, history, TAGS, method="hellinger")
    np.testing.assert_allclose(
        hellinger, [0.0, 1.0, math.sqrt(1 - math.sqrt(0.5)), np.nan, np.nan], atol=1e-7
    )
    with pytest.raises(ValueError, match="method"):
        metrics.calibration(recs, history, TAGS, method="js")  # type: ignore[arg-type]


# ---------------------------------------------------------------- producers


def test_exposure_hand_computed() -> None:
    # Appearances: item 0 twice, items 1, 2, 3 once, items 4, 5 never.
    np.testing.assert_allclose(metrics.exposure(RECS, 6), [2, 1, 1, 1, 0, 0])
    # log2 discount: item 0 at position 0 (1) and 1 (1/log2 3); item 1 at 1; item 2 at 2
    # (1/log2 4 = .5); item 3 at 0 (1).
    np.testing.assert_allclose(
        metrics.exposure(RECS, 6, discount="log2"), [1 + 1 / LOG3, 1 / LOG3, 0.5, 1.0, 0, 0]
    )
    with pytest.raises(ValueError, match="discount"):
        metrics.exposure(RECS, 6, discount="linear")  # type: ignore[arg-type]
    with pytest.raises(IndexError):
        metrics.exposure(RECS, 3)


def test_gini_known_values() -> None:
    assert metrics.gini(np.full(7, 3.0)) == pytest.approx(0.0)
    for n in (1, 2, 5, 100):
        one_hot = np.zeros(n)
        one_hot[n // 2] = 4.0
        assert metrics.gini(one_hot) == pytest.approx((n - 1) / n)
    # Sorted [0, 0, 1, 1, 1, 2], n = 6, sum = 5; weights 2i - n - 1 = -5, -3, -1, 1, 3, 5
    # -> (-1 + 1 + 3 + 10) / (6 * 5) = 13/30.
    assert metrics.gini([2, 1, 1, 1, 0, 0]) == pytest.approx(13 / 30)
    assert math.isnan(metrics.gini([]))
    assert math.isnan(metrics.gini([0, 0]))
    with pytest.raises(ValueError, match="non-negative"):
        metrics.gini([1, -1])


def test_item_and_creator_gini_hand_computed() -> None:
    assert metrics.item_gini(RECS, 6) == pytest.approx(13 / 30)
    # Creator exposure: c0 = items 0 + 1 = 3; c1 = items 2 + 5 = 1; c2 = item 4 = 0; item 3
    # (placeholder) left out. Gini of sorted [0, 1, 3]: (-2*0 + 0*1 + 2*3) / (3 * 4) = 0.5.
    np.testing.assert_allclose(metrics.creator_exposure(RECS, CREATOR, 3), [3, 1, 0])
    assert metrics.creator_gini(RECS, CREATOR, 3) == pytest.approx(0.5)


def test_coverage_hand_computed() -> None:
    # Items {0, 1, 2, 3} of 6; creators {0, 1} of 3 (item 3 is the placeholder's).
    assert metrics.item_coverage(RECS, 6) == pytest.approx(4 / 6)
    assert metrics.creator_coverage(RECS, CREATOR, 3) == pytest.approx(2 / 3)
    padding = np.full((2, 3), -1)
    assert metrics.item_coverage(padding, 6) == 0.0
    assert metrics.creator_coverage(padding, CREATOR, 3) == 0.0


def test_head_creators() -> None:
    # ceil(0.2 * 3) = 1 creator in the head: the most interacted-with.
    np.testing.assert_array_equal(metrics.head_creators([5, 10, 1]), [False, True, False])
    # ceil(0.2 * 5) = 1; the tie between creators 0 and 1 goes to the lower index.
    np.testing.assert_array_equal(metrics.head_creators([5, 5, 1, 1, 1]), [1, 0, 0, 0, 0])
    # ceil(0.2 * 10) = 2 exactly (no floating-point creep to 3).
    assert metrics.head_creators(np.arange(10)).sum() == 2
    assert metrics.head_creators(np.arange(10), head_fraction=0.0).sum() == 0


def test_long_tail_and_new_creator_share_hand_computed() -> None:
    # Creator exposure [3, 1, 0] (total 4, placeholder excluded).
    # Head (top 1 of 3 by interactions [10, 5, 1]) = {0} -> tail exposure 1 + 0 -> 1/4.
    assert metrics.long_tail_creator_share(RECS, CREATOR, [10, 5, 1]) == pytest.approx(0.25)
    # Head = {1} instead -> tail exposure 3 + 0 -> 3/4.
    assert metrics.long_tail_creator_share(RECS, CREATOR, [1, 10, 5]) == pytest.approx(0.75)
    # New = first item at or after t=150: creator 1 only (creator 2 unknown -> not new) -> 1/4.
    first = np.array([100.0, 200.0, np.nan])
    assert metrics.new_creator_share(RECS, CREATOR, first, since=150) == pytest.approx(0.25)
    # Nothing attributed recommended -> undefined.
    only_placeholder = np.array([[3, -1, -1]])
    assert math.isnan(metrics.long_tail_creator_share(only_placeholder, CREATOR, [1, 2, 3]))


def test_provenance_share_hand_computed() -> None:
    provenance = np.array([HUMAN, AI_GENERATED, AI_GENERATED, AI_ASSISTED, HUMAN, HUMAN])
    # Exposure [2, 1, 1, 1, 0, 0] (total 5): AI-generated items 1, 2 -> 2/5.
    assert metrics.provenance_share(RECS, provenance) == pytest.approx(0.4)
    # AI-generated or -assisted: items 1, 2, 3 -> 3/5.
    assert metrics.provenance_share(
        RECS, provenance, codes=(AI_GENERATED, AI_ASSISTED)
    ) == pytest.approx(0.6)
    # log2: total 1 + 1/log2 3 + 1/log2 3 + .5 + 1 = 3.7619; AI-generated 1/log2 3 + .5.
    total = 2.5 + 2 / LOG3
    assert metrics.provenance_share(RECS, provenance, discount="log2") == pytest.approx(
        (1 / LOG3 + 0.5) / total
    )
    assert math.isnan(metrics.provenance_share(np.full((1, 2), -1), provenance))


def test_churn_hand_computed() -> None:
    a = np.array([[0, 1, 2], [3, 0, -1], [4, 5, 1]])
    b = np.array([[2, 1, 5], [3, 0, -1], [0, 2, 3]])
    # Row 0 shares {1, 2}: 1 - 2/3. Row 1 shares {3, 0} (padding is never shared): 1 - 2/3.
    # Row 2 shares nothing: 1. Mean (1/3 + 1/3 + 1) / 3 = 5/9.
    result = metrics.churn(a, b)
    np.testing.assert_allclose(result.per_member, [1 / 3, 1 / 3, 1.0])
    assert result.mean == pytest.approx(5 / 9)
    full = a[[0, 2]]
    assert metrics.churn(full, full[:, ::-1]).mean == 0.0  # order is ignored
    # Items shared across *different* members do not count.
    assert metrics.churn(np.array([[0], [1]]), np.array([[1], [0]])).mean == 1.0
    with pytest.raises(ValueError, match="shape"):
        metrics.churn(a, b[:2])
