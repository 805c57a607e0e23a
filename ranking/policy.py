"""The ranking policy document: the declarative, voted record of how a community's feeds are made.

A policy is plain data validated by pydantic. Governance stores it as canonical JSON and votes on
changes to it; the ranking core reads it. Unknown fields are rejected (``extra="forbid"``) so a typo
in a proposal is an error, never a silently ignored setting.

Sections
--------
``model``
    Hyperparameters of the ALS model (:class:`ModelParams`).
``candidates``
    How many candidates are scored per member before re-ranking (:class:`CandidateParams`).
``ranking``
    Re-ranking of the candidates: popularity penalty, creator cap, long-tail and new-creator
    quotas, diversity, freshness and the treatment of each provenance class
    (:class:`RankingParams`; applied by :func:`ranking.effects.apply_policy`).
``refusals``
    Items the community refuses to recommend at all, each with a reason shown to members
    (:data:`RefusalRule`).
``fallback``
    The feed of members who refuse personalisation (:class:`FallbackParams`).

Use :func:`policy_validate` to parse untrusted input (it raises :class:`PolicyError` with dotted
paths) and :func:`policy_json_schema` for the JSON Schema of the document.
"""

from __future__ import annotations

import hashlib
import json
from typing import Annotated, Any, Final, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

__all__ = [
    "PROVENANCE_CLASSES",
    "SCHEMA_VERSION",
    "Allow",
    "CandidateParams",
    "CapShare",
    "CreatorRefusal",
    "Downrank",
    "Exclude",
    "FallbackParams",
    "ItemRefusal",
    "Label",
    "ModelParams",
    "OlderThanRefusal",
    "Policy",
    "PolicyError",
    "ProvenanceClass",
    "ProvenanceRefusal",
    "ProvenanceTreatment",
    "RankingParams",
    "RefusalRule",
    "TagRefusal",
    "canonical_json",
    "default_policy",
    "neutral_policy",
    "policy_json_schema",
    "policy_validate",
]

SCHEMA_VERSION: Final = 1

ProvenanceClass = Literal["human", "ai_assisted", "ai_generated", "unknown"]
"""How an item was made, as declared by its publisher."""

PROVENANCE_CLASSES: Final[tuple[ProvenanceClass, ...]] = get_args(ProvenanceClass)
"""The provenance classes in code order: ``PROVENANCE_CLASSES[c]`` is the class with code ``c``."""


class _Section(BaseModel):
    # strict: "0.5" is not a number and true is not 1; pydantic's strict mode still takes an
    # int where a float is expected ("popularity_penalty": 0), as JSON itself does.
    model_config = ConfigDict(
        extra="forbid", frozen=True, use_attribute_docstrings=True, strict=True
    )


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
    new_items: int = Field(0, ge=0, le=1_000)
    """Items nobody has interacted with yet that join each member's candidates besides
    ``pool_size``: the best ``new_items`` for the member among the community's newest such items,
    scored from the creator's other items or the item's tags (see :mod:`ranking.pipeline`). 0: only
    items with interactions are candidates, so a new creator reaches no one until somebody
    finds their items elsewhere."""


# --- Provenance treatments -------------------------------------------------------------------


class Allow(_Section):
    """Treat items of this provenance like any other."""

    action: Literal["allow"]
    """Discriminator: ``"allow"``."""


class Label(_Section):
    """Rank normally, but label the items (a reason shown next to them in the feed)."""

    action: Literal["label"]
    """Discriminator: ``"label"``."""


class Downrank(_Section):
    """Multiply the items' normalised score by ``factor`` (and label them as downranked)."""

    action: Literal["downrank"]
    """Discriminator: ``"downrank"``."""
    factor: float = Field(gt=0.0, le=1.0)
    """Multiplier in (0, 1] applied to the member-normalised score; 1 changes nothing."""


class CapShare(_Section):
    """Allow at most ``floor(max_share * n)`` items of this provenance in a feed of ``n``."""

    action: Literal["cap_share"]
    """Discriminator: ``"cap_share"``."""
    max_share: float = Field(ge=0.0, le=1.0)
    """Largest share of a feed's slots the class may take (0 excludes it, 1 caps nothing)."""


class Exclude(_Section):
    """Never recommend items of this provenance."""

    action: Literal["exclude"]
    """Discriminator: ``"exclude"``."""


ProvenanceTreatment = Annotated[
    Allow | Label | Downrank | CapShare | Exclude, Field(discriminator="action")
]
"""What the feed does with items of one provenance class; tagged by ``action``."""


def _default_provenance() -> dict[ProvenanceClass, ProvenanceTreatment]:
    return {
        "human": Allow(action="allow"),
        "ai_assisted": Allow(action="allow"),
        "ai_generated": Label(action="label"),
        "unknown": Allow(action="allow"),
    }


