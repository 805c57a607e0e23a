from __future__ import annotations

import json
from typing import Any

from django.conf import settings
from django.core.validators import RegexValidator
from django.db import models
from django.db.models import Q
from django.utils import timezone

external_id_validator = RegexValidator(
    r"^[^\s]{1,255}$", "External ids are 1 to 255 characters without whitespace."
)


class Community(models.Model):
    """A community that governs its own feeds."""

    slug = models.SlugField(max_length=64, unique=True)
    name = models.CharField(max_length=200)
    description = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        verbose_name_plural = "communities"
        ordering = ["slug"]

    def __str__(self) -> str:
        return self.name


class Membership(models.Model):
    """A member of a community.

    ``user`` is optional: members known only to third-party apps (by ``external_id``) have no
    login of their own here, and a community may hold millions of them.
    """

    class Role(models.TextChoices):
        MEMBER = "member", "Member"
        MODERATOR = "moderator", "Moderator"
        ADMIN = "admin", "Admin"

    community = models.ForeignKey(Community, on_delete=models.CASCADE, related_name="memberships")
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.CASCADE,
        null=True,
        blank=True,
        related_name="memberships",
    )
    external_id = models.CharField(max_length=255, validators=[external_id_validator])
    display_name = models.CharField(max_length=200, blank=True)
    role = models.CharField(max_length=16, choices=Role.choices, default=Role.MEMBER)
    # Not auto_now_add: importers set the real join date of members with a history.
    joined_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["community", "external_id"], name="membership_unique_external_id"
            ),
            models.UniqueConstraint(
                fields=["community", "user"],
                condition=Q(user__isnull=False),
                name="membership_unique_user",
            ),
            models.CheckConstraint(
                condition=Q(role__in=["member", "moderator", "admin"]),
                name="membership_role_valid",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.external_id} in {self.community_id}"


class ImmutableRecordError(Exception):
    """Raised on an attempt to rewrite a stored version or audit entry."""


def _refuse_rewrite(instance: models.Model) -> None:
    # Versions are records of what was decided: a change is a new version. Only ``is_current``
    # moves, and only through the compare-and-set queryset update in governance.services.
    if not instance._state.adding:
        raise ImmutableRecordError(
            f"{instance._meta.label} rows are immutable; create a new version instead."
        )


class VersionedDocument(models.Model):
    """An immutable, numbered version of a community's governed document, at most one current."""

    number = models.PositiveIntegerField()
    document = models.JSONField()
    sha256 = models.CharField(max_length=64)
    parent = models.ForeignKey(
        "self", on_delete=models.PROTECT, null=True, blank=True, related_name="children"
    )
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True
    )
    created_at = models.DateTimeField(auto_now_add=True)
    is_current = models.BooleanField(default=False)

    # Subclasses define ``community`` (with their own related name) and the word for __str__.
    community_id: int
    kind: str = "document"

    class Meta:
        abstract = True
        ordering = ["community", "-number"]
        constraints = [
            models.UniqueConstraint(fields=["community", "number"], name="%(class)s_unique_number"),
            models.UniqueConstraint(
                fields=["community"],
                condition=Q(is_current=True),
                name="%(class)s_one_current",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.community_id} {self.kind} v{self.number}"

    def save(self, *args: Any, **kwargs: Any) -> None:
        _refuse_rewrite(self)
        super().save(*args, **kwargs)


class PolicyVersion(VersionedDocument):
    """One immutable version of a community's ranking policy (see ``ranking.policy.Policy``)."""

    community = models.ForeignKey(
        Community, on_delete=models.CASCADE, related_name="policy_versions"
    )
    kind = "policy"

    class Meta(VersionedDocument.Meta):
        pass


class CharterVersion(VersionedDocument):
    """One immutable version of a community's charter (see ``governance.charter.Charter``)."""

    community = models.ForeignKey(
        Community, on_delete=models.CASCADE, related_name="charter_versions"
    )
    kind = "charter"

    class Meta(VersionedDocument.Meta):
        pass


class AuditEntry(models.Model):
    """One link of a community's append-only, hash-chained audit log (see docs/audit.md).

    Each community has its own chain: ``seq`` runs 1, 2, 3, ... within the community and
    ``entry_hash`` commits to the entry's content and to ``prev_hash``, the previous entry's hash.
    Write through ``governance.services.audit_append`` only; on PostgreSQL triggers refuse UPDATE,
    DELETE and TRUNCATE.
    """

    # PROTECT, not CASCADE: deleting a community would have to delete its history.
    community = models.ForeignKey(Community, on_delete=models.PROTECT, related_name="audit_entries")
    seq = models.PositiveBigIntegerField()
    created_at = models.DateTimeField(default=timezone.now)
    # No database constraint and no SET_NULL: deleting a user must not rewrite (UPDATE) entries.
    # The id may then dangle; ``actor_label`` keeps who it was.
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.DO_NOTHING,
        db_constraint=False,
        null=True,
        blank=True,
        related_name="+",
    )
    actor_label = models.CharField(max_length=150)
    action = models.CharField(max_length=64)
    object_type = models.CharField(max_length=100)
    object_id = models.CharField(max_length=64)
    # The exact canonical JSON text that was hashed. A JSON column would be re-serialised by
    # PostgreSQL (jsonb normalises numbers: -0.0 becomes 0.0, 1e16 becomes an integer), and a
    # verifier would then report tampering that never happened.
    payload_json = models.TextField()
    prev_hash = models.CharField(max_length=64)
    entry_hash = models.CharField(max_length=64, unique=True)

    class Meta:
        ordering = ["community", "seq"]
        verbose_name_plural = "audit entries"
        constraints = [
            models.UniqueConstraint(fields=["community", "seq"], name="auditentry_unique_seq"),
            models.CheckConstraint(condition=Q(seq__gte=1), name="auditentry_seq_positive"),
        ]

    def __str__(self) -> str:
        return f"{self.community_id}#{self.seq} {self.action}"

    def save(self, *args: Any, **kwargs: Any) -> None:
        _refuse_rewrite(self)
        super().save(*args, **kwargs)

    @property
    def payload(self) -> Any:
        return json.loads(self.payload_json)


