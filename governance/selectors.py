"""Governance reads."""

from __future__ import annotations

from governance.models import Community, PolicyVersion
from ranking.policy import Policy


def policy_version_current(*, community: Community) -> PolicyVersion:
    """The community's current policy version (there is exactly one; the database guarantees it)."""
    return PolicyVersion.objects.get(community=community, is_current=True)


def policy_of(version: PolicyVersion) -> Policy:
    """Parse a stored policy document."""
    return Policy.model_validate(version.document)