class RankingParams(_Section):
    """How the candidate pool is re-ranked into a feed (see :func:`ranking.effects.apply_policy`).

    Scores are adjusted as follows, per member, over the member's eligible candidates with base
    scores ``s`` (ALS scores, or normalised popularity): with ``u = (s - min s) / (max s - min s)``
    (``u = 1`` if all are equal), the adjusted score is ::

        u * f_provenance * 0.5 ** (age_days / freshness_half_life_days)
          - popularity_penalty * log1p(popularity) / log1p(max popularity)

    where every factor that is switched off is left out. With every factor off the adjusted score
    is the base score itself. A greedy pass over the feed's positions then applies the creator
    cap, provenance share caps, quotas and diversity.
    """

    popularity_penalty: float = Field(0.0, ge=0.0, le=10.0)
    """Subtract ``popularity_penalty * log1p(popularity) / log1p(max popularity)`` from the
    member-normalised score (popularity: distinct interacting members); 0 = no penalty. At 1 the
    most popular item loses the whole range between a member's best and worst candidate."""
    creator_cap: int | None = Field(None, ge=1, le=10_000)
    """At most this many items of the same primary creator per feed; ``None`` = no cap."""
    long_tail_quota: float = Field(0.0, ge=0.0, le=1.0)
    """Any ``j`` consecutive entries of a feed (its first ``j``, any page) hold at least
    ``floor(long_tail_quota * j)`` items of long-tail creators (outside the top 20 % of creators
    by interactions), whenever there are enough (:func:`ranking.effects.quota_required`)."""
    new_creator_quota: float = Field(0.0, ge=0.0, le=1.0)
    """Any ``j`` consecutive entries hold at least ``floor(new_creator_quota * j)`` items of new
    creators (whose first item is younger than ``new_creator_days``), whenever there are
    enough."""
    new_creator_days: int = Field(90, ge=1, le=36_500)
    """Age in days of a creator's first item below which the creator counts as new."""
    diversity: float = Field(0.0, ge=0.0, le=1.0)
    """Maximal-marginal-relevance trade-off: each slot maximises ``(1 - diversity) * u' -
    diversity * max cosine similarity to the items already chosen`` (``u'``: the adjusted score
    rescaled to [0, 1] per member; similarity over item factors). 0 = off."""
    freshness_half_life_days: float | None = Field(None, gt=0.0, le=36_500.0)
    """Multiply the normalised score by ``0.5 ** (age_days / half_life)``; ``None`` = off.
    Items of unknown age are not decayed."""
    provenance: dict[ProvenanceClass, ProvenanceTreatment] = Field(
        default_factory=_default_provenance
    )
    """Treatment of each provenance class; a class left out is ``allow``."""

    @field_validator("provenance", mode="after")
    @classmethod
    def _complete_provenance(
        cls, value: dict[ProvenanceClass, ProvenanceTreatment]
    ) -> dict[ProvenanceClass, ProvenanceTreatment]:
        """Spell out every class (missing ones are ``allow``) in code order."""
        return {name: value.get(name, Allow(action="allow")) for name in PROVENANCE_CLASSES}


# --- Refusals --------------------------------------------------------------------------------

_Reason = Annotated[str, Field(min_length=1, max_length=500)]
_Key = Annotated[str, Field(min_length=1, max_length=255)]


class TagRefusal(_Section):
    """Refuse every item carrying ``tag``."""

    kind: Literal["tag"]
    """Discriminator: ``"tag"``."""
    tag: _Key
    """The tag, matched exactly."""
    reason: _Reason
    """Why the community refuses these items; shown to members."""


class CreatorRefusal(_Section):
    """Refuse every item whose primary creator is ``creator``."""

    kind: Literal["creator"]
    """Discriminator: ``"creator"``."""
    creator: _Key
    """The creator's external id."""
    reason: _Reason
    """Why the community refuses these items; shown to members."""


class ItemRefusal(_Section):
    """Refuse one item."""

    kind: Literal["item"]
    """Discriminator: ``"item"``."""
    item: _Key
    """The item's external id."""
    reason: _Reason
    """Why the community refuses this item; shown to members."""


class ProvenanceRefusal(_Section):
    """Refuse every item of a provenance class."""

    kind: Literal["provenance"]
    """Discriminator: ``"provenance"``."""
    provenance: ProvenanceClass
    """The provenance class."""
    reason: _Reason
    """Why the community refuses these items; shown to members."""


class OlderThanRefusal(_Section):
    """Refuse every item published more than ``days`` days ago (items of unknown age stay)."""

    kind: Literal["older_than"]
    """Discriminator: ``"older_than"``."""
    days: int = Field(ge=1, le=36_500)
    """Maximum age in days."""
    reason: _Reason
    """Why the community refuses these items; shown to members."""


