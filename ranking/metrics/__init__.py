"""Offline metrics for top-k recommendations: what members get, and what creators get.

Every function takes arrays and returns arrays or floats. The common inputs are

``recs`` : int array of shape (m, k)
    Recommended **item indices** (``0 .. n_items - 1``) for ``m`` members, best first; ``-1``
    pads short lists. A list is assumed to hold no repeated item (as :func:`ranking.pipeline.
    compute_feeds` guarantees).
``truth`` : scipy.sparse.csr_matrix, shape (m, n_items)
    Held-out relevant items: row ``r`` is member ``r``'s test set; any stored non-zero counts as
    relevant (binary relevance).

**Consumer metrics** return one float64 value per member (shape ``(m,)``) with ``NaN`` where the
metric is undefined for that member (no held-out items, fewer than two recommendations, ...);
:func:`summarize` averages the defined values and counts the excluded ones. **Producer metrics**
look at the whole batch of lists and return one number (or one value per item / creator).

Exposure
    An item's *exposure* is the number of lists it appears in (``discount="none"``), or the sum of
    ``1 / log2(position + 2)`` over its appearances (``discount="log2"``, position 0 = top, the
    same discount as nDCG), so that a first place counts 1 and a tenth place about 0.29. The log2
    discount is the one attention model of this library (:func:`position_weights`): how likely a
    member is to look at a place, as in Singh & Joachims (KDD 2018) and Biega et al. (SIGIR
    2018). A creator's exposure is the sum over the items whose primary creator they are. Items
    whose creator index is ``-1`` (the ``unattributed`` placeholder) are left out of every
    creator metric, numerators and denominators alike.

Across members and creators
    :func:`convergence` says how alike members' lists are (mean :func:`jaccard` over member
    pairs); :func:`relation_kept` and :func:`audience_kept` say whether lists keep members with
    the creators they engaged with before (``history``) or bring creators new to them.

No function loops over members in Python: lists are turned into sparse member x item indicator
matrices or masked ``(m, k)`` arrays.
"""

from ranking.metrics.common import Discount, position_weights, summarize
from ranking.metrics.consumer import (
    average_popularity,
    calibration,
    intra_list_diversity,
    ndcg_at_k,
    novelty,
    precision_at_k,
    recall_at_k,
)
from ranking.metrics.producer import (
    Churn,
    churn,
    creator_coverage,
    creator_exposure,
    creator_exposure_share,
    creator_gini,
    creator_totals,
    exposure,
    exposure_share,
    gini,
    head_creators,
    item_coverage,
    item_gini,
    long_tail_creator_share,
    new_creator_share,
    new_creators,
    provenance_share,
)
from ranking.metrics.relations import (
    AudienceKept,
    audience_kept,
    convergence,
    jaccard,
    member_pairs,
    relation_kept,
    relation_kept_share,
)

__all__ = [
    "AudienceKept",
    "Churn",
    "Discount",
    "audience_kept",
    "average_popularity",
    "calibration",
    "churn",
    "convergence",
    "creator_coverage",
    "creator_exposure",
    "creator_exposure_share",
    "creator_gini",
    "creator_totals",
    "exposure",
    "exposure_share",
    "gini",
    "head_creators",
    "intra_list_diversity",
    "item_coverage",
    "item_gini",
    "jaccard",
    "long_tail_creator_share",
    "member_pairs",
    "ndcg_at_k",
    "new_creator_share",
    "new_creators",
    "novelty",
    "position_weights",
    "precision_at_k",
    "provenance_share",
    "recall_at_k",
    "relation_kept",
    "relation_kept_share",
    "summarize",
]
