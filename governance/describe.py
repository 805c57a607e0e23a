"""The ranking policy in plain words, for the governance pages."""

from __future__ import annotations

from typing import Any

from ranking.effects import quota_required
from ranking.policy import Policy

_PROVENANCE = {
    "human": "Human-made items",
    "ai_assisted": "AI-assisted items",
    "ai_generated": "AI-generated items",
    "unknown": "Items of unknown provenance",
}


def _per_ten(quota: float) -> str:
    return f"{quota_required(quota, 10)} of any 10 entries in a row"


def _treatment(treatment: Any) -> str:
    action = treatment.action
    if action == "allow":
        return "are ranked like any other"
    if action == "label":
        return "are ranked normally and labelled"
    if action == "downrank":
        return f"are downranked (score x {treatment.factor:g}) and labelled"
    if action == "cap_share":
        return f"take at most {treatment.max_share:.0%} of a feed"
    return "are never recommended"


def _refusal(rule: Any) -> str:
    kind = rule.kind
    if kind == "tag":
        return f"Items tagged “{rule.tag}”"
    if kind == "creator":
        return f"Items by creator {rule.creator}"
    if kind == "item":
        return f"The item {rule.item}"
    if kind == "provenance":
        return _PROVENANCE[rule.provenance]
    return f"Items published more than {rule.days} days ago"


def policy_describe(policy: Policy) -> dict[str, Any]:
    """Sections of sentences describing ``policy``; refusals as (what, reason) pairs."""
    model, ranking, fallback = policy.model, policy.ranking, policy.fallback
    model_lines = [
        f"Taste is learned with {model.factors} latent factors over {model.iterations} "
        f"training sweeps (regularisation {model.regularization:g}, confidence scale "
        f"{model.alpha:g}, seed {model.seed}).",
        "Each member-item interaction counts once."
        if model.weighting == "binary"
        else "Interactions count by their weight (for example star ratings).",
        f"{policy.candidates.pool_size} candidates are scored per member before re-ranking.",
    ]
    if policy.candidates.new_items:
        model_lines.append(
            f"Besides, each member's {policy.candidates.new_items} best of the community's newest "
            "items that nobody has engaged with yet are candidates, so new creators can be found."
        )
    else:
        model_lines.append(
            "Items nobody has engaged with yet are not candidates: new creators wait until "
            "somebody finds their items."
        )
    ranking_lines = []
    if ranking.popularity_penalty:
        ranking_lines.append(
            f"Popular items are penalised (strength {ranking.popularity_penalty:g})."
        )
    if ranking.creator_cap:
        ranking_lines.append(f"At most {ranking.creator_cap} items per creator in a feed.")
    if ranking.long_tail_quota:
        ranking_lines.append(
            f"At least {ranking.long_tail_quota:.0%} of any stretch of a feed, its first page "
            f"included, goes to long-tail creators ({_per_ten(ranking.long_tail_quota)})."
        )
    if ranking.new_creator_quota:
        ranking_lines.append(
            f"At least {ranking.new_creator_quota:.0%} of any stretch of a feed, its first page "
            f"included, goes to new creators (first item younger than "
            f"{ranking.new_creator_days} days; {_per_ten(ranking.new_creator_quota)})."
        )
    if ranking.diversity:
        ranking_lines.append(f"Feeds are diversified (trade-off {ranking.diversity:g}).")
    if ranking.freshness_half_life_days:
        ranking_lines.append(
            f"Older items fade: a score halves every {ranking.freshness_half_life_days:g} days."
        )
    if not ranking_lines:
        ranking_lines.append("No re-ranking: feeds follow the model's scores.")
    provenance_lines = [
        f"{_PROVENANCE[name]} {_treatment(treatment)}."
        for name, treatment in ranking.provenance.items()
    ]
    fallback_lines = [
        "Members who refuse personalisation see the "
        + ("most popular items" if fallback.kind == "popular" else "newest items")
        + (f", at most {fallback.creator_cap} per creator." if fallback.creator_cap else ".")
    ]
    return {
        "sections": [
            ("Model", model_lines),
            ("Re-ranking", ranking_lines),
            ("Provenance", provenance_lines),
            ("Fallback feed", fallback_lines),
        ],
        "refusals": [(_refusal(rule), rule.reason) for rule in policy.refusals],
    }