RefusalRule = Annotated[
    TagRefusal | CreatorRefusal | ItemRefusal | ProvenanceRefusal | OlderThanRefusal,
    Field(discriminator="kind"),
]
"""One community refusal; tagged by ``kind``."""


class FallbackParams(_Section):
    """The feed of members who refuse personalisation."""

    kind: Literal["popular", "newest"] = "popular"
    """``popular``: most distinct interacting members first; ``newest``: youngest items first."""
    creator_cap: int | None = Field(None, ge=1, le=10_000)
    """At most this many items of the same primary creator per fallback feed; ``None`` = no
    cap."""


class Policy(_Section):
    """A community's ranking policy."""

    schema_version: Literal[1] = SCHEMA_VERSION
    """Version of this document's schema; bumped when fields change meaning."""
    model: ModelParams = ModelParams()
    """The ALS model's hyperparameters."""
    candidates: CandidateParams = CandidateParams()
    """The candidate pool."""
    ranking: RankingParams = RankingParams()
    """Re-ranking of the candidate pool into a feed."""
    refusals: list[RefusalRule] = Field(default_factory=list, max_length=10_000)
    """Items the community refuses to recommend, each with a reason shown to members."""
    fallback: FallbackParams = FallbackParams()
    """The feed of members who refuse personalisation."""

    def canonical_json(self) -> str:
        """The document as canonical JSON: sorted keys, no whitespace, every default spelled out."""
        return canonical_json(self.model_dump(mode="json"))

    def sha256(self) -> str:
        """SHA-256 hex digest of :meth:`canonical_json`; the policy's identity."""
        return hashlib.sha256(self.canonical_json().encode()).hexdigest()


class PolicyError(ValueError):
    """A policy document failed validation.

    Attributes
    ----------
    errors : list of dict
        One ``{"path": ..., "message": ...}`` per problem; ``path`` is dotted
        (``"ranking.provenance.ai_generated.factor"``, ``"refusals.0.reason"``), ``""`` for the
        document itself.
    """

    def __init__(self, errors: list[dict[str, str]]) -> None:
        self.errors = errors
        summary = "; ".join(f"{e['path'] or '<document>'}: {e['message']}" for e in errors)
        super().__init__(f"invalid policy: {summary}")


def _path(loc: tuple[int | str, ...], data: object) -> str:
    """Dotted path of ``loc`` in ``data``, without the union tags pydantic inserts."""
    parts: list[str] = []
    node: object = data
    for part in loc:
        if isinstance(node, dict) and part in (node.get("action"), node.get("kind")):
            continue  # the union tag pydantic inserts after a tagged object
        in_dict = isinstance(node, dict) and part in node
        if in_dict or (isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node)):
            node = node[part]  # type: ignore[index]
        elif isinstance(node, dict) and isinstance(part, str) and not part.startswith("["):
            # A missing field: name it; anything below it does not exist either.
            parts.append(part)
            node = None
            continue
        else:
            continue  # a "[key]" marker or similar: not part of the document
        parts.append(str(part))
    return ".".join(parts)


def policy_validate(data: object) -> Policy:
    """Validate an untrusted policy document.

    Parameters
    ----------
    data : object
        The document as Python data (``dict``) or as JSON text (``str`` / ``bytes``).

    Returns
    -------
    Policy
        The validated policy, with every default filled in.

    Raises
    ------
    PolicyError
        With one entry per problem in :attr:`PolicyError.errors`.
    """
    if isinstance(data, str | bytes | bytearray):
        try:
            data = json.loads(data)
        except ValueError as error:
            raise PolicyError([{"path": "", "message": f"not valid JSON: {error}"}]) from None
    try:
        return Policy.model_validate(data)
    except ValidationError as error:
        errors = [
            {"path": _path(tuple(e["loc"]), data), "message": e["msg"]} for e in error.errors()
        ]
        raise PolicyError(errors) from None


def policy_json_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of a policy document, with field descriptions."""
    return Policy.model_json_schema()


def canonical_json(data: Any) -> str:
    """Serialise ``data`` deterministically (sorted keys, compact separators, UTF-8)."""
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def default_policy() -> Policy:
    """The documented default policy used for a community's genesis version.

    Plain ALS with no re-ranking, except that AI-generated items are labelled.
    """
    return Policy()


def neutral_policy() -> Policy:
    """A policy with no re-ranking at all: the feed is the ALS (or popularity) top-``n``.

    No popularity penalty, creator cap, quotas, diversity or freshness; every provenance class
    ``allow``; no refusals.
    """
    allow = Allow(action="allow")
    return Policy(
        ranking=RankingParams(provenance={name: allow for name in PROVENANCE_CLASSES}),
    )
