"""Candidates + policy at scale against bare implicit ``recommend(N=200)`` on the same model.

Usage::

    python bench/ranking_scale.py [--members 1000000 --items 100000 --interactions 20000000]
                                  [--factors 64 --iterations 10 --chunk 50000 --seed 42]

A seeded synthetic set (Zipf item popularity, lognormal member activity, Zipf creators, 10 %
AI-generated items, 2 % of items refused by community rules) is factorised once with ALS. Then,
chunk by chunk and alternating so both see the same machine state:

* ``bare``: ``implicit`` ``recommend(users, user_items, N=200, filter_already_liked_items=True)``;
* ``ours``: ``ranking.als.ALSModel.recommend`` for the same users and N (padding normalised), then
  ``ranking.effects.apply_policy`` cutting the 200 candidates to a feed of 50 with the hard
  refusals, AI-generated items excluded, a creator cap of 2 and a popularity penalty of 0.5.

Reports the fit time, both totals, the ratio, members/s and peak memory (ru_maxrss).
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
from scipy.sparse import csr_matrix
from threadpoolctl import threadpool_limits

from ranking.als import ALSModel
from ranking.effects import Catalogue, apply_policy
from ranking.policy import PROVENANCE_CLASSES, Allow, Exclude, ModelParams, RankingParams


def synthetic(
    members: int, items: int, interactions: int, seed: int
) -> tuple[csr_matrix, Catalogue]:
    rng = np.random.default_rng(seed)
    popularity = 1.0 / np.arange(1, items + 1) ** 1.0
    popularity = rng.permutation(popularity / popularity.sum())
    activity = rng.lognormal(mean=0.0, sigma=1.0, size=members)
    per_member = np.maximum(1, np.round(activity / activity.sum() * interactions)).astype(np.int64)
    rows = np.repeat(np.arange(members, dtype=np.int32), per_member)
    cols = rng.choice(items, size=rows.size, p=popularity).astype(np.int32)
    matrix = csr_matrix(
        (np.ones(rows.size, dtype=np.float32), (rows, cols)), shape=(members, items)
    )
    matrix.sum_duplicates()
    matrix.data[:] = 1.0
    creators = max(1, items // 10)
    creator_weights = 1.0 / np.arange(1, creators + 1) ** 0.8
    creator = rng.choice(creators, size=items, p=creator_weights / creator_weights.sum())
    counts = np.bincount(matrix.indices, minlength=items).astype(np.float32)
    catalogue = Catalogue.build(
        items,
        creator=creator,
        provenance=rng.choice(4, items, p=[0.75, 0.1, 0.1, 0.05]).astype(np.int8),
        popularity=counts,
        refused=rng.random(items) < 0.02,
    )
    return matrix, catalogue


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--members", type=int, default=1_000_000)
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--interactions", type=int, default=20_000_000)
    parser.add_argument("--factors", type=int, default=64)
    parser.add_argument("--iterations", type=int, default=10)
    parser.add_argument("--pool", type=int, default=200)
    parser.add_argument("--n", type=int, default=50)
    parser.add_argument("--chunk", type=int, default=50_000)
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args()

    started = time.perf_counter()
    matrix, catalogue = synthetic(args.members, args.items, args.interactions, args.seed)
    generated = time.perf_counter() - started
    print(
        f"data: {matrix.shape[0]:,} members x {matrix.shape[1]:,} items, {matrix.nnz:,} distinct "
        f"interactions (generated in {generated:.1f}s)",
        flush=True,
    )

    model = ALSModel(
        ModelParams(factors=args.factors, iterations=args.iterations, regularization=1.0, alpha=2.0)
    )
    started = time.perf_counter()
    model.fit(matrix)
    fit_seconds = time.perf_counter() - started
    print(
        f"ALS fit ({args.factors} factors, {args.iterations} iterations): {fit_seconds:.1f}s",
        flush=True,
    )
    bare_model = model.implicit_model  # the very implicit model our wrapper holds

    provenance = {name: Allow(action="allow") for name in PROVENANCE_CLASSES}
    provenance["ai_generated"] = Exclude(action="exclude")
    params = RankingParams(creator_cap=2, popularity_penalty=0.5, provenance=provenance)

    bare_seconds = ours_seconds = 0.0
    short = 0
    with threadpool_limits(1, "blas"):
        for start in range(0, args.members, args.chunk):
            rows = np.arange(start, min(start + args.chunk, args.members))
            t = time.perf_counter()
            bare_model.recommend(rows, matrix[rows], N=args.pool, filter_already_liked_items=True)
            bare_seconds += time.perf_counter() - t

            t = time.perf_counter()
            items, scores = model.recommend(rows, matrix, args.pool)
            feeds = apply_policy(items, scores, catalogue=catalogue, params=params, n=args.n)
            ours_seconds += time.perf_counter() - t
            short += int(np.count_nonzero(feeds.items[:, -1] < 0))

    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        f"bare implicit recommend(N={args.pool}): {bare_seconds:.1f}s "
        f"({args.members / bare_seconds:,.0f} members/s)"
    )
    print(
        f"ours: candidates + policy to {args.n}: {ours_seconds:.1f}s "
        f"({args.members / ours_seconds:,.0f} members/s); feeds shorter than {args.n}: {short}"
    )
    print(f"ratio ours/bare: {ours_seconds / bare_seconds:.2f}x")
    print(f"peak memory: {peak_mib:,.0f} MiB")


if __name__ == "__main__":
    main()
