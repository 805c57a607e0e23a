"""Offline evaluation of ranking policies: split, train, recommend, measure, compare.

The protocol, in four steps, each a plain function over :class:`~ranking.datasets.InteractionData`:

1. **Split** the interactions into train and test: :func:`split_random` (per-member random
   holdout, seeded) or :func:`split_temporal` (each member's latest interactions held out).
   :func:`split_validation` splits a split's training part again the same way, so a policy can
   be chosen on validation and reported on a test part that played no part in choosing it.
2. **Recommend** with the product's own pipeline, :func:`ranking.pipeline.compute_feeds`, trained on
   the train part only, for every member with held-out items, with the whole catalogue as
   candidates (:func:`recommend`). Training uses the policy's ``weighting``; ``"binary"`` (the
   default) binarises it.
3. **Measure** the lists against the held-out items with :mod:`ranking.metrics`
   (:func:`metrics_report`). Relevance is binary: every held-out (member, item) pair is relevant,
   whatever its rating (the implicit-feedback reading), except pairs the member also has in
   train, which the pipeline can never recommend and which are therefore dropped from the truth.
4. **Report** as a JSON-ready dict (:func:`evaluate`), or two policies side by side with deltas
   and churn (:func:`compare`); :func:`evaluate_seeds` and :func:`compare_seeds` repeat either
   over several seeds and report each figure's mean and 95 % interval (:func:`aggregate`).

Re-ranking effects (creator cap, quotas, freshness, refusals, provenance rules) need item
attributes; :func:`item_attributes` builds them from the data set (creators, provenance, tags,
age relative to the split's latest training interaction) and :func:`recommend` passes them to
``compute_feeds`` unless ``feed_options`` brings its own, so any valid policy can be evaluated.
"""

from ranking.evaluation.lists import (
    Recommendations,
    evaluated_members,
    implicit_baseline,
    item_attributes,
    recommend,
    reference_time,
)
from ranking.evaluation.measure import compare, evaluate, metrics_report
from ranking.evaluation.seeds import aggregate, compare_seeds, evaluate_seeds
from ranking.evaluation.splits import (
    Split,
    history_matrix,
    make_split,
    split_random,
    split_temporal,
    split_validation,
    truth_matrix,
)

__all__ = [
    "Recommendations",
    "Split",
    "aggregate",
    "compare",
    "compare_seeds",
    "evaluate",
    "evaluate_seeds",
    "evaluated_members",
    "history_matrix",
    "implicit_baseline",
    "item_attributes",
    "make_split",
    "metrics_report",
    "recommend",
    "reference_time",
    "split_random",
    "split_temporal",
    "split_validation",
    "truth_matrix",
]
