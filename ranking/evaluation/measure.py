"""Steps 3 and 4, **measure** and **report**: :func:`metrics_report`, :func:`evaluate` and
:func:`compare`."""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from typing import Any

import numpy as np

from ranking import metrics
from ranking.datasets import InteractionData
from ranking.evaluation.lists import (
    Recommendations,
    recommend,
)
from ranking.evaluation.splits import (
    Split,
    history_matrix,
    truth_matrix,
)
from ranking.policy import Policy
from ranking.report import CUTS, DEFAULT_DEPTH, Catalogue, feed_report


def _float(value: float) -> float | None:
    return None if not math.isfinite(value) else float(value)


def metrics_report(
    recommendations: Recommendations,
    data: InteractionData,
    split: Split,
    *,
    discount: metrics.Discount = "none",
    head_fraction: float = 0.2,
    new_creator_days: float = 730.0,
    depth: int = DEFAULT_DEPTH,
) -> dict[str, Any]:
    """Every metric of :mod:`ranking.metrics` for a set of lists, as a JSON-ready dict.

    Measured by :func:`ranking.report.feed_report`, the definitions the product's run metrics
    and impact preview use too.

    Parameters
    ----------
    recommendations : Recommendations
        From :func:`recommend` (or built by hand, e.g. from a bare :mod:`implicit` model).
    data : InteractionData
    split : Split
    discount : {"none", "log2"}, default "none"
        Exposure discount of the producer metrics in ``producers`` (see :mod:`ranking.metrics`);
        ``at_depth`` and ``whole_feed`` always hold both.
    head_fraction : float, default 0.2
        Share of creators (by training interactions) that are *not* long tail.
    new_creator_days : float, default 730
        A creator is *new* if their first item was published at most this many days before the
        latest training interaction.
    depth : int, default 10
        The visible depth of ``at_depth``.

    Returns
    -------
    dict
        ``{"consumers": {...}, "producers": {...}, "members": {...}, "at_depth": {...},
        "whole_feed": {...}}``. ``consumers`` and ``producers`` are the metrics over the whole
        lists, as before the visible depth existed (the producers' exposure discounted by
        ``discount``); ``at_depth`` and ``whole_feed`` are the two cuts of
        :meth:`ranking.report.FeedReport.result`. Consumer values are the means over members
        with a defined value (``NaN`` becomes ``None``); ``members`` counts evaluated members,
        those without held-out items (excluded from the consumer means) and those whose list
        is shorter than ``k``.
    """
    recs = recommendations.items
    k = int(recs.shape[1])
    member_ids = recommendations.member_ids
    truth = truth_matrix(data, split, member_ids)
    history = history_matrix(data, split, member_ids)

    train_members = np.unique(data.member_ids[split.train])
    all_history = history_matrix(data, split, train_members)
    popularity = np.asarray(all_history.sum(axis=0), dtype=np.float64).ravel()
    owner = data.item_creator
    creator_counts = metrics.creator_totals(popularity, owner, data.n_creators)
    latest = float(data.timestamps[split.train].max()) if split.train.any() else 0.0
    since = latest - new_creator_days * 86_400.0
    catalogue = Catalogue(
        item_creator=owner,
        n_creators=data.n_creators,
        creator_counts=creator_counts,
        head_fraction=head_fraction,
        new=metrics.new_creators(data.creator_first_published, since=since),
        item_provenance=data.item_provenance,
        item_popularity=popularity,
        n_members=max(train_members.size, 1),
        item_tags=data.item_tags,
    )
    measured = feed_report(recs, catalogue, truth=truth, history=history, depth=depth)
    whole = measured["whole_feed"]
    # The flat sections keep their names and meaning: the whole list, with ``discount``.
    suffix = "" if discount == "none" else "_weighted"
    consumers = {
        name: whole["consumers"].get(name)
        for name in (
            f"precision@{k}",
            f"recall@{k}",
            f"ndcg@{k}",
            "diversity_tags",
            "novelty_bits",
            "miscalibration_kl",
        )
    }
    producers = {
        "item_coverage": whole["producers"]["item_coverage"],
        "creator_coverage": whole["producers"]["creator_coverage"],
        **{
            name: whole["producers"][f"{name}{suffix}"]
            for name in (
                "item_gini",
                "creator_gini",
                "long_tail_creator_share",
                "new_creator_share",
                "ai_generated_share",
            )
        },
        "avg_popularity": whole["consumers"].get("avg_popularity"),
    }
    has_truth = truth.getnnz(axis=1) > 0
    return {
        "consumers": consumers,
        "producers": producers,
        "at_depth": measured["at_depth"],
        "whole_feed": whole,
        "members": {
            "evaluated": int(has_truth.sum()),
            "excluded_no_truth": int((~has_truth).sum()),
            "short_lists": int(np.count_nonzero((recs < 0).any(axis=1))),
            "empty_lists": int(np.count_nonzero((recs < 0).all(axis=1))) if k else len(recs),
        },
        "settings": {
            "discount": discount,
            "depth": depth,
            "attention": "log2: place p (0 = top) counts 1/log2(p + 2) in the *_weighted metrics",
            "head_fraction": head_fraction,
            "new_creator_days": new_creator_days,
            "new_creator_since": since,
            "calibration": "kl (nats, smoothing 0.01)",
            "diversity": "1 - cosine over genre tags",
            "popularity": "distinct training members per item",
        },
    }