class Proposal(models.Model):
    """A proposed change to a community's ranking policy or charter, voted on by a frozen
    electorate.

    Life cycle: draft -> open -> passed / failed / withdrawn; passed -> ratified / conflicted.
    Every transition is a compare-and-set update on ``state`` in ``governance.services.proposals``.
    ``kind`` says which document it changes; the base and ratified version columns of the other
    kind stay empty (check constraints).
    """

    class Kind(models.TextChoices):
        POLICY = "policy", "Ranking policy"
        CHARTER = "charter", "Charter"

    class State(models.TextChoices):
        DRAFT = "draft", "Draft"
        OPEN = "open", "Open for voting"
        PASSED = "passed", "Passed"
        FAILED = "failed", "Failed"
        WITHDRAWN = "withdrawn", "Withdrawn"
        RATIFIED = "ratified", "Ratified"
        CONFLICTED = "conflicted", "Conflicted"

    community = models.ForeignKey(Community, on_delete=models.CASCADE, related_name="proposals")
    author = models.ForeignKey(Membership, on_delete=models.PROTECT, related_name="proposals")
    title = models.CharField(max_length=200)
    rationale = models.TextField(blank=True)
    kind = models.CharField(max_length=8, choices=Kind.choices, default=Kind.POLICY)
    # The proposed policy or charter, validated and with every default spelled out.
    document = models.JSONField()
    # The version current when the proposal was drafted: the base of its diff and of the merge.
    # ``base_version`` for a policy proposal, ``base_charter_version`` for a charter proposal.
    base_version = models.ForeignKey(
        PolicyVersion, on_delete=models.PROTECT, null=True, blank=True, related_name="+"
    )
    base_charter_version = models.ForeignKey(
        CharterVersion, on_delete=models.PROTECT, null=True, blank=True, related_name="+"
    )
    state = models.CharField(max_length=16, choices=State.choices, default=State.DRAFT)
    created_at = models.DateTimeField(default=timezone.now)
    # Frozen when voting opens: the rules and the electorate do not move under a running vote.
    # ``approval_threshold`` is the bar that applies: the charter's ``approval_threshold`` for a
    # policy proposal, its ``charter_change_supermajority`` for a charter proposal.
    charter_version = models.ForeignKey(
        CharterVersion, on_delete=models.PROTECT, null=True, blank=True, related_name="+"
    )
    quorum = models.FloatField(null=True, blank=True)
    approval_threshold = models.FloatField(null=True, blank=True)
    electorate_size = models.PositiveIntegerField(null=True, blank=True)
    opens_at = models.DateTimeField(null=True, blank=True)
    closes_at = models.DateTimeField(null=True, blank=True)
    # Filled when voting closes.
    closed_at = models.DateTimeField(null=True, blank=True)
    yes_count = models.PositiveIntegerField(null=True, blank=True)
    no_count = models.PositiveIntegerField(null=True, blank=True)
    abstain_count = models.PositiveIntegerField(null=True, blank=True)
    # Filled by ratification.
    decided_at = models.DateTimeField(null=True, blank=True)
    ratified_version = models.ForeignKey(
        PolicyVersion, on_delete=models.PROTECT, null=True, blank=True, related_name="+"
    )
    ratified_charter_version = models.ForeignKey(
        CharterVersion, on_delete=models.PROTECT, null=True, blank=True, related_name="+"
    )
    conflict_paths = models.JSONField(default=list, blank=True)

    class Meta:
        ordering = ["community", "-created_at", "-id"]
        indexes = [models.Index(fields=["state", "closes_at"], name="proposal_state_closes")]
        constraints = [
            models.CheckConstraint(
                condition=Q(
                    state__in=[
                        "draft",
                        "open",
                        "passed",
                        "failed",
                        "withdrawn",
                        "ratified",
                        "conflicted",
                    ]
                ),
                name="proposal_state_valid",
            ),
            # A proposal that was ever opened has its frozen rules and voting window.
            models.CheckConstraint(
                condition=Q(state__in=["draft", "withdrawn"])
                | Q(
                    opens_at__isnull=False,
                    closes_at__isnull=False,
                    electorate_size__isnull=False,
                    quorum__isnull=False,
                    approval_threshold__isnull=False,
                    charter_version__isnull=False,
                ),
                name="proposal_opened_has_rules",
            ),
            models.CheckConstraint(
                condition=Q(kind__in=["policy", "charter"]), name="proposal_kind_valid"
            ),
            # A policy proposal refers to policy versions only, a charter proposal to charter
            # versions only; each has its base.
            models.CheckConstraint(
                condition=Q(
                    kind="policy",
                    base_version__isnull=False,
                    base_charter_version__isnull=True,
                    ratified_charter_version__isnull=True,
                )
                | Q(
                    kind="charter",
                    base_charter_version__isnull=False,
                    base_version__isnull=True,
                    ratified_version__isnull=True,
                ),
                name="proposal_versions_match_kind",
            ),
            models.CheckConstraint(
                condition=~Q(state="ratified")
                | Q(ratified_version__isnull=False)
                | Q(ratified_charter_version__isnull=False),
                name="proposal_ratified_has_version",
            ),
            # One proposal per ratified version: a version is made by exactly one decision.
            models.UniqueConstraint(
                fields=["ratified_version"],
                condition=Q(ratified_version__isnull=False),
                name="proposal_unique_ratified_version",
            ),
            models.UniqueConstraint(
                fields=["ratified_charter_version"],
                condition=Q(ratified_charter_version__isnull=False),
                name="proposal_unique_ratified_charter_version",
            ),
        ]

    def __str__(self) -> str:
        return f"#{self.pk} {self.title}"

    @property
    def is_charter(self) -> bool:
        return self.kind == self.Kind.CHARTER

    @property
    def base(self) -> VersionedDocument | None:
        """The version it was drafted on (policy or charter, by ``kind``)."""
        return self.base_charter_version if self.is_charter else self.base_version

    @property
    def ratified(self) -> VersionedDocument | None:
        """The version its ratification created, if any (policy or charter, by ``kind``)."""
        return self.ratified_charter_version if self.is_charter else self.ratified_version


