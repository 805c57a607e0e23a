"""Full feed recompute (database -> swapped feeds) against bare implicit on the same data.

Usage (the community must exist in the configured database, e.g. after import_movielens or
seed_demo)::

    DEBUG=true python bench/recompute.py SLUG [--repeat 3]

Each repeat times, in one process and alternating so both see the same machine state:

* ``ours``: ``feed_run_request`` + ``feed_run_execute`` as a worker runs them: read interactions,
  members and items from the database, build vocabularies and the matrix, fit ALS, rank unseen
  items for every member, write one feed row per member, swap the community's pointer.
* ``bare``: ``implicit.cpu.als.AlternatingLeastSquares(...).fit`` + ``recommend(N, all users,
  filter_already_liked_items=True)`` on a CSR matrix built beforehand from the same arrays
  (matrix building and all database work excluded).

Medians are reported with their ratio. Queue latency is not included (the task body is called
directly), so this measures the work, not the broker.
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
from django.conf import settings  # noqa: E402
from implicit.cpu.als import AlternatingLeastSquares  # noqa: E402
from scipy.sparse import csr_matrix  # noqa: E402
from threadpoolctl import threadpool_limits  # noqa: E402

from feeds.runs.inputs import _load_training_data  # noqa: E402
from feeds.runs.services import feed_run_execute, feed_run_request  # noqa: E402
from governance.models import Community  # noqa: E402
from governance.selectors import policy_of, policy_version_current  # noqa: E402


def bare_implicit(slug: str, n: int | None = None) -> float:
    """Seconds for bare implicit's fit + recommend of ``n`` items for every member (by default
    the feed length), under the community's current policy's model parameters."""
    community = Community.objects.get(slug=slug)
    data = _load_training_data(community)
    params = policy_of(policy_version_current(community=community)).model
    users, user_index = np.unique(data.member_ids, return_inverse=True)
    items, item_index = np.unique(data.item_ids, return_inverse=True)
    matrix = csr_matrix(
        (np.ones(len(user_index), dtype=np.float32), (user_index, item_index)),
        shape=(len(users), len(items)),
    )
    matrix.data[:] = 1.0  # binary, as the default policy
    del data  # at 20M interactions the id arrays are worth freeing before the fit
    started = time.perf_counter()
    with threadpool_limits(1, "blas"):
        model = AlternatingLeastSquares(
            factors=params.factors,
            regularization=params.regularization,
            alpha=params.alpha,
            iterations=params.iterations,
            random_state=params.seed,
        )
        model.fit(matrix, show_progress=False)
        model.recommend(
            np.arange(len(users)),
            matrix,
            N=n if n is not None else settings.COMMONFEED_FEED_LENGTH,
            filter_already_liked_items=True,
        )
    return time.perf_counter() - started


def ours(slug: str) -> tuple[float, dict[str, object]]:
    community = Community.objects.get(slug=slug)
    started = time.perf_counter()
    run = feed_run_request(community=community)
    # Every shard scored here, in this one process (bench/recompute_sharded.py uses workers).
    run = feed_run_execute(run_id=run.pk, shards_inline=True)
    elapsed = time.perf_counter() - started
    return elapsed, run.stats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("slug")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    bare_times: list[float] = []
    our_times: list[float] = []
    stats: dict[str, object] = {}
    for _ in range(args.repeat):
        bare_times.append(bare_implicit(args.slug))
        elapsed, stats = ours(args.slug)
        our_times.append(elapsed)
    bare, full = statistics.median(bare_times), statistics.median(our_times)
    print(f"community: {args.slug}  database: {settings.DATABASES['default']['ENGINE']}")
    print(
        f"members: {stats.get('members')}  items: {stats.get('n_items')}  "
        f"interactions: {stats.get('n_interactions')}  factors: {stats.get('factors')}"
    )
    for label, median, times in (
        ("bare implicit fit+recommend", bare, bare_times),
        ("our full recompute", full, our_times),
    ):
        print(f"{label:<28} median {median:.2f}s  runs {[round(t, 2) for t in times]}")
    print(
        "  last run: "
        + ", ".join(
            f"{k} {stats[k]}"
            for k in (
                "load_seconds",
                "fit_seconds",
                "prepare_seconds",
                "artifact_save_seconds",
                "score_seconds",
                "write_seconds",
            )
            if k in stats
        )
    )
    print(f"ratio ours/bare: {full / bare:.2f}x")


if __name__ == "__main__":
    main()