def evaluate(
    policy: Policy,
    data: InteractionData,
    split: Split,
    *,
    k: int = 10,
    discount: metrics.Discount = "none",
    depth: int = DEFAULT_DEPTH,
    num_threads: int = 0,
    feed_options: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Train, recommend and measure one policy.

    Parameters
    ----------
    policy : Policy
        The ranking policy.
    data : InteractionData
    split : Split
        From :func:`split_random` or :func:`split_temporal`.
    k : int, default 10
        List length and cutoff of every @k metric.
    discount : {"none", "log2"}, default "none"
        Exposure discount of the producer metrics in ``producers``.
    depth : int, default 10
        The visible depth: ``at_depth`` measures the first ``depth`` places of each list,
        ``whole_feed`` all ``k``.
    num_threads : int, default 0
        ALS threads (``0``: all cores).
    feed_options : mapping, optional
        Passed on to :func:`recommend`.

    Returns
    -------
    dict
        JSON-ready: ``consumers`` and ``producers`` (metric name -> value, over the whole
        lists), ``at_depth`` and ``whole_feed`` (:func:`ranking.report.feed_report`'s two cuts,
        each with consumers and producers, places and position-weighted), ``members``
        (counts), ``params`` (policy, its SHA-256, k, split, data set sizes, metric settings)
        and ``timings`` (seconds).
    """
    run = recommend(policy, data, split, k=k, num_threads=num_threads, feed_options=feed_options)
    return _report(policy, run, data, split, k=k, discount=discount, depth=depth)


def _report(
    policy: Policy,
    run: Recommendations,
    data: InteractionData,
    split: Split,
    *,
    k: int,
    discount: metrics.Discount,
    depth: int,
) -> dict[str, Any]:
    started = time.perf_counter()
    measured = metrics_report(run, data, split, discount=discount, depth=depth)
    metric_seconds = time.perf_counter() - started
    settings = measured.pop("settings")
    return {
        "consumers": measured["consumers"],
        "producers": measured["producers"],
        "at_depth": measured["at_depth"],
        "whole_feed": measured["whole_feed"],
        "members": measured["members"],
        "params": {
            "policy": policy.model_dump(mode="json"),
            "policy_sha256": policy.sha256(),
            "k": k,
            "depth": depth,
            "split": split.describe(),
            "data": {
                "name": data.name,
                "n_interactions": data.n_interactions,
                "n_members": int(data.members.size),
                "n_items": data.n_items,
                "n_creators": data.n_creators,
            },
            "metrics": settings,
        },
        "timings": {
            "feeds_seconds": round(run.seconds, 4),
            "fit_seconds": run.metadata.get("fit_seconds"),
            "recommend_seconds": run.metadata.get("recommend_seconds"),
            "metrics_seconds": round(metric_seconds, 4),
        },
    }


def _deltas(a: dict[str, float | None], b: dict[str, float | None]) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    for name, value_a in a.items():
        value_b = b.get(name)
        out[name] = None if value_a is None or value_b is None else value_b - value_a
    return out


def compare(
    policy_a: Policy,
    policy_b: Policy,
    data: InteractionData,
    split: Split,
    *,
    k: int = 10,
    discount: metrics.Discount = "none",
    depth: int = DEFAULT_DEPTH,
    num_threads: int = 0,
    feed_options: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Evaluate two policies on the same split and report the differences.

    Parameters
    ----------
    policy_a, policy_b : Policy
        The baseline (``a``) and the candidate (``b``).
    data, split, k, discount, depth, num_threads, feed_options
        As in :func:`evaluate`; both policies get the same ``feed_options``.

    Returns
    -------
    dict
        ``{"a": report, "b": report, "deltas": {"consumers": ..., "producers": ...,
        "at_depth": {"consumers": ..., "producers": ...}, "whole_feed": {...}}, "churn": {"mean":
        float, "n_members": int}, "churn_at_depth": {...}}`` where a delta is ``b - a`` and
        churn is :func:`ranking.metrics.churn` between the two policies' lists for the same
        members (``churn_at_depth``: of their first ``depth`` places).
    """
    run_a, run_b = (
        recommend(policy, data, split, k=k, num_threads=num_threads, feed_options=feed_options)
        for policy in (policy_a, policy_b)
    )
    report_a = _report(policy_a, run_a, data, split, k=k, discount=discount, depth=depth)
    report_b = _report(policy_b, run_b, data, split, k=k, discount=discount, depth=depth)
    changed = metrics.churn(run_a.items, run_b.items)
    visible = metrics.churn(run_a.items[:, :depth], run_b.items[:, :depth])
    deltas: dict[str, Any] = {
        section: _deltas(report_a[section], report_b[section])
        for section in ("consumers", "producers")
    }
    for cut in CUTS:
        deltas[cut] = {
            side: _deltas(report_a[cut][side], report_b[cut][side])
            for side in ("consumers", "producers")
        }
    return {
        "a": report_a,
        "b": report_b,
        "deltas": deltas,
        "churn": {"mean": _float(changed.mean), "n_members": int(changed.per_member.size)},
        "churn_at_depth": {
            "mean": _float(visible.mean),
            "n_members": int(visible.per_member.size),
        },
    }
