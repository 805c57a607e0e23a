from __future__ import annotations

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


class PolicyVersion(models.Model):
    """One immutable version of a community's ranking policy (see ``ranking.policy.Policy``)."""

    community = models.ForeignKey(
        Community, on_delete=models.CASCADE, related_name="policy_versions"
    )
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

    class Meta:
        ordering = ["community", "-number"]
        constraints = [
            models.UniqueConstraint(
                fields=["community", "number"], name="policyversion_unique_number"
            ),
            models.UniqueConstraint(
                fields=["community"],
                condition=Q(is_current=True),
                name="policyversion_one_current",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.community_id} policy v{self.number}"
