"""Memberships: add, change the role of, and remove members, audited; the last admin stays."""

from __future__ import annotations

from django.contrib.auth.models import AbstractBaseUser
from django.db import transaction

from governance.errors import LastAdmin, MemberInUse
from governance.models import (
    Community,
    ElectorateEntry,
    Membership,
)
from governance.services.audit import audit_append, community_lock


@transaction.atomic
def membership_create(
    *,
    community: Community,
    external_id: str,
    actor: AbstractBaseUser | None,
    user: AbstractBaseUser | None = None,
    display_name: str = "",
    role: str = Membership.Role.MEMBER,
    actor_label: str | None = None,
) -> Membership:
    """Add a member, audited. Bulk importers write members directly and are not audited per row."""
    membership = Membership(
        community=community,
        external_id=external_id,
        user=user,
        display_name=display_name,
        role=role,
    )
    membership.full_clean(validate_unique=False, validate_constraints=False)
    membership.save()
    audit_append(
        community=community,
        actor=actor,
        actor_label=actor_label,
        action="membership.created",
        obj=membership,
        # Identifiers only: the log is immutable, so it holds no names that could need erasing.
        payload={"external_id": external_id, "role": role, "user_id": membership.user_id},
    )
    return membership


@transaction.atomic
def membership_set_role(
    *,
    membership: Membership,
    role: str,
    actor: AbstractBaseUser | None,
    actor_label: str | None = None,
) -> Membership:
    """Change a member's role, audited. Setting the role it already has writes nothing.

    Refuses (:class:`LastAdmin`) to demote the community's last admin who can sign in.
    """
    community = membership.community
    community_lock(community=community)
    previous = (
        Membership.objects.select_for_update().values_list("role", flat=True).get(pk=membership.pk)
    )
    if previous == role:
        membership.role = role
        return membership
    if previous == Membership.Role.ADMIN:
        membership_last_admin_check(membership=membership, doing="demote")
    # The role_valid check constraint rejects an unknown role.
    Membership.objects.filter(pk=membership.pk).update(role=role)
    membership.role = role
    audit_append(
        community=community,
        actor=actor,
        actor_label=actor_label,
        action="membership.role_changed",
        obj=membership,
        payload={"external_id": membership.external_id, "from": previous, "to": role},
    )
    return membership


def membership_last_admin_check(*, membership: Membership, doing: str) -> None:
    """Raise :class:`LastAdmin` unless another admin with a login remains.

    The services call it under the community lock, so two admins demoting each other at once
    cannot both succeed; forms may call it first to show the refusal next to the field.
    """
    others = Membership.objects.filter(
        community_id=membership.community_id, role=Membership.Role.ADMIN, user__isnull=False
    ).exclude(pk=membership.pk)
    if not others.exists():
        raise LastAdmin(
            f"Cannot {doing} {membership.external_id}: the community would have no admin left "
            "who can sign in. Make someone else an admin first."
        )


@transaction.atomic
def membership_remove(
    *,
    membership: Membership,
    actor: AbstractBaseUser | None,
    actor_label: str | None = None,
) -> None:
    """Remove a member, audited (``membership.removed``).

    Deleting the row also deletes what hangs on it: the member's ballots and electorate entries
    of closed votes (each closed proposal keeps its counted totals), their interactions, feeds
    and choices. Refused (:class:`MemberInUse`) while the member is in the electorate of an open
    proposal (removing them would change a running vote) or authored a proposal (proposals keep
    their author); refused (:class:`LastAdmin`) for the last admin who can sign in.
    """
    community = membership.community
    community_lock(community=community)
    # Re-read under the lock: the role may have changed since the caller loaded the row.
    current = Membership.objects.select_for_update().get(pk=membership.pk)
    membership_remove_check(membership=current)
    audit_append(
        community=community,
        actor=actor,
        actor_label=actor_label,
        action="membership.removed",
        obj=current,
        payload={
            "external_id": current.external_id,
            "role": current.role,
            "user_id": current.user_id,
        },
    )
    current.delete()


def membership_remove_check(*, membership: Membership) -> None:
    """Raise what :func:`membership_remove` would refuse with (:class:`LastAdmin`,
    :class:`MemberInUse`); forms call it to refuse before asking for confirmation."""
    current = membership
    if current.role == Membership.Role.ADMIN:
        membership_last_admin_check(membership=current, doing="remove")
    if current.proposals.exists():
        raise MemberInUse(
            f"{current.external_id} authored proposals, which keep their author; change their "
            "role instead."
        )
    if ElectorateEntry.objects.filter(member=current, proposal__state="open").exists():
        raise MemberInUse(
            f"{current.external_id} may vote on an open proposal; removing them would change a "
            "running vote. Try again when voting has closed."
        )


def member_actor(member: Membership) -> tuple[AbstractBaseUser | None, str]:
    # Members without a login of their own are named by their pseudonymous external id.
    return member.user, (member.user.get_username() if member.user else member.external_id)
