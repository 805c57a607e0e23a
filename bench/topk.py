"""Candidate top-k: implicit's brute-force top-k against ``ALSModel.recommend`` (norm-bounded).

Usage::

    DEBUG=true OPENBLAS_NUM_THREADS=1 python bench/topk.py [--members 200000] [--items 100000]
        [--per-member 20] [--slice 20000] [--k 200] [--repeat 3]

Draws a community with the project's own generator (``seed_demo``'s, seeded, no database),
fits ALS under the default policy, then ranks the same ``--slice`` members, alternating, on one
thread each:

* ``implicit``: ``implicit.cpu.topk.topk`` over every item, seen items filtered; this is what
  ``recommend(filter_already_liked_items=True)`` runs.
* ``ours``: ``ALSModel.recommend``, which scores items in decreasing order of factor norm and
  stops a member once no unscored item can enter the top ``k``; implicit ranks the members it
  leaves.

Both must return the same items and scores in the same order, up to float32 rounding (see
docs/pipeline.md); the run reports how close they are and stops if they differ beyond that.
Reports the medians, their ratio, the share of members finished before the last block and the
share of member x item products computed.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

import django

django.setup()

import numpy as np  # noqa: E402
from implicit.cpu.topk import topk  # noqa: E402
from scipy.sparse import csr_matrix  # noqa: E402
from threadpoolctl import threadpool_limits  # noqa: E402

import ranking.als as als  # noqa: E402
from feeds.importers.synthetic import SyntheticSpec, synthetic_generate  # noqa: E402
from ranking import bounded_topk  # noqa: E402
from ranking.policy import ModelParams  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--members", type=int, default=200_000)
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--per-member", type=int, default=20)
    parser.add_argument("--slice", type=int, default=20_000)
    parser.add_argument("--k", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    spec = SyntheticSpec(
        members=args.members,
        items=args.items,
        creators=max(1, args.items // 10),
        interactions=args.members * args.per_member,
    )
    _, drawn = synthetic_generate(spec=spec)
    matrix = csr_matrix(
        (np.ones(drawn.member.size, dtype=np.float32), (drawn.member, drawn.item)),
        shape=(args.members, args.items),
    )
    matrix.sum_duplicates()
    matrix.data[:] = 1.0
    started = time.perf_counter()
    model = als.ALSModel(ModelParams()).fit(matrix)
    print(
        f"{args.members:,} members x {args.items:,} items, {matrix.nnz:,} pairs; "
        f"fit {time.perf_counter() - started:.1f} s",
        flush=True,
    )

    # Members with interactions, as the pipeline scores them (the others get the fallback).
    rows = np.flatnonzero(np.diff(matrix.indptr))[: args.slice]
    seen = matrix[rows]
    factors = np.ascontiguousarray(model.user_factors[rows])
    times: dict[str, list[float]] = {"implicit": [], "ours": []}
    with threadpool_limits(1, "blas"):
        for _ in range(args.repeat):
            started = time.perf_counter()
            ids, scores = topk(
                model.item_factors,
                factors,
                args.k,
                filter_query_items=bounded_topk.SeenRows(seen),
                num_threads=1,
            )
            times["implicit"].append(time.perf_counter() - started)
            started = time.perf_counter()
            model._norm_cache = None  # count building the norm order, once per model
            ours_ids, ours_scores = model.recommend(rows, matrix, args.k)
            times["ours"].append(time.perf_counter() - started)
    # Bit for bit with OpenBLAS's SkylakeX kernels; its Haswell ones (and others) round some dot
    # products one unit in the last place differently by the shape of the product, so items
    # that close can swap (docs/pipeline.md). Anything beyond that stops the run.
    valid = scores > bounded_topk.FILTERED_SCORE
    same_items = float(np.mean(np.where(valid, ids, -1) == ours_ids))
    largest = float(np.abs(np.where(valid, scores, 0) - np.where(valid, ours_scores, 0)).max())
    scale = float(np.abs(np.where(valid, scores, 0)).max())
    if same_items < 0.99 or largest > 1e-5 * scale:
        raise SystemExit(f"ours and implicit differ: {same_items:.4%} same, {largest:.2e} apart")

    stats: dict[str, int] = {}
    with threadpool_limits(1, "blas"):
        _, _, done = bounded_topk.bounded_top_k(
            model._norm_order(None), factors, seen, args.k, stats=stats
        )
    products = stats["products"] / (rows.size * args.items)

    implicit_s = statistics.median(times["implicit"])
    ours_s = statistics.median(times["ours"])
    print(f"implicit top-{args.k} of {rows.size:,} members: {implicit_s:.2f} s")
    print(f"ours:                              {ours_s:.2f} s")
    print(f"same item at {same_items:.4%} of ranks; largest score difference {largest:.1e}")
    print(f"ratio ours/implicit: {ours_s / implicit_s:.2f}x")
    print(
        f"members finished by the bound: {done.mean():.1%}; products computed: "
        f"{products:.1%} of implicit's"
    )


if __name__ == "__main__":
    main()
