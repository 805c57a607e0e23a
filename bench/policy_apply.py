"""Re-ranking throughput: ``ranking.effects.apply_policy`` against a naive per-member loop.

Usage::

    python bench/policy_apply.py [--members 100000] [--pool 200] [--n 50] [--naive-members 2000]
        [--compare-with FILE] [--policy FILE]

Synthetic input (seeded): ``--members`` members, each with a candidate pool of ``--pool`` distinct
items (sorted by score, as ALS returns them) out of 20,000 items by 2,000 creators; 2 % of the items
are refused for everyone; each member has blocked (muted) 20 random items. The policy: creator cap
2, popularity penalty 0.5, AI-generated items excluded. Both implementations cut every pool to a
feed of ``--n`` items; the naive one loops over members in Python (sorting each member's pool and
walking it with a per-creator counter, as a hand-written re-ranker would) and is timed on the
first ``--naive-members`` members. Their feeds are checked to be identical on those members.

``--compare-with FILE`` also times another version of ``ranking/effects.py``, from before it
became the ``ranking/effects/`` package (a single file: e.g. ``git show
a91c3aa:ranking/effects.py > /tmp/effects_before.py``; a packaged version imports its own
submodules by absolute name, so time it from its own checkout instead) in the same run,
interleaved with the current one, and checks that both give identical feeds (items, scores, base
scores and reasons) on every member.

``--policy FILE`` applies the ``ranking`` section of a policy document instead (e.g.
``docs/policies/fair-exposure.json``, whose long-tail quota takes the greedy selection path). The
naive loop implements refusals, exclusions, the popularity penalty, the creator cap and the
quotas (checking every run of entries that ends at each position, as the policy's wording
says); for a policy with other levers it is left out.

Everything runs on one core (BLAS limited to one thread), so members/s is per core. Each figure is
reported both per wall-clock second and per second of the process's CPU time: on a shared machine
the wall clock also counts time spent waiting for a core.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
from scipy.sparse import csr_matrix
from threadpoolctl import threadpool_limits

from ranking.effects import Catalogue, RankedFeeds, apply_policy, quota_required
from ranking.policy import PROVENANCE_CLASSES, Allow, Exclude, RankingParams, policy_validate

N_ITEMS = 20_000
N_CREATORS = 2_000


def synthetic(members: int, pool: int, seed: int = 7) -> dict[str, object]:
    rng = np.random.default_rng(seed)
    creator = rng.integers(0, N_CREATORS, N_ITEMS)
    # A tenth of the creators are new (items under 80 days old); its own generator, so the draws
    # below are those of earlier versions of this benchmark.
    ages = np.random.default_rng(seed + 1)
    new = ages.random(N_CREATORS) < 0.1
    age_days = np.where(
        new[creator], ages.uniform(0, 80, N_ITEMS), ages.uniform(100, 2000, N_ITEMS)
    )
    catalogue = Catalogue.build(
        N_ITEMS,
        creator=creator,
        age_days=age_days,
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


def supports(params: RankingParams) -> bool:
    """Whether :func:`naive` implements every lever ``params`` uses."""
    others = (
        params.diversity > 0
        or params.freshness_half_life_days is not None
        or any(not isinstance(t, Allow | Exclude) for t in params.provenance.values())
    )
    return not others


def window_due(flags: list[bool], quota: float, position: int) -> bool:
    """Whether a run of entries ending at ``position`` breaks the quota unless it is of the group:
    every window is counted, as the policy's wording says (any j entries in a row hold
    floor(quota * j))."""
    if quota <= 0:
        return False
    return any(
        sum(flags[position - j + 1 : position]) < quota_required(quota, j)
        for j in range(1, position + 2)
    )


def naive(
    items: np.ndarray,
    scores: np.ndarray,
    catalogue: Catalogue,
    blocked: csr_matrix,
    params: RankingParams,
    n: int,
) -> np.ndarray:
    """Per-member Python loop with the same semantics as ``apply_policy`` for the levers that
    :func:`supports` accepts: refusals, exclusions, popularity penalty, creator cap and quotas."""
    excluded = {
        code
        for code, name in enumerate(PROVENANCE_CLASSES)
        if isinstance(params.provenance[name], Exclude)
    }
    log_pop = np.log1p(catalogue.popularity.astype(np.float64))
    peak = float(log_pop.max())
    cap = params.creator_cap
    with np.errstate(invalid="ignore"):
        new_creator = catalogue.creator_first_age_days < params.new_creator_days
    q_lt, q_new = params.long_tail_quota, params.new_creator_quota

    def long_tail(item: int) -> bool:
        creator = int(catalogue.creator[item])
        return creator >= 0 and bool(catalogue.creator_long_tail[creator])

    def new(item: int) -> bool:
        creator = int(catalogue.creator[item])
        return creator >= 0 and bool(new_creator[creator])

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
            if params.popularity_penalty > 0:
                unit = (score - low) / spread if spread > 0 else 1.0
                adjusted = unit - params.popularity_penalty * log_pop[item] / peak
            else:
                adjusted = score
            ranked.append((-np.float32(adjusted), position, item))
        ranked.sort()
        left = [item for _, _, item in ranked]
        per_creator: dict[int, int] = {}
        lt_flags: list[bool] = []
        new_flags: list[bool] = []
        for k in range(n):
            open_ = [
                item
                for item in left
                if cap is None
                or catalogue.creator[item] < 0
                or per_creator.get(int(catalogue.creator[item]), 0) < cap
            ]
            if not open_:
                break
            due_lt, due_new = window_due(lt_flags, q_lt, k), window_due(new_flags, q_new, k)
            both_next = (
                q_lt > 0
                and q_new > 0
                and window_due([*lt_flags, False], q_lt, k + 1)
                and window_due([*new_flags, False], q_new, k + 1)
            )
            choice = open_
            if due_lt or due_new:
                every = [
                    i for i in open_ if (long_tail(i) or not due_lt) and (new(i) or not due_new)
                ]
                some = [i for i in open_ if (due_lt and long_tail(i)) or (due_new and new(i))]
                choice = every or some or open_
            elif both_next:
                choice = [i for i in open_ if long_tail(i) or new(i)] or open_
            item = choice[0]
            left.remove(item)
            creator = int(catalogue.creator[item])
            per_creator[creator] = per_creator.get(creator, 0) + 1
            lt_flags.append(long_tail(item))
            new_flags.append(new(item))
            out[row, k] = item
    return out


def load_apply_policy(path: str) -> Callable[..., Any]:
    """``apply_policy`` from another copy of the single-file ``ranking/effects.py`` (before it
    became a package), imported under its own name."""
    spec = importlib.util.spec_from_file_location("effects_compared", path)
    if spec is None or spec.loader is None:
        raise SystemExit(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while it is executing
    spec.loader.exec_module(module)
    function: Callable[..., Any] = module.apply_policy
    return function


@dataclass
class Timing:
    """Best (smallest) wall-clock and CPU time seen for one implementation."""

    wall: float = math.inf
    cpu: float = math.inf

    def rates(self, members: int) -> tuple[float, float]:
        return members / self.wall, members / self.cpu


def timed(best: dict[str, Timing], name: str, run: Callable[[], Any]) -> Any:
    """Run ``run`` once, keeping the best wall-clock and process CPU time under ``name``.

    CPU time (``time.process_time``) leaves out the time the process waited for a core, so on a
    shared machine it is the steadier per-core figure; both are reported.
    """
    wall, cpu = time.perf_counter(), time.process_time()
    result = run()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    timing = best.setdefault(name, Timing())
    timing.wall, timing.cpu = min(timing.wall, wall), min(timing.cpu, cpu)
    return result


def identical(left: RankedFeeds, right: Any) -> bool:
    return all(
        np.array_equal(getattr(left, field), getattr(right, field))
        for field in ("items", "scores", "base_scores", "reasons")
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--members", type=int, default=100_000)
    parser.add_argument("--pool", type=int, default=200)
    parser.add_argument("--n", type=int, default=50)
    parser.add_argument("--naive-members", type=int, default=2_000)
    parser.add_argument("--repeat", type=int, default=3, help="best of this many runs")
    parser.add_argument(
        "--compare-with",
        metavar="FILE",
        help="a single-file ranking/effects.py (before the package) to time side by side",
    )
    parser.add_argument(
        "--policy", metavar="FILE", help="a policy document whose ranking section to apply"
    )
    parser.add_argument(
        "--allow-different",
        action="store_true",
        help="time --compare-with even where it ranks differently (a change of semantics)",
    )
    args = parser.parse_args()
    other = load_apply_policy(args.compare_with) if args.compare_with else None

    data = synthetic(args.members, args.pool)
    catalogue = data["catalogue"]
    items, scores, blocked = data["items"], data["scores"], data["blocked"]
    assert isinstance(catalogue, Catalogue)
    assert isinstance(items, np.ndarray) and isinstance(scores, np.ndarray)
    assert isinstance(blocked, csr_matrix)
    provenance = {name: Allow(action="allow") for name in PROVENANCE_CLASSES}
    provenance["ai_generated"] = Exclude(action="exclude")
    params = RankingParams(creator_cap=2, popularity_penalty=0.5, provenance=provenance)
    if args.policy:
        params = policy_validate(json.loads(Path(args.policy).read_text())).ranking

    k = min(args.naive_members, args.members)
    arguments: dict[str, Any] = {
        "catalogue": catalogue,
        "params": params,
        "n": args.n,
        "member_blocked": blocked,
    }
    best: dict[str, Timing] = {}
    same_as_other = True
    load_before = os.getloadavg()[0]
    with threadpool_limits(limits=1):
        for _ in range(args.repeat):
            feeds = timed(best, "apply_policy", lambda: apply_policy(items, scores, **arguments))
            if other is not None:
                theirs = timed(best, "compared", lambda: other(items, scores, **arguments))
                same_as_other = same_as_other and identical(feeds, theirs)
                del theirs
            if supports(params):
                reference = timed(
                    best,
                    "naive loop",
                    lambda: naive(items[:k], scores[:k], catalogue, blocked[:k], params, args.n),
                )

    same = not supports(params) or bool(np.array_equal(reference, feeds.items[:k]))
    counts = {"apply_policy": args.members, "compared": args.members, "naive loop": k}
    rates = {name: timing.rates(counts[name]) for name, timing in best.items()}
    print(f"members={args.members} pool={args.pool} n={args.n} (one core, best of {args.repeat})")
    print(f"ranking: {params.model_dump_json(exclude={'provenance'})}")
    print(f"load average: {load_before:.2f} at start, {os.getloadavg()[0]:.2f} at end")
    print(f"{'':14}{'wall s':>8}{'members/s':>12}{'CPU s':>8}{'members/CPU s':>15}")
    for name, timing in best.items():
        wall_rate, cpu_rate = rates[name]
        print(f"{name:14}{timing.wall:8.2f}{wall_rate:12,.0f}{timing.cpu:8.2f}{cpu_rate:15,.0f}")
    naive_wall, naive_cpu = rates.get("naive loop", (math.nan, math.nan))
    for name in ("apply_policy", "compared"):
        if name in rates and "naive loop" in rates:
            wall_rate, cpu_rate = rates[name]
            print(
                f"{name} / naive loop: {wall_rate / naive_wall:.1f}x wall, "
                f"{cpu_rate / naive_cpu:.1f}x CPU"
            )
    if other is not None:
        wall_rate, cpu_rate = rates["apply_policy"]
        other_wall, other_cpu = rates["compared"]
        print(
            f"apply_policy / compared ({args.compare_with}): {wall_rate / other_wall:.2f}x wall, "
            f"{cpu_rate / other_cpu:.2f}x CPU; identical feeds: {same_as_other}"
        )
    if supports(params):
        print(f"naive loop identical feeds (first {k} members): {same}")
    filled = feeds.items >= 0
    print(f"mean feed length {filled.sum(axis=1).mean():.1f} / {args.n}")
    if not same or not (same_as_other or args.allow_different):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
