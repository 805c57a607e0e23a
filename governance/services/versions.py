"""Policy and charter versions: immutable records, made current by compare-and-set."""

from __future__ import annotations

from typing import Any, TypeVar

from django.contrib.auth.models import AbstractBaseUser
from django.db import transaction

from governance.charter import Charter
from governance.errors import InvalidVersionParent, StaleVersion
from governance.models import (
    CharterVersion,
    Community,
    PolicyVersion,
)
from governance.services.audit import actor_fields, audit_append, community_lock
from ranking.policy import Policy

VersionModel = TypeVar("VersionModel", PolicyVersion, CharterVersion)


def policy_version_create(
    *,
    community: Community,
    policy: Policy,
    parent: PolicyVersion | None,
    actor: AbstractBaseUser | None,
    make_current: bool,
    actor_label: str | None = None,
) -> PolicyVersion:
    """Store ``policy`` as the community's next policy version; optionally make it current.

    Making it current is a compare-and-set against ``parent``: it succeeds only while ``parent``
    is the current version (or, for a genesis version without parent, while there is none), and
    raises :class:`StaleVersion` otherwise, writing nothing.
    """
    return _version_create(
        PolicyVersion,
        kind="policy_version",
        community=community,
        document=policy.model_dump(mode="json"),
        sha256=policy.sha256(),
        parent=parent,
        actor=actor,
        actor_label=actor_label,
        make_current=make_current,
    )


def policy_version_make_current(
    *, version: PolicyVersion, actor: AbstractBaseUser | None, actor_label: str | None = None
) -> PolicyVersion:
    """Make a stored version current, replacing its parent (compare-and-set; see above)."""
    return _version_make_current(
        PolicyVersion, "policy_version", version=version, actor=actor, actor_label=actor_label
    )


def charter_version_create(
    *,
    community: Community,
    charter: Charter,
    parent: CharterVersion | None,
    actor: AbstractBaseUser | None,
    make_current: bool,
    actor_label: str | None = None,
) -> CharterVersion:
    """Store ``charter`` as the community's next charter version; as ``policy_version_create``."""
    return _version_create(
        CharterVersion,
        kind="charter_version",
        community=community,
        document=charter.model_dump(mode="json"),
        sha256=charter.sha256(),
        parent=parent,
        actor=actor,
        actor_label=actor_label,
        make_current=make_current,
    )


def charter_version_make_current(
    *, version: CharterVersion, actor: AbstractBaseUser | None, actor_label: str | None = None
) -> CharterVersion:
    """Make a stored charter version current, replacing its parent (compare-and-set)."""
    return _version_make_current(
        CharterVersion, "charter_version", version=version, actor=actor, actor_label=actor_label
    )


def _version_create(
    model: type[VersionModel],
    *,
    kind: str,
    community: Community,
    document: dict[str, Any],
    sha256: str,
    parent: VersionModel | None,
    actor: AbstractBaseUser | None,
    actor_label: str | None,
    make_current: bool,
) -> VersionModel:
    if parent is not None and parent.community_id != community.pk:
        raise InvalidVersionParent(
            f"{kind} {parent.pk} belongs to another community than {community.slug}"
        )
    with transaction.atomic():
        # Taken first, so the next number is read under the same lock the audit append needs.
        community_lock(community=community)
        latest = model.objects.filter(community=community).order_by("-number").first()
        user, _ = actor_fields(actor, actor_label)
        version = model.objects.create(
            community=community,
            number=(latest.number + 1) if latest else 1,
            document=document,
            sha256=sha256,
            parent=parent,
            created_by=user,
            is_current=False,
        )
        audit_append(
            community=community,
            actor=actor,
            actor_label=actor_label,
            action=f"{kind}.created",
            obj=version,
            payload={
                "number": version.number,
                "parent": parent.number if parent is not None else None,
                "sha256": sha256,
                "document": document,
            },
        )
        if make_current:
            _version_make_current(
                model, kind, version=version, actor=actor, actor_label=actor_label
            )
    return version


def _version_make_current(
    model: type[VersionModel],
    kind: str,
    *,
    version: VersionModel,
    actor: AbstractBaseUser | None,
    actor_label: str | None,
) -> VersionModel:
    community = version.community
    with transaction.atomic():
        community_lock(community=community)
        current = model.objects.filter(community=community, is_current=True)
        parent = version.parent
        if parent is None:
            if current.exists():
                raise StaleVersion(f"{community.slug} already has a current {kind}")
        # The compare-and-set: demote the parent only if it is still the current version. The
        # lock already queues writers; this keeps the rule even for a caller that skipped it, and
        # the partial unique constraint rejects a second current version whatever happens.
        elif current.filter(pk=parent.pk).update(is_current=False) != 1:
            raise StaleVersion(
                f"{kind} {version.number} of {community.slug} was built on version "
                f"{parent.number}, which is no longer current"
            )
        model.objects.filter(pk=version.pk).update(is_current=True)
        audit_append(
            community=community,
            actor=actor,
            actor_label=actor_label,
            action=f"{kind}.made_current",
            obj=version,
            payload={
                "number": version.number,
                "replaces": parent.number if parent is not None else None,
                "sha256": version.sha256,
            },
        )
    version.is_current = True
    return version
