"""Communities: create one with its genesis policy and charter versions, audited."""

from __future__ import annotations

from django.contrib.auth.models import AbstractBaseUser
from django.db import transaction

from governance.charter import Charter, default_charter
from governance.models import (
    Community,
)
from governance.services.audit import audit_append
from governance.services.versions import charter_version_create, policy_version_create
from ranking.policy import Policy, default_policy


@transaction.atomic
def community_create(
    *,
    slug: str,
    name: str,
    description: str = "",
    policy: Policy | None = None,
    charter: Charter | None = None,
    actor: AbstractBaseUser | None = None,
    actor_label: str | None = None,
) -> Community:
    """Create a community with its genesis policy and charter versions (documented defaults if
    none given), all audited."""
    community = Community.objects.create(slug=slug, name=name, description=description)
    audit_append(
        community=community,
        actor=actor,
        actor_label=actor_label,
        action="community.created",
        obj=community,
        payload={"slug": slug, "name": name, "description": description},
    )
    policy_version_create(
        community=community,
        policy=policy or default_policy(),
        parent=None,
        make_current=True,
        actor=actor,
        actor_label=actor_label,
    )
    charter_version_create(
        community=community,
        charter=charter or default_charter(),
        parent=None,
        make_current=True,
        actor=actor,
        actor_label=actor_label,
    )
    return community


def community_get_or_create(*, slug: str, name: str | None = None) -> tuple[Community, bool]:
    """Return the community ``slug``, creating it with the default policy if it does not exist."""
    existing = Community.objects.filter(slug=slug).first()
    if existing is not None:
        return existing, False
    return community_create(slug=slug, name=name or slug.replace("-", " ").title()), True
