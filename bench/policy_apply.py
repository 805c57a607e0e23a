"""Re-ranking throughput: ``ranking.effects.apply_policy`` against a naive per-member loop.

Usage::

    python bench/policy_apply.py [--members 100000] [--pool 200] [--n 50] [--naive-members 2000]

Synthetic input (seeded): ``--members`` members, each with a candidate pool of ``--pool`` distinct
items (sorted by score, as ALS returns them) out of 20,000 items by 2,000 creators; 2 % of the items
are refused for everyone; each member has blocked (muted) 20 random items. The policy: creator cap
2, popularity penalty 0.5, AI-generated items excluded. Both implementations cut every pool to a
feed of ``--n`` items; the naive one loops over members in Python (sorting each member's pool and
walking it with a per-creator counter, as a hand-written re-ranker would) and is timed on the
first ``--naive-members`` members. Their feeds are checked to be identical on those members.

Everything runs on one core (BLAS limited to one thread), so members/s is per core.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
from scipy.sparse import csr_matrix
from threadpoolctl import threadpool_limits

from ranking.effects import Catalogue, apply_policy
from ranking.policy import PROVENANCE_CLASSES, Allow, Exclude, RankingParams

N_ITEMS = 20_000
N_CREATORS = 2_000


def synthetic(members: int, pool: int, seed: int = 7) -> dict[str, object]:
    rng = np.random.default_rng(seed)
    catalogue = Catalogue.build(
        N_ITEMS,
        creator=rng.integers(0, N_CREATORS, N_ITEMS),
        provenance=rng.choice(4, N_ITEMS, p=[0.7, 0.1, 0.1, 0.1]).astype(np.int8),
        popularity=rng.zipf(1.5, N_ITEMS).clip(max=100_000).astype(np.float32),
        refused=rng.random(N_ITEMS) < 0.02,
    )
    # Distinct items per member (as ALS returns them): increasing steps, then shuffled.
    steps = rng.integers(1, N_ITEMS // pool + 1, size=(members, pool))
    items = rng.permuted(
        (rng.integers(0, N_ITEMS, (members, 1)) + steps.cumsum(axis=1)) % N_ITEMS, axis=1
    )
    scores = -np.sort(-rng.random((members, pool), dtype=np.float32), axis=1)
    blocked_rows = np.repeat(np.arange(members), 20)
    blocked_cols = rng.integers(0, N_ITEMS, members * 20)
    blocked = csr_matrix(
        (np.ones(blocked_rows.size, dtype=np.float32), (blocked_rows, blocked_cols)),
        shape=(members, N_ITEMS),
    )
    blocked.sum_duplicates()
    return {"catalogue": catalogue, "items": items, "scores": scores, "blocked": blocked}


def naive(
    items: np.ndarray,
    scores: np.ndarray,
    catalogue: Catalogue,
    blocked: csr_matrix,
    params: RankingParams,
    n: int,
) -> np.ndarray:
    """Per-member Python loop with the same semantics as ``apply_policy`` for this policy."""
    excluded = {
        code
        for code, name in enumerate(PROVENANCE_CLASSES)
        if isinstance(params.provenance[name], Exclude)
    }
    log_pop = np.log1p(catalogue.popularity.astype(np.float64))
    peak = float(log_pop.max())
    cap = params.creator_cap
    out = np.full((items.shape[0], n), -1, dtype=np.int64)
    for row in range(items.shape[0]):
        mine = set(blocked.indices[blocked.indptr[row] : blocked.indptr[row + 1]].tolist())
        kept: list[tuple[int, float]] = []
        taken: set[int] = set()
        for item, score in zip(items[row].tolist(), scores[row].tolist(), strict=True):
            if item in taken or item in mine or catalogue.refused[item]:
                continue
            if int(catalogue.provenance[item]) in excluded:
                continue
            taken.add(item)
            kept.append((item, score))
        if not kept:
            continue
        low = min(s for _, s in kept)
        high = max(s for _, s in kept)
        spread = high - low
        ranked = []
        for position, (item, score) in enumerate(kept):
            unit = (score - low) / spread if spread > 0 else 1.0
            adjusted = unit - params.popularity_penalty * log_pop[item] / peak
            ranked.append((-np.float32(adjusted), position, item))
        ranked.sort()
        per_creator: dict[int, int] = {}
        k = 0
        for _, _, item in ranked:
            creator = int(catalogue.creator[item])
            if cap is not None and creator >= 0 and per_creator.get(creator, 0) >= cap:
                continue
            per_creator[creator] = per_creator.get(creator, 0) + 1
            out[row, k] = item
            k += 1
            if k == n:
                break
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--members", type=int, default=100_000)
    parser.add_argument("--pool", type=int, default=200)
    parser.add_argument("--n", type=int, default=50)
    parser.add_argument("--naive-members", type=int, default=2_000)
    parser.add_argument("--repeat", type=int, default=3, help="best of this many runs")
    args = parser.parse_args()

    data = synthetic(args.members, args.pool)
    catalogue = data["catalogue"]
    items, scores, blocked = data["items"], data["scores"], data["blocked"]
    assert isinstance(catalogue, Catalogue)
    assert isinstance(items, np.ndarray) and isinstance(scores, np.ndarray)
    assert isinstance(blocked, csr_matrix)
    provenance = {name: Allow(action="allow") for name in PROVENANCE_CLASSES}
    provenance["ai_generated"] = Exclude(action="exclude")
    params = RankingParams(creator_cap=2, popularity_penalty=0.5, provenance=provenance)

    k = min(args.naive_members, args.members)
    vectorised = looped = math.inf
    with threadpool_limits(limits=1):
        for _ in range(args.repeat):
            started = time.perf_counter()
            feeds = apply_policy(
                items,
                scores,
                catalogue=catalogue,
                params=params,
                n=args.n,
                member_blocked=blocked,
            )
            vectorised = min(vectorised, time.perf_counter() - started)

            started = time.perf_counter()
            reference = naive(items[:k], scores[:k], catalogue, blocked[:k], params, args.n)
            looped = min(looped, time.perf_counter() - started)

    same = bool(np.array_equal(reference, feeds.items[:k]))
    fast_rate = args.members / vectorised
    slow_rate = k / looped
    print(f"members={args.members} pool={args.pool} n={args.n} (one core, best of {args.repeat})")
    print(f"apply_policy : {vectorised:8.2f} s  {fast_rate:12,.0f} members/s")
    print(f"naive loop   : {looped:8.2f} s  {slow_rate:12,.0f} members/s  (first {k} members)")
    print(f"ratio        : {fast_rate / slow_rate:8.1f}x   identical feeds: {same}")
    filled = feeds.items >= 0
    print(f"mean feed length {filled.sum(axis=1).mean():.1f} / {args.n}")
    if not same or not math.isfinite(fast_rate):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
