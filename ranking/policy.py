"""The ranking policy document: the declarative, voted record of how a community's feeds are made.

A policy is plain data validated by pydantic. Governance stores it as canonical JSON and votes on
changes to it; the ranking core reads it. Unknown fields are rejected (``extra="forbid"``) so a typo
in a proposal is an error, never a silently ignored setting.

This module holds the sections the ranking core implements today (the ALS model and the candidate
pool). Further sections (re-ranking, refusals, fallback) are added with a new ``schema_version``.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field

SCHEMA_VERSION: Final = 1


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)


class ModelParams(_Section):
    """Hyperparameters of the implicit-feedback ALS model.

    These are political levers, not only technical ones: with few factors the model can only
    express broad taste and leans towards popular items.
    """

    factors: int = Field(64, ge=1, le=1024)
    """Number of latent factors (embedding dimensionality)."""
    regularization: float = Field(1.0, ge=0.0, le=1000.0)
    """L2 regularisation of the factors; higher values shrink towards popular items less sharply."""
    alpha: float = Field(2.0, gt=0.0, le=1000.0)
    """Confidence scaling: an interaction of weight w counts as confidence ``alpha * w``."""
    iterations: int = Field(15, ge=1, le=200)
    """Number of ALS sweeps."""
    seed: int = Field(42, ge=0, le=2**31 - 1)
    """Random seed for the factor initialisation, so a ratified policy gives reproducible feeds."""
    weighting: Literal["binary", "weight"] = "binary"
    """How interactions become matrix values: ``binary`` counts each member-item pair once
    (value 1); ``weight`` uses the sum of the pair's weights (e.g. star ratings). Either way a
    pair whose weights sum to zero or less (a skip) trains nothing, and is never recommended."""


class CandidateParams(_Section):
    """How many items are considered for each member before the feed is cut to length."""

    pool_size: int = Field(200, ge=1, le=10_000)
    """Candidates scored per member."""


class Policy(_Section):
    """A community's ranking policy."""

    schema_version: Literal[1] = SCHEMA_VERSION
    """Version of this document's schema; bumped when fields change meaning."""
    model: ModelParams = ModelParams()
    """The ALS model's hyperparameters."""
    candidates: CandidateParams = CandidateParams()
    """The candidate pool."""

    def canonical_json(self) -> str:
        """The document as canonical JSON: sorted keys, no whitespace, every default spelled out."""
        return canonical_json(self.model_dump(mode="json"))

    def sha256(self) -> str:
        """SHA-256 hex digest of :meth:`canonical_json`; the policy's identity."""
        return hashlib.sha256(self.canonical_json().encode()).hexdigest()


def canonical_json(data: Any) -> str:
    """Serialise ``data`` deterministically (sorted keys, compact separators, UTF-8)."""
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def default_policy() -> Policy:
    """The documented default policy used for a community's genesis version."""
    return Policy()
