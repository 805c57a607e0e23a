"""The policy's effects on a candidate pool: refusals, score adjustments and greedy selection.

Arrays in, arrays out, vectorised over a batch of members. :func:`apply_policy` turns each
member's candidate pool (item indices and base scores, e.g. the ALS top-200) into a feed of
``n`` items, in this order:

1. **Hard refusals.** A candidate is dropped if the catalogue refuses it (community refusal
   rules, creator opt-outs: :attr:`Catalogue.refused`), if the member blocked it (seen items,
   mutes: ``member_blocked``), or if its provenance class is treated ``exclude``. Nothing later
   can bring a refused item back.
2. **Score adjustments** (see :class:`~ranking.policy.RankingParams` for the formula):
   provenance downranking, freshness decay and the popularity penalty, on the member-normalised
   score. With all three off the adjusted score *is* the base score.
3. **Greedy selection** over the ``n`` feed positions, vectorised across members: each position
   takes the best remaining candidate that keeps the per-creator cap and the provenance share
   caps, restricted to long-tail / new-creator items where a quota falls due, so that every run
   of consecutive entries (every prefix, every page) holds its share whenever the pool allows it
   (unless provenance share caps bind: see :func:`ranking.effects.greedy._greedy`), and scored
   by maximal marginal relevance when ``diversity > 0``.

Every output entry carries a reason bitmask (:class:`ranking.reasons.Reason`).

Item attributes come in two forms: :class:`ItemAttributes` in database-id space (what a caller
loads), which also resolves the policy's refusal rules (:meth:`ItemAttributes.refused_by`), and
:class:`Catalogue` in the dense item-index space of the model, which :func:`apply_policy` reads.

Modules: :mod:`~ranking.effects.catalogue` (item attributes), :mod:`~ranking.effects.apply`
(:func:`apply_policy`, steps 1 and 2), :mod:`~ranking.effects.greedy` (step 3) and
:mod:`~ranking.effects.quotas` (:func:`quota_required`, the quotas' window state).
"""

from ranking.effects.apply import RankedFeeds, apply_policy, blocked_mask
from ranking.effects.catalogue import (
    LONG_TAIL_HEAD_SHARE,
    PROVENANCE_CODES,
    Catalogue,
    ItemAttributes,
)
from ranking.effects.quotas import quota_required

__all__ = [
    "LONG_TAIL_HEAD_SHARE",
    "PROVENANCE_CODES",
    "Catalogue",
    "ItemAttributes",
    "RankedFeeds",
    "apply_policy",
    "blocked_mask",
    "quota_required",
]
