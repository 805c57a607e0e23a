"""The policies shipped in docs/policies/ are valid, and keep the claims docs/evaluation.md makes.

The figures below are the "Fair exposure vs neutral" table of docs/evaluation.md ("Policy
effects"; reproduce with ``python bench/effect_sweep.py``). If a change to the ranking moves
them, re-run the sweep and update the document and these numbers together.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from ranking.datasets import InteractionData, load_movielens
from ranking.evaluation import compare, split_random
from ranking.policy import ModelParams, Policy, neutral_policy, policy_validate

ROOT = Path(__file__).resolve().parents[2]
POLICIES = ROOT / "docs" / "policies"
ML_100K = ROOT.parent / "shared" / "data" / "ml-100k"

# Published in docs/evaluation.md (ml-100k, random per-member 80/20 split, seed 42, @10).
CLAIMED: dict[str, dict[str, float]] = {
    "neutral": {
        "ndcg@10": 0.4468,
        "long_tail_creator_share": 0.0475,
        "creator_gini": 0.8944,
        "item_coverage": 0.2194,
        "creator_coverage": 0.3068,
    },
    "fair": {
        "ndcg@10": 0.4258,
        "long_tail_creator_share": 0.3087,
        "creator_gini": 0.8300,
        "item_coverage": 0.2883,
        "creator_coverage": 0.4072,
    },
}
TOLERANCE = {
    "ndcg@10": 0.003,
    "long_tail_creator_share": 0.005,
    "creator_gini": 0.005,
    "item_coverage": 0.01,
    "creator_coverage": 0.01,
}


def load(name: str) -> Policy:
    return policy_validate((POLICIES / name).read_text(encoding="utf-8"))


def test_shipped_policies_are_valid() -> None:
    neutral = load("neutral.json")
    fair = load("fair-exposure.json")
    # neutral.json is the library's neutral policy with the best-nDCG model of the factor sweep.
    expected = neutral_policy().model_copy(
        update={"model": ModelParams(factors=16, regularization=10.0, alpha=2.0)}
    )
    assert neutral.canonical_json() == expected.canonical_json()
    assert fair.ranking.long_tail_quota > 0
    assert fair.refusals == []


@pytest.fixture(scope="module")
def ml100k() -> InteractionData:
    if not ML_100K.is_dir():
        pytest.skip(f"{ML_100K} not found")
    return load_movielens(ML_100K)


def test_fair_exposure_claim_holds(ml100k: InteractionData) -> None:
    split = split_random(ml100k, test_fraction=0.2, seed=42)
    report = compare(load("neutral.json"), load("fair-exposure.json"), ml100k, split, k=10)
    for side, name in (("a", "neutral"), ("b", "fair")):
        measured: dict[str, Any] = {**report[side]["consumers"], **report[side]["producers"]}
        for metric, claimed in CLAIMED[name].items():
            assert measured[metric] == pytest.approx(claimed, abs=TOLERANCE[metric]), (name, metric)
    # The claim itself: at least twice the long-tail share, at most 5 % nDCG@10 lost.
    a, b = report["a"], report["b"]
    assert b["consumers"]["ndcg@10"] >= 0.95 * a["consumers"]["ndcg@10"]
    share = "long_tail_creator_share"
    assert b["producers"][share] >= 2 * a["producers"][share]
