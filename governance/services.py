"""Governance writes. Keyword-only, typed, one transaction each."""

from __future__ import annotations

from django.contrib.auth.models import AbstractBaseUser
from django.db import transaction

from governance.models import Community, PolicyVersion
from ranking.policy import Policy, default_policy


@transaction.atomic
def community_create(
    *,
    slug: str,
    name: str,
    description: str = "",
    policy: Policy | None = None,
    actor: AbstractBaseUser | None = None,
) -> Community:
    """Create a community with its genesis policy version (documented defaults if none given)."""
    community = Community.objects.create(slug=slug, name=name, description=description)
    policy = policy or default_policy()
    PolicyVersion.objects.create(
        community=community,
        number=1,
        document=policy.model_dump(mode="json"),
        sha256=policy.sha256(),
        created_by=actor if actor is not None and actor.is_authenticated else None,
        is_current=True,
    )
    return community


def community_get_or_create(*, slug: str, name: str | None = None) -> tuple[Community, bool]:
    """Return the community ``slug``, creating it with the default policy if it does not exist."""
    existing = Community.objects.filter(slug=slug).first()
    if existing is not None:
        return existing, False
    return community_create(slug=slug, name=name or slug.replace("-", " ").title()), True
