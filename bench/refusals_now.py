"""Which items a policy refuses *now*, as a fold-in refresh asks: one SQL query against reading
every item's attributes as a run does, side by side on the same community.

Usage (a community seeded beforehand, e.g. ``seed_demo --community a100k --members 20000
--items 100000 --creators 5000 --interactions 400000``)::

    DEBUG=true DATABASE_URL=... python bench/refusals_now.py a100k [--repeat 5]

For a policy with one tag rule, and one with a tag, a creator, a provenance and an ``older_than``
rule: the time of ``feeds.foldin.services._refused_by_policy_now`` (the query a refresh runs) and of
``_load_item_attributes`` + ``ItemAttributes.refused_by`` (what a run does), their ratio, and
whether both refuse the same items.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

import django  # noqa: E402

django.setup()

from feeds.foldin.services import _refused_by_policy_now  # noqa: E402
from feeds.runs.inputs import _load_item_attributes  # noqa: E402
from governance.models import Community  # noqa: E402
from ranking.policy import Policy, policy_validate  # noqa: E402


def _timed(fn: Callable[[], np.ndarray], repeat: int) -> tuple[float, np.ndarray]:
    times, result = [], np.zeros(0, dtype=np.int64)
    for _ in range(repeat):
        started = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("slug")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    community = Community.objects.get(slug=args.slug)
    tag = community.items.exclude(tags=[]).values_list("tags", flat=True).first()[0]
    creator = community.creators.order_by("pk").values_list("external_id", flat=True).first()
    policies = {
        "one tag rule": [{"kind": "tag", "tag": tag, "reason": "r"}],
        "tag, creator, provenance, older_than": [
            {"kind": "tag", "tag": tag, "reason": "r"},
            {"kind": "creator", "creator": creator, "reason": "r"},
            {"kind": "provenance", "provenance": "ai_generated", "reason": "r"},
            {"kind": "older_than", "days": 400, "reason": "r"},
        ],
    }
    print(f"{community.items.count():,} items in {args.slug}; median of {args.repeat} runs")
    for name, refusals in policies.items():
        policy = policy_validate({"refusals": refusals})

        def by_query(p: Policy = policy) -> np.ndarray:
            return _refused_by_policy_now(community, p)

        query_s, refused = _timed(by_query, args.repeat)

        def by_attributes(p: Policy = policy) -> np.ndarray:
            attributes, _ = _load_item_attributes(community)
            return attributes.item_ids[attributes.refused_by(p.refusals)]

        attributes_s, reference = _timed(by_attributes, args.repeat)
        same = set(refused.tolist()) == set(reference.tolist())
        print(
            f"{name:40s} refused {len(refused):>7,}  query {query_s * 1000:7.1f} ms  "
            f"attributes {attributes_s * 1000:7.1f} ms  ratio {query_s / attributes_s:.3f}  "
            f"same items: {same}"
        )


if __name__ == "__main__":
    main()
