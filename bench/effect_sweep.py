"""Reproduce the "Policy effects" tables of docs/evaluation.md: each re-ranking lever alone.

Usage (from the project root)::

    python bench/effect_sweep.py [--movielens ../shared/data/ml-100k] [--seed 42] [--k 10]
    python bench/effect_sweep.py --search
    python bench/effect_sweep.py --write-policies docs/policies

Without ``--search`` it prints one Markdown table per lever, each row the best-nDCG neutral
policy of docs/evaluation.md (16 factors, regularization 10, alpha 2, no re-ranking) with that
one lever changed: popularity penalty, creator cap, long-tail quota, new-creator quota,
diversity, freshness half-life and the candidate pool size. With ``--search`` it evaluates a grid
of combinations (factors 16/32/64, long-tail quota, popularity penalty, creator cap, pool size),
prints the nDCG / long-tail-share Pareto frontier, the highest long-tail creator share whose
nDCG@10 is at most 5 % below the neutral policy's and the cheapest policy that doubles the share.
The shipped "fair exposure" policy (:func:`fair`) is now chosen on a temporal validation split
by ``bench/tune_fair.py`` (this script's search is the older random-split one); the sweep ends
with it side by side with neutral, and ``--write-policies DIR`` writes both as
``neutral.json`` and ``fair-exposure.json``.

Protocol: per-member random 80/20 split (seed 42), binary training, @10, 15 ALS iterations, ALS
seed 42, undiscounted exposure; item attributes from ``ranking.evaluation.item_attributes``.
Results are deterministic.
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
from ranking.evaluation import Split, evaluate, split_random
from ranking.policy import ModelParams, Policy, neutral_policy

ROOT = Path(__file__).resolve().parents[1]
COLUMNS = [
    ("consumers", "ndcg@{k}", "nDCG@{k}"),
    ("consumers", "recall@{k}", "recall@{k}"),
    ("consumers", "diversity_tags", "ILD"),
    ("consumers", "novelty_bits", "novelty"),
    ("producers", "long_tail_creator_share", "long-tail share"),
    ("producers", "creator_gini", "creator Gini"),
    ("producers", "item_coverage", "item cov."),
    ("producers", "creator_coverage", "creator cov."),
    ("producers", "avg_popularity", "avg pop."),
]
MAX_LOSS = 0.05
"""Largest relative nDCG@k loss the fair-exposure policy may have against neutral."""


def neutral(factors: int = 16) -> Policy:
    """The best-nDCG neutral policy of docs/evaluation.md (reg 10, alpha 2), no re-ranking."""
    base = neutral_policy()
    return base.model_copy(
        update={"model": ModelParams(factors=factors, regularization=10.0, alpha=2.0)}
    )


def fair() -> Policy:
    """The shipped fair-exposure policy, chosen by ``bench/tune_fair.py`` on a validation split.

    64 factors, 3 of every 10 consecutive places for long-tail directors, a popularity penalty of
    0.3 and one film per director per feed (docs/evaluation.md, "Fair exposure": why this point
    and not the one the validation rule picked).
    """
    policy = with_effects(neutral(64), pool=200, long_tail_quota=0.3, popularity_penalty=0.3)
    return with_effects(policy, creator_cap=1)


def with_effects(policy: Policy, pool: int | None = None, **ranking: Any) -> Policy:
    """``policy`` with some ranking fields (and the candidate pool size) changed, validated."""
    data = policy.model_dump(mode="json")
    data["ranking"].update(ranking)
    if pool is not None:
        data["candidates"]["pool_size"] = pool
    return Policy.model_validate(data)


def cells(report: dict[str, Any], k: int) -> list[str]:
    out = []
    for section, key, _ in COLUMNS:
        value = report[section][key.format(k=k)]
        out.append(f"{value:.1f}" if key == "avg_popularity" else f"{value:.4f}")
    return out


def header(first: str, k: int) -> str:
    names = [first, *(title.format(k=k) for _, _, title in COLUMNS)]
    return "| " + " | ".join(names) + " |\n|" + "---|" * len(names)


def table(
    title: str,
    label: str,
    settings: list[tuple[str, Policy]],
    data: InteractionData,
    split: Split,
    k: int,
    threads: int,
) -> None:
    print(f"\n#### {title}\n")
    print(header(label, k))
    for name, chosen in settings:
        report = evaluate(chosen, data, split, k=k, num_threads=threads)
        print("| " + " | ".join([name, *cells(report, k)]) + " |", flush=True)


def sweep(data: InteractionData, split: Split, k: int, threads: int) -> None:
    base = neutral()
    run = lambda title, label, rows: table(title, label, rows, data, split, k, threads)  # noqa: E731
    run("Neutral (16 factors, reg 10, alpha 2, pool 200)", "policy", [("neutral", base)])
    run(
        "Popularity penalty",
        "popularity_penalty",
        [(str(p), with_effects(base, popularity_penalty=p)) for p in (0.1, 0.2, 0.3, 0.5, 1.0)],
    )
    run(
        "Creator cap (items per director per list)",
        "creator_cap",
        [(str(c), with_effects(base, creator_cap=c)) for c in (1, 2, 3)],
    )
    run(
        "Long-tail quota (share of the 10 slots for long-tail directors)",
        "long_tail_quota",
        [(str(q), with_effects(base, long_tail_quota=q)) for q in (0.1, 0.2, 0.3, 0.5)],
    )
    run(
        "New-creator quota (new: first film at most 730 days before the latest training rating)",
        "new_creator_quota",
        [
            (str(q), with_effects(base, new_creator_quota=q, new_creator_days=730))
            for q in (0.1, 0.2, 0.3)
        ],
    )
    run(
        "Diversity (MMR over ALS item factors)",
        "diversity",
        [(str(w), with_effects(base, diversity=w)) for w in (0.1, 0.3, 0.5)],
    )
    run(
        "Freshness half-life (days; films are dated January 1 of their release year)",
        "half-life days",
        [(str(h), with_effects(base, freshness_half_life_days=h)) for h in (365, 1825, 3650, 7300)],
    )
    run(
        "Candidate pool size, alone and under a long-tail quota of 0.3 / a penalty of 0.3",
        "pool",
        [
            *((f"{p}", with_effects(base, pool=p)) for p in (50, 200, 500)),
            *(
                (f"{p}, quota 0.3", with_effects(base, pool=p, long_tail_quota=0.3))
                for p in (50, 200, 500)
            ),
            *(
                (f"{p}, penalty 0.3", with_effects(base, pool=p, popularity_penalty=0.3))
                for p in (50, 200, 500)
            ),
        ],
    )
    run(
        "Fair exposure vs neutral (docs/policies/*.json)",
        "policy",
        [("neutral (16 factors)", base), ("fair exposure (docs/policies)", fair())],
    )


def write_policies(folder: Path) -> None:
    """Write the neutral and fair-exposure policies as indented JSON documents."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, chosen in (("neutral.json", neutral()), ("fair-exposure.json", fair())):
        text = json.dumps(chosen.model_dump(mode="json"), indent=2) + "\n"
        (folder / name).write_text(text, encoding="utf-8")
        print(f"wrote {folder / name}")


