"""Command line: evaluate a ranking policy (or compare two) offline on MovieLens.

Usage::

    python -m ranking.evaluate --movielens ../shared/data/ml-100k --policy policy.json
    python -m ranking.evaluate --movielens DIR --policy A.json --compare B.json \\
        [--split random|temporal] [--part test|validation] [--seed 42] [--seeds N] \\
        [--test-fraction 0.2] [--k 50] [--depth 10] [--discount none|log2] [--format json|table]

``--k`` is the feed length (50, as the product serves) and ``--depth`` the visible depth (10, as
apps show): every metric is reported over the first ``depth`` places (``at_depth``) and over the
whole feed (``whole_feed``), counting places and position-weighted exposure
(:mod:`ranking.report`).

``--split temporal`` holds out each member's latest interactions
(:func:`ranking.evaluation.split_temporal`); ``--part validation`` measures on the validation
part of the split's training part instead of its test part
(:func:`ranking.evaluation.split_validation`), for choosing a policy without touching the figures
it will be reported with. ``--seeds N`` runs ``N`` times, with seeds ``seed, seed + 1, ...`` for
the model (and the holdout of a random split), and reports every figure as its mean and 95 %
Student t interval over the runs (:func:`ranking.evaluation.evaluate_seeds`,
:func:`~ranking.evaluation.compare_seeds`); without it, one run with the policy's own model seed.

A policy file is the policy document as JSON (``{}`` is the default policy); it is validated with
:meth:`ranking.policy.Policy.model_validate_json`, so unknown fields are an error. Every setting
of the policy applies, re-ranking effects included: the item attributes they need (creators,
provenance, tags, ages) come from the data set (:func:`ranking.evaluation.item_attributes`).
The report is the dict of :func:`ranking.evaluation.evaluate` (or
:func:`~ranking.evaluation.compare` with ``--compare``), printed as JSON, or as a readable table
with ``--format table``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from ranking.datasets import load_movielens
from ranking.evaluation import (
    compare,
    compare_seeds,
    evaluate,
    evaluate_seeds,
    make_split,
)
from ranking.policy import Policy

__all__ = ["format_table", "load_policy", "main"]


class PolicyFileError(ValueError):
    """A policy file that cannot be read or is not a valid policy document."""


def load_policy(path: str | Path) -> Policy:
    """Read and validate a policy JSON file.

    Raises
    ------
    PolicyFileError
        If the file cannot be read or does not validate; the message names the file and, for
        validation errors, each offending field.
    """
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as error:
        raise PolicyFileError(f"cannot read policy file {path}: {error.strerror}") from None
    try:
        return Policy.model_validate_json(text)
    except ValidationError as error:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in item['loc']) or '(document)'}: {item['msg']}"
            for item in error.errors()
        )
        raise PolicyFileError(f"{path} is not a valid policy: {problems}") from None


def _cell(value: object) -> str:
    if isinstance(value, dict):  # aggregated over seeds: mean ± half the interval
        mean, low, high = value["mean"], value["low"], value["high"]
        if len(set(value["values"])) == 1:  # the same in every run: a count, or a constant
            return _cell(value["values"][0])
        if mean is None or low is None or high is None:
            return _cell(mean)
        return f"{_cell(mean)} ±{_cell((high - low) / 2)}"
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 1000 else f"{value:.1f}"
    return str(value)


def _signed(value: object) -> str:
    if isinstance(value, dict):
        mean, low, high = value["mean"], value["low"], value["high"]
        if mean is None or low is None or high is None:
            return _signed(mean)
        return f"{_signed(mean)} ±{_cell((high - low) / 2)}"
    if isinstance(value, float):
        return f"{value:+.4f}" if abs(value) < 1000 else f"{value:+.1f}"
    return _cell(value)


def format_table(report: dict[str, Any]) -> str:
    """Render a report of :func:`~ranking.evaluation.evaluate` or :func:`compare` as text.

    A single report gives one value column; a comparison gives ``A``, ``B`` and ``B - A``
    columns side by side, followed by the churn between the two. Each side's metrics come twice:
    at the visible depth, then over the whole feed. A report aggregated over seeds
    (:func:`~ranking.evaluation.evaluate_seeds`, :func:`~ranking.evaluation.compare_seeds`)
    shows each figure as ``mean ±half-width`` of its interval, and a comparison adds ``B / A``.
    """
    lines: list[str] = []
    is_comparison = "deltas" in report
    seeded = "seeds" in report
    ratios = report.get("ratios") if is_comparison else None
    first = report["a"] if is_comparison else report
    params = first["params"]
    split = params["split"]
    part = split.get("part", "test")
    lines.append(
        f"data {params['data']['name']}  split {split['method']} "
        f"(test {split['test_fraction']}, seed {split['seed']}"
        f"{', measured on validation' if part == 'validation' else ''})  k={params['k']}  "
        f"depth={params.get('depth', params['k'])}  "
        f"members evaluated {_cell(first['members']['evaluated'])}"
    )
    if seeded:
        seeds = report["seeds"]
        lines.append(
            f"seeds {', '.join(str(seed) for seed in seeds['seeds'])}: mean ±half-width of the "
            f"{seeds['interval']}"
        )
    width = 34
    cell = 20 if seeded else 12
    if is_comparison:
        lines.append(
            f"A {report['a']['params']['policy_sha256'][:12]}  "
            f"B {report['b']['params']['policy_sha256'][:12]}"
        )
        columns = f"{'A':>{cell}}{'B':>{cell}}{'B - A':>{cell}}"
        if ratios is not None:
            columns += f"{'B / A':>{cell}}"
    else:
        lines.append(f"policy {params['policy_sha256'][:12]}")
        columns = f"{'value':>{cell}}"
    blocks: list[tuple[str, tuple[str, ...]]] = [
        (section, (section,)) for section in ("consumers", "producers")
    ]
    if "at_depth" in first:
        depth = params.get("depth")
        blocks = [
            (
                f"{section}, top {depth}" if cut == "at_depth" else f"{section}, whole feed",
                (cut, section),
            )
            for section in ("consumers", "producers")
            for cut in ("at_depth", "whole_feed")
        ]

    def pick(tree: dict[str, Any], path: tuple[str, ...]) -> dict[str, Any]:
        for key in path:
            tree = tree[key]
        return tree

    for title, path in blocks:
        lines.append("")
        lines.append(f"{title:<{width}}{columns}")
        for name, value in pick(first, path).items():
            row = f"{name:<{width}}{_cell(value):>{cell}}"
            if is_comparison:
                other = pick(report["b"], path).get(name)
                delta = pick(report["deltas"], path).get(name)
                row += f"{_cell(other):>{cell}}{_signed(delta):>{cell}}"
                if ratios is not None and path[0] in ratios:
                    row += f"{_cell(pick(ratios, path).get(name)):>{cell}}"
            lines.append(row)
    lines.append("")
    if is_comparison:
        if "churn_at_depth" in report:
            churn = _cell(report["churn_at_depth"]["mean"])
            lines.append(f"{'churn, top depth (mean)':<{width}}{churn:>{cell}}")
        lines.append(f"{'churn@k (mean)':<{width}}{_cell(report['churn']['mean']):>{cell}}")
        seconds = [_cell(report[side]["timings"]["feeds_seconds"]) for side in ("a", "b")]
        lines.append(f"{'feeds seconds':<{width}}{seconds[0]:>{cell}}{seconds[1]:>{cell}}")
    else:
        seconds_one = _cell(first["timings"]["feeds_seconds"])
        lines.append(f"{'feeds seconds':<{width}}{seconds_one:>{cell}}")
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m ranking.evaluate",
        description="Evaluate a ranking policy offline on MovieLens (RecBole layout).",
    )
    parser.add_argument("--movielens", required=True, type=Path, help="dataset folder")
    parser.add_argument("--policy", required=True, type=Path, help="policy JSON file")
    parser.add_argument("--compare", type=Path, help="second policy JSON file (B, vs A)")
    parser.add_argument("--split", choices=("random", "temporal"), default="random")
    parser.add_argument(
        "--part",
        choices=("test", "validation"),
        default="test",
        help="measure on the test part, or on the validation part of the training part",
    )
    parser.add_argument(
        "--seed", type=int, default=42, help="seed of the random split (the first seed of --seeds)"
    )
    parser.add_argument(
        "--seeds",
        type=int,
        help="run N seeds (seed, seed + 1, ...: model and random split) and report mean and "
        "95%% interval",
    )
    parser.add_argument("--test-fraction", type=float, default=0.2)
    parser.add_argument(
        "--k", type=int, default=50, help="feed length (the whole feed's metric cutoff)"
    )
    parser.add_argument("--depth", type=int, default=10, help="visible depth: the places apps show")
    parser.add_argument(
        "--discount",
        choices=("none", "log2"),
        default="none",
        help="position discount of exposure metrics",
    )
    parser.add_argument("--format", choices=("json", "table"), default="json")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (0 ok, 2 bad arguments or files)."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.k < 1:
        parser.error("--k must be >= 1")
    if args.depth < 1:
        parser.error("--depth must be >= 1")
    if args.seeds is not None and args.seeds < 1:
        parser.error("--seeds must be >= 1")
    try:
        policy_a = load_policy(args.policy)
        policy_b = load_policy(args.compare) if args.compare is not None else None
        data = load_movielens(args.movielens)
        split = make_split(
            data, args.split, test_fraction=args.test_fraction, seed=args.seed, part=args.part
        )
    except (PolicyFileError, OSError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    shared: dict[str, Any] = {"k": args.k, "discount": args.discount, "depth": args.depth}
    if args.seeds is not None:
        shared.update(
            seeds=range(args.seed, args.seed + args.seeds),
            method=args.split,
            test_fraction=args.test_fraction,
            part=args.part,
        )
        report = (
            evaluate_seeds(policy_a, data, **shared)
            if policy_b is None
            else compare_seeds(policy_a, policy_b, data, **shared)
        )
    elif policy_b is None:
        report = evaluate(policy_a, data, split, **shared)
    else:
        report = compare(policy_a, policy_b, data, split, **shared)
    if args.format == "table":
        print(format_table(report))
    else:
        print(json.dumps(report, indent=2, sort_keys=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
