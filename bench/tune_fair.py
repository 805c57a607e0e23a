"""Choose the fair-exposure policy on a validation split, then report it on the test split.

Usage (from the project root)::

    python bench/tune_fair.py [--movielens ../shared/data/ml-100k] [--seeds 5] \\
        [--rule lower|mean] [--write FILE]

Protocol (docs/evaluation.md, "Fair exposure"): ml-100k, per-member temporal split (each
member's latest 20 % held out for test), 50-entry feeds measured in their first 10 places.

1. **Screen** a grid (factors, long-tail quota, popularity penalty, creator cap, new-item
   candidates) on the **validation** part (each member's latest 20 % of their training part,
   :func:`ranking.evaluation.split_validation`) with one seed: the objective is the long-tail
   creators' position-weighted exposure share in the top 10, under the constraint that nDCG@10
   is at most 5 % below the neutral policy's (``docs/policies/neutral.json``) on the same seed.
2. **Confirm** the feasible points of the screen's nDCG / share Pareto frontier on validation
   with ``--seeds`` seeds, each against neutral with the same seed, and choose the highest
   mean share ratio among those whose nDCG@10 ratio (policy / neutral, per seed) is at least
   0.95: with ``--rule lower`` (the default) the *lower end of its 95 % t interval* over the
   seeds must be, with ``--rule mean`` its mean. ``mean`` picks at the edge of the budget, and
   the first run (2026-12-07, 3 seeds, top-8 finalists) lost 5.5 % on test with it; ``lower``
   asks the budget to hold with the seed noise seen on validation, as the claim must on test.
3. **Report** the chosen policy against neutral on the **test** part with the same seeds (mean
   and 95 % t interval over seeds). The test part is touched only here, once.

``--write FILE`` writes the chosen policy as indented JSON (``docs/policies/fair-exposure.json``).
Results are deterministic for given seeds.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import time
from pathlib import Path
from typing import Any

from ranking.datasets import InteractionData, load_movielens
from ranking.evaluate import load_policy
from ranking.evaluation import compare_seeds, evaluate, make_split
from ranking.policy import Policy

ROOT = Path(__file__).resolve().parents[1]
K, DEPTH = 50, 10
MAX_LOSS = 0.05
"""Largest relative nDCG@10 loss against neutral the chosen policy may have on validation."""
NDCG, SHARE = f"ndcg@{DEPTH}", "long_tail_creator_share_weighted"


def variant(
    base: Policy, factors: int, quota: float, penalty: float, cap: int | None, new_items: int
) -> Policy:
    """``base`` with the model size, the exposure levers and the new-item candidates changed."""
    document = base.model_dump(mode="json")
    document["model"]["factors"] = factors
    document["ranking"].update(long_tail_quota=quota, popularity_penalty=penalty, creator_cap=cap)
    document["candidates"]["new_items"] = new_items
    return Policy.model_validate(document)


def label(policy: Policy) -> str:
    ranking = policy.ranking
    return (
        f"f{policy.model.factors} quota {ranking.long_tail_quota} penalty "
        f"{ranking.popularity_penalty} cap {ranking.creator_cap} new {policy.candidates.new_items}"
    )


def figures(report: dict[str, Any]) -> tuple[float, float]:
    cut = report["at_depth"]
    return cut["consumers"][NDCG], cut["producers"][SHARE]


def seeded(policy: Policy, seed: int) -> Policy:
    return policy.model_copy(update={"model": policy.model.model_copy(update={"seed": seed})})


def screen(
    base: Policy, data: InteractionData, threads: int, seed: int
) -> list[tuple[Policy, float, float]]:
    """Every grid point on validation, one seed: (policy, nDCG ratio, share ratio) vs neutral."""
    split = make_split(data, "temporal", part="validation")
    ndcg0, share0 = figures(
        evaluate(seeded(base, seed), data, split, k=K, depth=DEPTH, num_threads=threads)
    )
    print(
        f"validation, neutral, seed {seed}: nDCG@{DEPTH} {ndcg0:.4f}, weighted share {share0:.4f}"
    )
    grid = itertools.product(
        (16, 32, 64), (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6), (0.0, 0.3, 1.0), (None, 1), (0, 20)
    )
    rows = []
    started = time.perf_counter()
    for point in grid:
        policy = variant(base, *point)
        ndcg, share = figures(
            evaluate(seeded(policy, seed), data, split, k=K, depth=DEPTH, num_threads=threads)
        )
        rows.append((policy, ndcg / ndcg0, share / share0))
    print(f"<!-- screened {len(rows)} policies in {time.perf_counter() - started:.0f} s -->")
    return rows


def frontier(rows: list[tuple[Policy, float, float]]) -> list[tuple[Policy, float, float]]:
    """Points no other point beats on both nDCG and share, best nDCG first."""
    out, best = [], -1.0
    for row in sorted(rows, key=lambda row: (-row[1], -row[2])):
        if row[2] > best:
            out.append(row)
            best = row[2]
    return out


def summary(result: dict[str, Any], side: str, section: str, name: str) -> str:
    """``mean [low, high]`` of one figure of the top-10 cut."""
    figure = result[side]["at_depth"][section][name]
    if figure["low"] is None:
        return f"{figure['mean']:.4f}"
    return f"{figure['mean']:.4f} [{figure['low']:.4f}, {figure['high']:.4f}]"


def line(title: str, result: dict[str, Any]) -> str:
    cells = [title]
    for side in ("a", "b", "ratios"):
        cells.append(summary(result, side, "consumers", NDCG))
        cells.append(summary(result, side, "producers", SHARE))
    return "| " + " | ".join(cells) + " |"


HEADER = (
    "| policy | neutral nDCG@10 | neutral LT share (w) | policy nDCG@10 | policy LT share (w) "
    "| nDCG ratio | share ratio |\n|---|---|---|---|---|---|---|"
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--movielens", type=Path, default=ROOT.parent / "shared/data/ml-100k")
    parser.add_argument("--seed", type=int, default=42, help="first seed")
    parser.add_argument("--seeds", type=int, default=5, help="seeds to confirm and report with")
    parser.add_argument(
        "--rule",
        choices=("lower", "mean"),
        default="lower",
        help="the nDCG ratio's interval lower end, or its mean, must be >= 0.95 on validation",
    )
    parser.add_argument("--threads", type=int, default=0, help="ALS threads (0: all cores)")
    parser.add_argument("--write", type=Path, help="write the chosen policy to this file")
    args = parser.parse_args()
    print(f"<!-- {platform.platform()}, {platform.processor() or 'cpu'}, ", end="")
    print(f"{len(os.sched_getaffinity(0))} cores, {time.strftime('%Y-%m-%d')} -->")
    data = load_movielens(args.movielens)
    base = load_policy(ROOT / "docs/policies/neutral.json")
    seeds = list(range(args.seed, args.seed + args.seeds))
    shared: dict[str, Any] = {"method": "temporal", "k": K, "depth": DEPTH}
    shared["num_threads"] = args.threads

    rows = screen(base, data, args.threads, args.seed)
    print("\nValidation screen, Pareto frontier (ratios to neutral, one seed):\n")
    print("| policy | nDCG@10 ratio | LT share (w) ratio |\n|---|---|---|")
    for policy, ndcg, share in frontier(rows):
        print(f"| {label(policy)} | {ndcg:.4f} | {share:.2f} |")
    feasible = [row for row in frontier(rows) if row[1] >= 1 - MAX_LOSS]
    finalists = [row[0] for row in sorted(feasible, key=lambda row: -row[2])]

    print(f"\nValidation, feasible frontier, seeds {seeds} (mean [95 % t interval]):\n")
    print(HEADER)
    confirmed = []
    for policy in finalists:
        result = compare_seeds(base, policy, data, seeds=seeds, part="validation", **shared)
        print(line(label(policy), result), flush=True)
        cut = result["ratios"]["at_depth"]
        ndcg = cut["consumers"][NDCG]["low" if args.rule == "lower" else "mean"]
        share = cut["producers"][SHARE]["mean"]
        if ndcg is not None and ndcg >= 1 - MAX_LOSS:
            confirmed.append((share, ndcg, policy))
    if not confirmed:
        print("\nno finalist keeps nDCG@10 within the budget over the seeds")
        return
    _, _, chosen = max(confirmed, key=lambda row: (row[0], row[1]))
    print(f"\nchosen on validation (rule {args.rule}): {label(chosen)}")

    print(f"\nTest, seeds {seeds} (mean [95 % t interval]):\n")
    print(HEADER)
    result = compare_seeds(base, chosen, data, seeds=seeds, part="test", **shared)
    print(line(label(chosen), result))
    cut = result["ratios"]["at_depth"]
    ndcg, share = cut["consumers"][NDCG]["mean"], cut["producers"][SHARE]["mean"]
    verdict = "met" if ndcg >= 1 - MAX_LOSS and share >= 2 else "NOT met"
    print(f"\ngoal (>= 2x weighted long-tail share at <= 5 % nDCG@10 loss) on test: {verdict}")
    if args.write is not None:
        text = json.dumps(chosen.model_dump(mode="json"), indent=2) + "\n"
        args.write.write_text(text, encoding="utf-8")
        print(f"wrote {args.write}")


if __name__ == "__main__":
    main()