class ElectorateEntry(models.Model):
    """One member entitled to vote on a proposal, recorded when voting opened."""

    proposal = models.ForeignKey(Proposal, on_delete=models.CASCADE, related_name="electorate")
    member = models.ForeignKey(Membership, on_delete=models.CASCADE, related_name="+")

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["proposal", "member"], name="electorate_unique_member"),
        ]

    def __str__(self) -> str:
        return f"{self.member_id} may vote on {self.proposal_id}"


class Ballot(models.Model):
    """A member's current ballot on a proposal. Changing a vote updates this row; the audit log
    keeps the history (``ballot.cast`` then ``ballot.changed`` entries)."""

    class Choice(models.TextChoices):
        YES = "yes", "Yes"
        NO = "no", "No"
        ABSTAIN = "abstain", "Abstain"

    proposal = models.ForeignKey(Proposal, on_delete=models.CASCADE, related_name="ballots")
    member = models.ForeignKey(Membership, on_delete=models.CASCADE, related_name="+")
    choice = models.CharField(max_length=8, choices=Choice.choices)
    cast_at = models.DateTimeField()
    # Server-side random value that makes the receipt unguessable from the public fields.
    nonce = models.CharField(max_length=64)
    receipt = models.CharField(max_length=64, unique=True)

    class Meta:
        constraints = [
            # One ballot per member per proposal: the database, not an ``if``, guarantees it.
            models.UniqueConstraint(fields=["proposal", "member"], name="ballot_one_per_member"),
            models.CheckConstraint(
                condition=Q(choice__in=["yes", "no", "abstain"]), name="ballot_choice_valid"
            ),
        ]

    def __str__(self) -> str:
        return f"ballot of {self.member_id} on {self.proposal_id}"
