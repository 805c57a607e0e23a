"""ranking.evaluation and the ranking.evaluate command line."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats
from scipy.sparse import csr_matrix

from ranking import evaluate as cli
from ranking.datasets import InteractionData, load_movielens
from ranking.evaluation import (
    Split,
    aggregate,
    compare,
    compare_seeds,
    evaluate,
    evaluate_seeds,
    evaluated_members,
    history_matrix,
    implicit_baseline,
    item_attributes,
    metrics_report,
    recommend,
    reference_time,
    split_random,
    split_temporal,
    split_validation,
    truth_matrix,
)
from ranking.policy import ModelParams, Policy, neutral_policy

ML_100K = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "ml-100k"
PLAIN = Policy(model=ModelParams(factors=16, regularization=10.0, alpha=2.0))


@pytest.fixture(scope="module")
def ml100k() -> InteractionData:
    if not ML_100K.is_dir():
        pytest.skip(f"{ML_100K} not found")
    return load_movielens(ML_100K)


def synthetic(counts: list[int], n_items: int = 30) -> InteractionData:
    """Member ``i + 1`` has ``counts[i]`` interactions with distinct items, at times 0, 1, ..."""
    members = np.repeat(np.arange(1, len(counts) + 1), counts).astype(np.int64)
    items = np.concatenate([np.arange(c) for c in counts]).astype(np.int64) + 100
    timestamps = np.concatenate([np.arange(c) for c in counts]).astype(np.int64)
    catalogue = np.arange(100, 100 + n_items, dtype=np.int64)
    return InteractionData(
        member_ids=members,
        item_ids=items,
        weights=np.ones(members.size, dtype=np.float32),
        timestamps=timestamps,
        items=catalogue,
        item_creator=np.full(n_items, -1, dtype=np.int64),
        creators=(),
        item_tags=csr_matrix((n_items, 0), dtype=np.float32),
        tag_names=(),
        item_provenance=np.zeros(n_items, dtype=np.int8),
        item_published=np.full(n_items, np.nan),
    )


def held_out_per_member(data: InteractionData, split: Split) -> list[int]:
    counts = np.bincount(data.member_ids[split.test], minlength=int(data.members.max()) + 1)
    return [int(c) for c in counts[1:]]


# ---------------------------------------------------------------- splits


def test_split_random_counts_per_member() -> None:
    data = synthetic([1, 2, 3, 5, 10, 20])
    split = split_random(data, test_fraction=0.2, seed=42)
    # min(n - 1, round(0.2 n)): 1 -> 0, 2 -> 0 (0.4), 3 -> 1 (0.6), 5 -> 1, 10 -> 2, 20 -> 4.
    assert held_out_per_member(data, split) == [0, 0, 1, 1, 2, 4]
    # At a high fraction every member still keeps one training interaction.
    split = split_random(data, test_fraction=0.9, seed=1)
    assert held_out_per_member(data, split) == [0, 1, 2, 4, 9, 18]
    assert split.describe() == {
        "method": "random",
        "test_fraction": 0.9,
        "seed": 1,
        "part": "test",
        "n_train": 7,
        "n_test": 34,
        "n_excluded": 0,
    }


def test_split_random_is_seeded() -> None:
    data = synthetic([50, 50, 50], n_items=50)
    a = split_random(data, seed=7)
    assert np.array_equal(a.train, split_random(data, seed=7).train)
    assert not np.array_equal(a.train, split_random(data, seed=8).train)


def test_split_temporal_holds_out_the_latest() -> None:
    data = synthetic([5, 10])
    split = split_temporal(data, test_fraction=0.2)
    # Member 1 holds out its last 1 of 5 (t=4); member 2 its last 2 of 10 (t=8, 9).
    assert data.timestamps[split.test].tolist() == [4, 8, 9]
    assert split.seed is None and split.method == "temporal"


def test_split_temporal_breaks_ties_by_position() -> None:
    data = synthetic([5])
    tied = replace(data, timestamps=np.zeros(5, dtype=np.int64))
    split = split_temporal(tied, test_fraction=0.4)
    assert np.flatnonzero(split.test).tolist() == [3, 4]


def test_split_temporal_is_per_member_not_a_global_cut() -> None:
    # Member 1 is active early (t = 0..4), member 2 late (t = 100..104): a global cutoff would
    # hold out only member 2; the per-member split holds out each one's latest.
    data = synthetic([5, 5])
    late = replace(data, timestamps=data.timestamps + np.repeat([0, 100], 5))
    split = split_temporal(late, test_fraction=0.2)
    assert late.timestamps[split.test].tolist() == [4, 104]


def test_split_validation_holds_out_the_latest_of_the_training_part() -> None:
    data = synthetic([5, 10])
    split = split_temporal(data, test_fraction=0.2)
    validation = split_validation(data, split)
    # Train parts of 4 and 8 interactions; 0.2 of them: 1 (t=3) and 2 (t=6, 7).
    assert data.timestamps[validation.test].tolist() == [3, 6, 7]
    assert data.timestamps[validation.train].tolist() == [0, 1, 2, 0, 1, 2, 3, 4, 5]
    # The outer test part is in neither part: it trains nothing and is measured nowhere.
    assert validation.excluded is not None
    assert np.array_equal(validation.excluded, split.test)
    assert validation.describe() == {
        "method": "temporal",
        "test_fraction": 0.2,
        "seed": None,
        "part": "validation",
        "n_train": 9,
        "n_test": 3,
        "n_excluded": 3,
    }
    assert evaluated_members(data, validation).tolist() == [1, 2]
    truth = truth_matrix(data, validation, [1, 2])
    assert truth.toarray()[1].nonzero()[0].tolist() == [6, 7]


@settings(max_examples=50, deadline=None)
@given(
    counts=st.lists(st.integers(1, 12), min_size=1, max_size=6),
    stamps=st.data(),
    fraction=st.floats(0.05, 0.95),
)
def test_validation_precedes_test_for_every_member(
    counts: list[int], stamps: st.DataObject, fraction: float
) -> None:
    data = synthetic(counts)
    times = stamps.draw(
        st.lists(st.integers(0, 5), min_size=sum(counts), max_size=sum(counts)), label="times"
    )
    data = replace(data, timestamps=np.asarray(times, dtype=np.int64))
    split = split_temporal(data, test_fraction=fraction)
    validation = split_validation(data, split)
    parts = split.test.astype(int) + validation.test + validation.train
    assert (parts == 1).all()  # train, validation and test partition the interactions
    key = data.timestamps * sum(counts) + np.arange(sum(counts))  # time, then file order
    for member in np.unique(data.member_ids):
        mine = data.member_ids == member
        train, valid, test = (
            key[mine & part] for part in (validation.train, validation.test, split.test)
        )
        assert train.size >= 1  # every member keeps something to learn from
        later = np.concatenate([valid, test])
        assert later.size == 0 or train.max() < later.min()
        assert valid.size == 0 or test.size == 0 or valid.max() < test.min()


def test_split_validation_of_a_random_split_is_seeded_apart_from_it() -> None:
    data = synthetic([20, 20, 20], n_items=30)
    split = split_random(data, seed=7)
    validation = split_validation(data, split)
    assert validation.seed == 8 and validation.part == "validation"
    assert not (validation.test & split.test).any() and not (validation.train & split.test).any()
    assert held_out_per_member(data, validation) == [3, 3, 3]  # 0.2 of 16
    again = split_validation(data, split, seed=8)
    assert np.array_equal(again.train, validation.train)
    with pytest.raises(ValueError, match="test split"):
        split_validation(data, validation)
    with pytest.raises(ValueError, match="test_fraction"):
        split_validation(data, split, validation_fraction=1.0)


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1])
def test_split_rejects_bad_fraction(fraction: float) -> None:
    with pytest.raises(ValueError, match="test_fraction"):
        split_random(synthetic([3]), test_fraction=fraction)
    with pytest.raises(ValueError, match="test_fraction"):
        split_temporal(synthetic([3]), test_fraction=fraction)


def test_truth_drops_pairs_also_in_train() -> None:
    # Member 1 interacts with item 100 twice; one copy lands in test, one in train.
    data = synthetic([3])
    data = replace(data, item_ids=np.array([100, 101, 100]))
    split = Split(train=np.array([True, False, False]), method="random", test_fraction=0.5)
    truth = truth_matrix(data, split, [1, 9])
    assert truth.shape == (2, 30)
    assert truth[0].indices.tolist() == [1]  # item 101 only; 100 was seen in train
    assert truth[1].nnz == 0  # unknown member: empty row
    assert history_matrix(data, split, [1]).indices.tolist() == [0]
    np.testing.assert_array_equal(evaluated_members(data, split), [1])


# ---------------------------------------------------------------- item attributes


def test_item_attributes_from_data() -> None:
    day = 86_400
    data = replace(
        synthetic([3], n_items=4),
        timestamps=np.array([10 * day, 20 * day, 30 * day], dtype=np.int64),
        item_creator=np.array([1, -1, 0, 1], dtype=np.int64),
        creators=("ada", "bo"),
        item_tags=csr_matrix(np.array([[1, 0], [0, 0], [1, 1], [0, 1]], dtype=np.float32)),
        tag_names=("Drama", "War"),
        item_provenance=np.array([0, 1, 2, 3], dtype=np.int8),
        item_published=np.array([0.0, 5 * day, np.nan, 20 * day]),
    )
    split = Split(train=np.array([True, True, False]), method="random", test_fraction=0.3)
    assert reference_time(data, split) == 20 * day  # the test interaction at day 30 is not seen
    assert reference_time(data) == 30 * day
    attributes = item_attributes(data, split)
    assert attributes.item_ids.tolist() == [100, 101, 102, 103]
    assert attributes.item_keys.tolist() == ["100", "101", "102", "103"]
    assert attributes.creator_ids.tolist() == [1, -1, 0, 1]
    assert attributes.creator_keys.tolist() == ["bo", "", "ada", "bo"]
    assert attributes.provenance.tolist() == [0, 1, 2, 3]
    np.testing.assert_allclose(attributes.age_days, [20, 15, np.nan, 0])
    assert attributes.tag_names.tolist() == ["Drama", "War"]
    assert attributes.tags.toarray().tolist() == [
        [True, False],
        [False, False],
        [True, True],
        [False, True],
    ]


# ---------------------------------------------------------------- on ml-100k


def test_pipeline_equals_bare_implicit(ml100k: InteractionData) -> None:
    split = split_random(ml100k, seed=42)
    # feed_options reach compute_feeds: a small chunk size must not change anything.
    ours = recommend(PLAIN, ml100k, split, k=10, feed_options={"chunk_size": 100})
    bare = implicit_baseline(PLAIN.model, ml100k, split, k=10)
    np.testing.assert_array_equal(ours.member_ids, bare.member_ids)
    np.testing.assert_array_equal(ours.items, bare.items)
    assert metrics_report(ours, ml100k, split) == metrics_report(bare, ml100k, split)


def test_neutral_policy_with_attributes_equals_bare_implicit(ml100k: InteractionData) -> None:
    # recommend() passes item attributes by default; with nothing to re-rank they change nothing.
    split = split_random(ml100k, seed=42)
    neutral = neutral_policy().model_copy(update={"model": PLAIN.model})
    ours = recommend(neutral, ml100k, split, k=10)
    bare = implicit_baseline(PLAIN.model, ml100k, split, k=10)
    np.testing.assert_array_equal(ours.items, bare.items)


def test_policy_effects_are_evaluated(ml100k: InteractionData) -> None:
    split = split_random(ml100k, seed=42)
    capped = Policy.model_validate(
        {
            "model": PLAIN.model.model_dump(),
            "ranking": {"creator_cap": 1, "long_tail_quota": 0.3},
        }
    )
    run = recommend(capped, ml100k, split, k=10)
    creators = np.where(run.items >= 0, ml100k.item_creator[np.maximum(run.items, 0)], -1)
    for row in creators:  # the cap holds: no director twice in a list
        attributed = row[row >= 0]
        assert np.unique(attributed).size == attributed.size
    report = compare(PLAIN, capped, ml100k, split, k=10)
    # The quota reserves 3 of 10 slots for long-tail directors: their share rises to ~0.3.
    assert report["a"]["producers"]["long_tail_creator_share"] < 0.1
    assert report["b"]["producers"]["long_tail_creator_share"] > 0.25
    assert report["churn"]["mean"] > 0
    # Without attributes the effects cannot be applied, and compute_feeds says so.
    with pytest.raises(ValueError, match="item_attributes"):
        recommend(capped, ml100k, split, feed_options={"item_attributes": None})


def test_evaluate_report(ml100k: InteractionData) -> None:
    split = split_random(ml100k, seed=42)
    report = evaluate(PLAIN, ml100k, split, k=10)
    json.dumps(report, allow_nan=False)  # JSON-ready: no NaN, no numpy scalars
    assert set(report) == {
        "consumers",
        "producers",
        "at_depth",
        "whole_feed",
        "members",
        "params",
        "timings",
    }
    assert report["members"] == {
        "evaluated": 943,
        "excluded_no_truth": 0,
        "short_lists": 0,
        "empty_lists": 0,
    }
    consumers, producers = report["consumers"], report["producers"]
    # Tuned bare ALS reaches nDCG@10 of about 0.43-0.45 on this protocol.
    assert 0.40 < consumers["ndcg@10"] < 0.50
    assert 0 < consumers["recall@10"] < consumers["precision@10"] < 1
    for name in ("item_coverage", "creator_coverage", "item_gini", "long_tail_creator_share"):
        assert 0 < producers[name] < 1, name
    assert producers["ai_generated_share"] == 0.0  # every film is human-made
    assert report["params"]["policy"] == PLAIN.model_dump(mode="json")
    assert report["params"]["split"]["n_test"] == 20_000


def test_the_visible_depth_of_a_longer_feed_measures_its_first_places(
    ml100k: InteractionData,
) -> None:
    split = split_random(ml100k, seed=42)
    short = evaluate(PLAIN, ml100k, split, k=10)
    served = evaluate(PLAIN, ml100k, split, k=50, depth=10)
    # Without re-ranking the first 10 of 50 places are the 10-entry list: same figures.
    assert served["at_depth"]["consumers"]["ndcg@10"] == pytest.approx(
        short["consumers"]["ndcg@10"]
    )
    for name in ("creator_coverage", "long_tail_creator_share", "creator_gini"):
        assert served["at_depth"]["producers"][name] == pytest.approx(short["producers"][name])
    # The whole feed is the flat report, and reaches further into the long tail than the top.
    assert served["whole_feed"]["consumers"]["ndcg@50"] == served["consumers"]["ndcg@50"]
    whole, top = served["whole_feed"]["producers"], served["at_depth"]["producers"]
    assert whole["long_tail_creator_share"] > top["long_tail_creator_share"]
    # Weighting by position puts the first places first: the popular head gains.
    assert whole["long_tail_creator_share_weighted"] < whole["long_tail_creator_share"]
    assert served["params"]["depth"] == 10 and served["params"]["k"] == 50


def test_evaluate_temporal_runs(ml100k: InteractionData) -> None:
    report = evaluate(PLAIN, ml100k, split_temporal(ml100k), k=5)
    assert "ndcg@5" in report["consumers"] and report["members"]["evaluated"] == 943


def test_compare(ml100k: InteractionData) -> None:
    split = split_random(ml100k, seed=42)
    same = compare(PLAIN, PLAIN, ml100k, split, k=10)
    assert same["churn"] == {"mean": 0.0, "n_members": 943}
    assert same["churn_at_depth"] == {"mean": 0.0, "n_members": 943}
    assert all(v == 0 for v in same["deltas"]["at_depth"]["producers"].values() if v is not None)
    assert all(v == 0 for v in same["deltas"]["consumers"].values())
    wider = Policy(model=PLAIN.model.model_copy(update={"factors": 64}))
    result = compare(PLAIN, wider, ml100k, split, k=10)
    assert 0 < result["churn"]["mean"] <= 1
    delta = result["deltas"]["producers"]["item_coverage"]
    assert delta == pytest.approx(
        result["b"]["producers"]["item_coverage"] - result["a"]["producers"]["item_coverage"]
    )


# ---------------------------------------------------------------- seeds and intervals


def test_aggregate_gives_mean_and_student_t_interval() -> None:
    reports = [
        {"consumers": {"ndcg@10": 1.0, "x": None}, "members": {"evaluated": 5}, "params": {"k": 1}},
        {"consumers": {"ndcg@10": 3.0, "x": 2.0}, "members": {"evaluated": 5}, "params": {"k": 2}},
    ]
    result = aggregate(reports)
    ndcg = result["consumers"]["ndcg@10"]
    # Two runs: mean 2, s = sqrt(2), half-width t(0.975, 1) * s / sqrt(2) = 12.706.
    assert ndcg["mean"] == 2.0 and ndcg["values"] == [1.0, 3.0]
    assert ndcg["high"] - 2.0 == pytest.approx(12.7062, abs=1e-4)
    assert ndcg["low"] == pytest.approx(2.0 - 12.7062, abs=1e-4)
    # Undefined in some runs: over the others (here one, so no interval).
    assert result["consumers"]["x"] == {
        "mean": 2.0,
        "low": None,
        "high": None,
        "values": [None, 2.0],
    }
    assert result["members"]["evaluated"]["mean"] == 5
    assert result["params"] == {"k": 1}  # settings, not figures: the first run's
    with pytest.raises(ValueError):
        aggregate([])


@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(-1e3, 1e3), min_size=2, max_size=12))
def test_the_interval_is_centred_on_the_mean_and_as_scipy_says(values: list[float]) -> None:
    figure = aggregate([{"v": value} for value in values])["v"]
    assert figure["mean"] == pytest.approx(np.mean(values), abs=1e-9)
    if np.std(values) == 0:  # scipy gives NaN for identical values; ours is zero-width
        assert figure["low"] == pytest.approx(figure["high"], abs=1e-6)
    else:
        low, high = stats.t.interval(
            0.95, len(values) - 1, loc=np.mean(values), scale=stats.sem(values)
        )
        assert figure["low"] == pytest.approx(low, abs=1e-6)
        assert figure["high"] == pytest.approx(high, abs=1e-6)
    assert figure["low"] <= figure["mean"] + 1e-9 <= figure["high"] + 2e-9


def test_seeds_repeat_the_evaluation_and_one_seed_is_a_plain_run(ml100k: InteractionData) -> None:
    split = split_temporal(ml100k)
    plain = evaluate(PLAIN, ml100k, split, k=20)  # PLAIN's model seed is 42
    seeded = evaluate_seeds(PLAIN, ml100k, seeds=[42, 43], method="temporal", k=20)
    ndcg = seeded["at_depth"]["consumers"]["ndcg@10"]
    assert ndcg["values"][0] == plain["at_depth"]["consumers"]["ndcg@10"]
    assert ndcg["values"][0] != ndcg["values"][1]  # another ALS initialisation
    assert ndcg["low"] < ndcg["mean"] < ndcg["high"]
    assert seeded["seeds"]["seeds"] == [42, 43]


def test_compare_seeds_reports_ratios_per_run(ml100k: InteractionData) -> None:
    wider = Policy(model=PLAIN.model.model_copy(update={"factors": 32}))
    result = compare_seeds(
        PLAIN, wider, ml100k, seeds=[1, 2], method="random", part="validation", k=10
    )
    assert result["a"]["params"]["split"]["part"] == "validation"
    a = result["a"]["at_depth"]["producers"]["item_coverage"]["values"]
    b = result["b"]["at_depth"]["producers"]["item_coverage"]["values"]
    ratio = result["ratios"]["at_depth"]["producers"]["item_coverage"]["values"]
    assert ratio == pytest.approx([y / x for x, y in zip(a, b, strict=True)])
    # Seed 1 and seed 2 hold out different interactions of a random split.
    assert result["a"]["at_depth"]["consumers"]["ndcg@10"]["values"][0] != pytest.approx(
        result["a"]["at_depth"]["consumers"]["ndcg@10"]["values"][1], abs=1e-6
    )


# ---------------------------------------------------------------- command line


def write_policy(tmp_path: Path, name: str, policy: Policy) -> Path:
    path = tmp_path / name
    path.write_text(policy.model_dump_json())
    return path


def test_cli_json_and_table(
    ml100k: InteractionData, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a = write_policy(tmp_path, "a.json", PLAIN)
    assert cli.main(["--movielens", str(ML_100K), "--policy", str(a), "--k", "5"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert "ndcg@5" in report["consumers"]
    # A depth past the feed: both cuts are the 5 places.
    assert report["at_depth"] == report["whole_feed"] and report["params"]["depth"] == 10
    assert cli.main(["--movielens", str(ML_100K), "--policy", str(a), "--depth", "3"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert "ndcg@3" in report["at_depth"]["consumers"] and "ndcg@50" in report["consumers"]

    b = tmp_path / "b.json"
    b.write_text(
        '{"model": {"factors": 32, "regularization": 10, "alpha": 2},'
        ' "ranking": {"creator_cap": 2, "freshness_half_life_days": 3650}}'
    )
    argv = ["--movielens", str(ML_100K), "--policy", str(a), "--compare", str(b)]
    assert cli.main([*argv, "--format", "table"]) == 0
    table = capsys.readouterr().out
    assert "ndcg@10" in table and "B - A" in table and "churn" in table
    assert "producers, top 10" in table and "ndcg@50" in table


def test_cli_seeds_and_validation(
    ml100k: InteractionData, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a = write_policy(tmp_path, "a.json", PLAIN)
    b = write_policy(
        tmp_path, "b.json", Policy(model=PLAIN.model, ranking={"long_tail_quota": 0.2})
    )
    argv = ["--movielens", str(ML_100K), "--policy", str(a), "--compare", str(b), "--k", "20"]
    argv += ["--split", "temporal", "--part", "validation", "--seeds", "2"]
    assert cli.main(argv) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["seeds"]["seeds"] == [42, 43]
    assert report["a"]["params"]["split"]["part"] == "validation"
    share = report["ratios"]["at_depth"]["producers"]["long_tail_creator_share"]
    assert share["mean"] > 1 and len(share["values"]) == 2
    assert cli.main([*argv, "--format", "table"]) == 0
    table = capsys.readouterr().out
    assert "B / A" in table and "±" in table and "measured on validation" in table


def test_cli_rejects_an_invalid_policy(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('{"model": {"factorz": 16}}')
    assert cli.main(["--movielens", str(tmp_path), "--policy", str(bad)]) == 2
    error = capsys.readouterr().err
    assert "not a valid policy" in error and "model.factorz" in error
    missing = tmp_path / "missing.json"
    assert cli.main(["--movielens", str(tmp_path), "--policy", str(missing)]) == 2
    assert "cannot read policy file" in capsys.readouterr().err
