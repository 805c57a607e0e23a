"""Reproduce the evaluation tables of docs/evaluation.md: ALS hyperparameter sweeps on ml-100k.

Usage (from the project root)::

    python bench/factor_sweep.py [--movielens ../shared/data/ml-100k] [--seed 42] [--k 10]

Prints Markdown tables: (a) our pipeline vs bare implicit on the same split, (b) factors
4 ... 256 at regularization 10 and alpha 2, (c) regularization at 16 factors, alpha 2, and
(d) alpha at 16 factors, regularization 10. Everything else is the policy default
(15 iterations, seed 42, binary weighting). Protocol: per-member random 80/20 split.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np

from ranking.datasets import InteractionData, load_movielens
from ranking.evaluation import (
    Split,
    evaluate,
    implicit_baseline,
    metrics_report,
    recommend,
    split_random,
)
from ranking.policy import ModelParams, Policy

ROOT = Path(__file__).resolve().parents[1]
COLUMNS = [
    ("consumers", "ndcg@{k}", "nDCG@{k}"),
    ("consumers", "recall@{k}", "recall@{k}"),
    ("producers", "item_coverage", "item cov."),
    ("producers", "creator_coverage", "creator cov."),
    ("producers", "long_tail_creator_share", "long-tail creator share"),
    ("producers", "item_gini", "item Gini"),
    ("producers", "avg_popularity", "avg pop."),
]


def policy(factors: int, regularization: float, alpha: float) -> Policy:
    return Policy(model=ModelParams(factors=factors, regularization=regularization, alpha=alpha))


def row(label: str, report: dict[str, Any], k: int, seconds: float | None = None) -> str:
    cells = [label]
    for section, key, _ in COLUMNS:
        value = report[section][key.format(k=k)]
        cells.append(f"{value:.1f}" if key == "avg_popularity" else f"{value:.4f}")
    cells.append("" if seconds is None else f"{seconds:.2f}")
    return "| " + " | ".join(cells) + " |"


def header(first: str, k: int) -> str:
    names = [first, *(title.format(k=k) for _, _, title in COLUMNS), "fit+rec s"]
    return "| " + " | ".join(names) + " |\n|" + "---|" * len(names)


def sweep(
    title: str,
    label: str,
    settings: list[tuple[str, Policy]],
    data: InteractionData,
    split: Split,
    k: int,
) -> None:
    print(f"\n### {title}\n")
    print(header(label, k))
    for name, chosen in settings:
        report = evaluate(chosen, data, split, k=k, num_threads=0)
        print(row(name, report, k, report["timings"]["feeds_seconds"]), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--movielens", type=Path, default=ROOT.parent / "shared/data/ml-100k")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--k", type=int, default=10)
    args = parser.parse_args()
    k = args.k

    data = load_movielens(args.movielens)
    split = split_random(data, test_fraction=0.2, seed=args.seed)
    print(f"<!-- {platform.platform()}, {platform.processor() or 'cpu'}, ", end="")
    print(f"{len(os.sched_getaffinity(0))} cores, {time.strftime('%Y-%m-%d')} -->")

    print("\n### (a) Pipeline vs bare implicit (16 factors, reg 10, alpha 2)\n")
    plain = policy(16, 10.0, 2.0)
    ours = recommend(plain, data, split, k=k)
    bare = implicit_baseline(plain.model, data, split, k=k)
    same = bool(np.array_equal(ours.items, bare.items))
    print(header("run", k))
    print(row("ranking.evaluation.recommend", metrics_report(ours, data, split), k, ours.seconds))
    print(row("bare implicit fit+recommend", metrics_report(bare, data, split), k, bare.seconds))
    print(f"\nIdentical lists for all {ours.items.shape[0]} members: {same}")

    sweep(
        "(b) Factors (reg 10, alpha 2)",
        "factors",
        [(str(f), policy(f, 10.0, 2.0)) for f in (4, 8, 16, 32, 64, 128, 256)],
        data,
        split,
        k,
    )
    sweep(
        "(b') Factors at the policy default regularization (reg 1, alpha 2)",
        "factors",
        [(str(f), policy(f, 1.0, 2.0)) for f in (4, 8, 16, 32, 64, 128, 256)],
        data,
        split,
        k,
    )
    sweep(
        "(c) Regularization (16 factors, alpha 2)",
        "regularization",
        [(str(r), policy(16, r, 2.0)) for r in (0.01, 1.0, 10.0, 30.0)],
        data,
        split,
        k,
    )
    sweep(
        "(d) Alpha (16 factors, reg 10)",
        "alpha",
        [(str(a), policy(16, 10.0, a)) for a in (1.0, 2.0, 5.0, 10.0)],
        data,
        split,
        k,
    )


if __name__ == "__main__":
    main()
