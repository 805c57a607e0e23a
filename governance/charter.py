"""The charter: the community's rules for changing its own rules.

Like the ranking policy it is a declarative, versioned document. Unknown fields are rejected, so a
typo in a charter amendment is an error, never a silently ignored rule.
"""

from __future__ import annotations

import hashlib
from typing import Final, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from ranking.policy import canonical_json

CHARTER_SCHEMA_VERSION: Final = 1


class Charter(BaseModel):
    """How proposals are made and when they pass."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    schema_version: Literal[1] = CHARTER_SCHEMA_VERSION
    """Version of this document's schema; bumped when fields change meaning."""
    quorum: float = Field(0.2, ge=0.0, le=1.0)
    """Share of the electorate (members when voting opens) that must vote for a result to count."""
    approval_threshold: float = Field(0.5, ge=0.5, le=1.0)
    """Share of yes votes among yes + no (abstentions excluded) a proposal needs. At 0.5 a proposal
    passes with strictly more than half; above 0.5 it needs at least that share."""
    voting_period_hours: int = Field(168, ge=1, le=2160)
    """How long voting stays open, in hours (one week by default, at most 90 days)."""
    who_may_propose: Literal["members", "moderators"] = "moderators"
    """Who may open a proposal: any member, or moderators and admins only."""
    charter_change_supermajority: float = Field(0.66, ge=0.5, le=1.0)
    """Approval share a change to this charter needs (instead of ``approval_threshold``)."""

    @model_validator(mode="after")
    def _charter_changes_are_not_easier(self) -> Charter:
        # Otherwise a simple majority could first lower the bar for changing the charter.
        if self.charter_change_supermajority < self.approval_threshold:
            raise ValueError(
                "charter_change_supermajority must be at least approval_threshold "
                "(changing the charter may not be easier than changing the policy)"
            )
        return self

    def canonical_json(self) -> str:
        """The document as canonical JSON: sorted keys, no whitespace, every default spelled out."""
        return canonical_json(self.model_dump(mode="json"))

    def sha256(self) -> str:
        """SHA-256 hex digest of :meth:`canonical_json`; the charter's identity."""
        return hashlib.sha256(self.canonical_json().encode()).hexdigest()


def default_charter() -> Charter:
    """The documented default charter used for a community's genesis version."""
    return Charter()
