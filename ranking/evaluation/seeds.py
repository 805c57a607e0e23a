"""Repeated over seeds: :func:`evaluate_seeds`, :func:`compare_seeds` and :func:`aggregate` (each
figure's mean and interval)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from scipy import stats

from ranking import metrics
from ranking.datasets import InteractionData
from ranking.evaluation.measure import _float, compare, evaluate
from ranking.evaluation.splits import (
    SplitMethod,
    SplitPart,
    make_split,
)
from ranking.policy import Policy
from ranking.report import CUTS, DEFAULT_DEPTH


def _seeded(policy: Policy, seed: int) -> Policy:
    document = policy.model_dump(mode="json")
    document["model"]["seed"] = seed
    return Policy.model_validate(document)


def _ratios(a: Any, b: Any) -> Any:
    """``b / a`` leaf by leaf (``None`` where either is missing or ``a`` is 0)."""
    if isinstance(a, dict):
        return {
            name: _ratios(value, b.get(name) if isinstance(b, dict) else None)
            for name, value in a.items()
        }
    if isinstance(a, bool) or not isinstance(a, int | float) or not isinstance(b, int | float):
        return None
    return None if a == 0 else _float(b / a)


def _interval(values: Sequence[Any], confidence: float) -> dict[str, Any]:
    defined = np.asarray([v for v in values if v is not None], dtype=np.float64)
    mean = float(defined.mean()) if defined.size else None
    low = high = None
    if defined.size >= 2 and mean is not None:
        half = float(
            stats.t.ppf(0.5 + confidence / 2, defined.size - 1)
            * defined.std(ddof=1)
            / math.sqrt(defined.size)
        )
        low, high = mean - half, mean + half
    return {"mean": mean, "low": low, "high": high, "values": list(values)}


def aggregate(reports: Sequence[dict[str, Any]], *, confidence: float = 0.95) -> dict[str, Any]:
    """Mean and t-interval, seed by seed, of every figure in reports of the same shape.

    Parameters
    ----------
    reports : sequence of dict
        Reports of :func:`evaluate` or :func:`compare` (or any JSON-ready trees of the same
        shape), one per seed.
    confidence : float, default 0.95
        Coverage of the interval.

    Returns
    -------
    dict
        The first report's shape, each number (``bool`` excepted) replaced by ``{"mean": ...,
        "low": ..., "high": ..., "values": [...]}``: the mean over the reports where it is
        defined and the Student t interval ``mean ± t(n - 1) · s / √n`` over those ``n``
        values (``low``/``high`` ``None`` when ``n < 2``), ``values`` the per-report values in
        order. ``params`` sections are not figures: the first report's are kept. The interval
        is over seeds (runs), not over members: it says how much the figure moves with the
        seed, the noise a one-seed comparison would hide.
    """
    if not reports:
        raise ValueError("aggregate needs at least one report")

    def walk(nodes: Sequence[Any]) -> Any:
        first = nodes[0]
        if isinstance(first, dict):
            return {
                name: first[name] if name == "params" else walk([node.get(name) for node in nodes])
                for name in first
            }
        if isinstance(first, bool) or not isinstance(first, int | float | None):
            return first
        if all(node is None for node in nodes):
            return None
        return _interval(nodes, confidence)

    result: dict[str, Any] = walk(list(reports))
    return result


def _seed_params(result: dict[str, Any], seeds: Sequence[int], confidence: float) -> None:
    result["seeds"] = {
        "seeds": [int(seed) for seed in seeds],
        "interval": f"{confidence:.0%} Student t interval over seeds",
        "varies": "ALS initialisation (model.seed), and the holdout of a random split",
    }


def evaluate_seeds(
    policy: Policy,
    data: InteractionData,
    *,
    seeds: Sequence[int],
    method: SplitMethod = "random",
    test_fraction: float = 0.2,
    part: SplitPart = "test",
    k: int = 10,
    discount: metrics.Discount = "none",
    depth: int = DEFAULT_DEPTH,
    num_threads: int = 0,
    feed_options: Mapping[str, Any] | None = None,
    confidence: float = 0.95,
) -> dict[str, Any]:
    """:func:`evaluate` once per seed, aggregated by :func:`aggregate`.

    Seed ``s`` seeds the policy's model (``model.seed = s``) and, for a random split, the
    holdout (``make_split(data, method, seed=s, ...)``); a temporal split is the same for every
    seed, so its interval is the model's noise alone.

    Parameters
    ----------
    policy : Policy
    data : InteractionData
    seeds : sequence of int
        One run per seed.
    method, test_fraction, part
        As in :func:`make_split`.
    k, discount, depth, num_threads, feed_options
        As in :func:`evaluate`.
    confidence : float, default 0.95

    Returns
    -------
    dict
        :func:`aggregate` of the per-seed reports, with ``seeds`` (the seeds and what the
        interval is).
    """
    reports = [
        evaluate(
            _seeded(policy, seed),
            data,
            make_split(data, method, test_fraction=test_fraction, seed=seed, part=part),
            k=k,
            discount=discount,
            depth=depth,
            num_threads=num_threads,
            feed_options=feed_options,
        )
        for seed in seeds
    ]
    result = aggregate(reports, confidence=confidence)
    _seed_params(result, seeds, confidence)
    return result


def compare_seeds(
    policy_a: Policy,
    policy_b: Policy,
    data: InteractionData,
    *,
    seeds: Sequence[int],
    method: SplitMethod = "random",
    test_fraction: float = 0.2,
    part: SplitPart = "test",
    k: int = 10,
    discount: metrics.Discount = "none",
    depth: int = DEFAULT_DEPTH,
    num_threads: int = 0,
    feed_options: Mapping[str, Any] | None = None,
    confidence: float = 0.95,
) -> dict[str, Any]:
    """:func:`compare` once per seed, aggregated by :func:`aggregate`, with ratios.

    Both policies get the same seed and split in each run (see :func:`evaluate_seeds`).
    Besides :func:`compare`'s sections, each run gets ``ratios``: ``b / a`` of every figure of
    the ``at_depth`` and ``whole_feed`` cuts (e.g. ``ratios.at_depth.consumers["ndcg@10"]``:
    0.95 is a 5 % loss), so a claim such as "twice the share at 5 % loss" has an interval too.

    Parameters
    ----------
    policy_a, policy_b : Policy
        The baseline and the candidate.
    data, seeds, method, test_fraction, part, k, discount, depth, num_threads, feed_options,
    confidence
        As in :func:`evaluate_seeds`.

    Returns
    -------
    dict
        :func:`aggregate` of the per-seed comparisons, with ``ratios`` and ``seeds``.
    """
    reports = []
    for seed in seeds:
        report = compare(
            _seeded(policy_a, seed),
            _seeded(policy_b, seed),
            data,
            make_split(data, method, test_fraction=test_fraction, seed=seed, part=part),
            k=k,
            discount=discount,
            depth=depth,
            num_threads=num_threads,
            feed_options=feed_options,
        )
        report["ratios"] = {cut: _ratios(report["a"][cut], report["b"][cut]) for cut in CUTS}
        reports.append(report)
    result = aggregate(reports, confidence=confidence)
    _seed_params(result, seeds, confidence)
    return result