def search(data: InteractionData, split: Split, k: int, threads: int) -> None:
    key = f"ndcg@{k}"
    reference = evaluate(neutral(), data, split, k=k, num_threads=threads)
    ndcg0 = reference["consumers"][key]
    share0 = reference["producers"]["long_tail_creator_share"]
    floor = (1.0 - MAX_LOSS) * ndcg0
    print(f"\n#### Search (neutral: nDCG@{k} {ndcg0:.4f}, long-tail share {share0:.4f}; ", end="")
    print(f"nDCG floor {floor:.4f}, target share {2 * share0:.4f})\n")
    results: list[tuple[str, Policy, dict[str, Any]]] = []
    grid = itertools.product(
        (16, 32, 64),
        (0.0, 0.1, 0.2, 0.3, 0.4, 0.5),
        (0.0, 0.1, 0.2, 0.3),
        (None, 1, 2),
        (50, 200, 500),
    )
    started = time.perf_counter()
    for factors, quota, penalty, cap, pool in grid:
        chosen = with_effects(
            neutral(factors),
            pool=pool,
            long_tail_quota=quota,
            popularity_penalty=penalty,
            creator_cap=cap,
        )
        label = f"f{factors} quota {quota} penalty {penalty} cap {cap} pool {pool}"
        results.append((label, chosen, evaluate(chosen, data, split, k=k, num_threads=threads)))
    print(f"<!-- {len(results)} policies in {time.perf_counter() - started:.0f} s -->")

    def score(item: tuple[str, Policy, dict[str, Any]]) -> tuple[float, float]:
        report = item[2]
        return report["consumers"][key], report["producers"]["long_tail_creator_share"]

    # Pareto frontier: no other policy has both higher nDCG and higher long-tail share.
    ordered = sorted(results, key=lambda item: (-score(item)[0], -score(item)[1]))
    frontier = []
    best_share = -1.0
    for item in ordered:
        if score(item)[1] > best_share:
            frontier.append(item)
            best_share = score(item)[1]
    print("\nPareto frontier (nDCG@k vs long-tail creator share), best nDCG first:\n")
    print(header("policy", k).replace(" |\n|", " | nDCG loss | share x |\n|---|---|", 1))
    for label, _, report in frontier:
        ndcg, share = score((label, _, report))
        loss = max(1.0 - ndcg / ndcg0, 0.0)
        print(
            "| "
            + " | ".join([label, *cells(report, k), f"{loss:.1%}", f"{share / share0:.2f}"])
            + " |"
        )
    allowed = [item for item in results if score(item)[0] >= floor]
    best = max(allowed, key=lambda item: (score(item)[1], score(item)[0]))
    doubled = [item for item in allowed if score(item)[1] >= 2 * share0]
    print(f"\nmax share at <= {MAX_LOSS:.0%} nDCG loss: {best[0]}")
    if doubled:
        cheapest = max(doubled, key=lambda item: (score(item)[0], score(item)[1]))
        print(f"cheapest policy with >= 2x the share: {cheapest[0]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--movielens", type=Path, default=ROOT.parent / "shared/data/ml-100k")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--threads", type=int, default=0, help="ALS threads (0: all cores)")
    parser.add_argument("--search", action="store_true", help="search the fair-exposure policy")
    parser.add_argument("--write-policies", type=Path, help="write the two policies, and stop")
    args = parser.parse_args()
    if args.write_policies is not None:
        write_policies(args.write_policies)
        return
    data = load_movielens(args.movielens)
    split = split_random(data, test_fraction=0.2, seed=args.seed)
    print(f"<!-- {platform.platform()}, {platform.processor() or 'cpu'}, ", end="")
    print(f"{len(os.sched_getaffinity(0))} cores, {time.strftime('%Y-%m-%d')} -->")
    if args.search:
        search(data, split, args.k, args.threads)
    else:
        sweep(data, split, args.k, args.threads)


if __name__ == "__main__":
    main()
