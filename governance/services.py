"""Governance writes. Keyword-only, typed, one transaction each, audited in that transaction."""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from typing import Any, Final, TypeVar

from django.contrib.auth.models import AbstractBaseUser
from django.db import models, transaction
from django.utils import timezone

from governance import audit_chain
from governance.charter import Charter, default_charter
from governance.errors import InvalidVersionParent, LastAdmin, MemberInUse, StaleVersion
from governance.models import (
    AuditEntry,
    CharterVersion,
    Community,
    ElectorateEntry,
    Membership,
    PolicyVersion,
)
from ranking.policy import Policy, default_policy

ACTIONS: Final = frozenset(
    {
        "community.created",
        "policy_version.created",
        "policy_version.made_current",
        "charter_version.created",
        "charter_version.made_current",
        "membership.created",
        "membership.role_changed",
        "membership.removed",
        "feed_run.requested",
        "feed_run.started",
        "feed_run.finished",
        "member.choices_changed",
        "member.data_deleted",
        "creator.choices_changed",
        "creator.member_linked",
        "app_credential.created",
        "app_credential.revoked",
        "proposal.created",
        "proposal.updated",
        "proposal.opened",
        "proposal.withdrawn",
        "proposal.closed",
        "proposal.ratified",
        "proposal.conflicted",
        "ballot.cast",
        "ballot.changed",
    }
)
SYSTEM_ACTOR: Final = "system"
# High 32 bits of the advisory lock key, so audit locks never collide with another feature's.
_AUDIT_LOCK_NAMESPACE: Final = zlib.crc32(b"commonfeed.audit") & 0x7FFFFFFF

VersionModel = TypeVar("VersionModel", PolicyVersion, CharterVersion)


def community_lock_key(*, community_id: int) -> int:
    """The PostgreSQL advisory lock key of a community (see ``community_lock``)."""
    # Distinct communities may share a key only past 2**32 ids; that costs waiting, not safety.
    return (_AUDIT_LOCK_NAMESPACE << 32) | (community_id & 0xFFFFFFFF)


def community_lock_id(*, community_id: int) -> None:
    """``community_lock`` by the community's id."""
    connection = transaction.get_connection()
    if not connection.in_atomic_block:
        raise RuntimeError("community_lock must be taken inside transaction.atomic()")
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT pg_advisory_xact_lock(%s)", [community_lock_key(community_id=community_id)]
            )


def community_lock(*, community: Community) -> None:
    """Serialise governance writes (audit appends, version numbers) of one community.

    Held until the caller's transaction ends. On PostgreSQL this is a transaction-level advisory
    lock keyed by the community, so other communities never wait and no row is locked (a
    ``SELECT ... FOR UPDATE`` on the community row would also block every insert referencing it).
    SQLite needs nothing: the project opens transactions with BEGIN IMMEDIATE, which takes the
    database's single write lock.
    """
    community_lock_id(community_id=community.pk)


def _actor_fields(
    actor: AbstractBaseUser | None, actor_label: str | None
) -> tuple[AbstractBaseUser | None, str]:
    user = actor if actor is not None and actor.is_authenticated else None
    if actor_label is None:
        actor_label = user.get_username() if user is not None else SYSTEM_ACTOR
    return user, actor_label


def _append_connection(action: str) -> Any:
    connection = transaction.get_connection()
    if not connection.in_atomic_block:
        raise RuntimeError(
            "audit_append must be called inside the transaction.atomic() block of the change "
            "it records"
        )
    if action not in ACTIONS:
        raise ValueError(f"unknown audit action {action!r}")
    return connection


def audit_append(
    *,
    community: Community,
    actor: AbstractBaseUser | None,
    action: str,
    obj: models.Model,
    payload: dict[str, Any],
    actor_label: str | None = None,
) -> AuditEntry:
    """Append an entry to the community's audit chain.

    Must run inside the transaction of the change it records (so neither exists without the
    other). The community lock makes concurrent appends queue up; the (community, seq) unique
    constraint turns any append that slipped past it into an error rather than a fork.
    """
    _append_connection(action)
    if obj.pk is None:
        raise ValueError("audit the object after saving it: it has no primary key yet")
    user, label = _actor_fields(actor, actor_label)
    payload_json = audit_chain.canonical_json(payload)
    community_lock(community=community)
    entry = audit_append_locked(
        community_id=community.pk,
        actor_id=user.pk if user is not None else None,
        actor_label=label,
        action=action,
        object_type=obj._meta.label_lower,
        object_id=str(obj.pk),
        payload_json=payload_json,
    )
    assert entry is not None  # no only_if condition
    entry.community = community
    return entry


def audit_append_locked(
    *,
    community_id: int,
    actor_id: int | None,
    actor_label: str,
    action: str,
    object_type: str,
    object_id: str,
    payload_json: str,
    only_if: tuple[str, Sequence[Any]] | None = None,
) -> AuditEntry | None:
    """Append an entry to the chain of a community whose ``community_lock`` the caller holds.

    ``audit_append`` for callers that took the lock themselves (a ballot). From the lock to the
    commit every other writer of the community waits, so this part is short: one statement
    reads the chain head (and ``only_if``), then one inserts the entry, hashed here by
    ``governance.audit_chain``, the one place the hash is computed. ``only_if`` is an SQL
    boolean expression with its parameters, evaluated under the lock (so it sees every write
    committed before the lock was granted); when it is false nothing is written and ``None`` is
    returned.
    """
    connection = _append_connection(action)
    condition, condition_params = only_if if only_if is not None else ("1 = 1", ())
    fields = {
        "actor_id": actor_id,
        "actor_label": actor_label,
        "action": action,
        "object_type": object_type,
        "object_id": object_id,
        "payload_json": payload_json,
    }
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT head.seq, head.entry_hash, ({condition}) {_HEAD_FROM}",
            [*condition_params, community_id],
        )
        head_seq, head_hash, allowed = cursor.fetchone()
        if not allowed:
            return None
        seq = head_seq + 1 if head_seq else 1
        prev_hash = head_hash if head_seq else audit_chain.GENESIS_HASH
        # Whole microseconds: what both databases store, and what gets hashed.
        created_at = timezone.now()
        body = audit_chain.entry_body(
            community=community_id, seq=seq, created_at=created_at, **fields
        )
        entry_hash = audit_chain.entry_hash(prev_hash, body)
        cursor.execute(
            f"INSERT INTO {_AUDIT_TABLE} (community_id, seq, created_at, {_FIELDS}, "
            "prev_hash, entry_hash) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) "
            "RETURNING id",
            [
                community_id,
                seq,
                connection.ops.adapt_datetimefield_value(created_at),
                *fields.values(),
                prev_hash,
                entry_hash,
            ],
        )
        pk = cursor.fetchone()[0]
    entry = AuditEntry(
        pk=pk,
        community_id=community_id,
        seq=seq,
        created_at=created_at,
        prev_hash=prev_hash,
        entry_hash=entry_hash,
        **fields,
    )
    # A stored row now: saving it again would be a rewrite, which the model refuses.
    entry._state.adding = False
    entry._state.db = connection.alias
    return entry


_AUDIT_TABLE: Final = AuditEntry._meta.db_table
_FIELDS: Final = "actor_id, actor_label, action, object_type, object_id, payload_json"
# One row, holding the chain head's columns or NULLs while the chain is empty.
_HEAD_FROM: Final = (
    f"FROM (SELECT 1 AS one) AS one LEFT JOIN (SELECT seq, entry_hash FROM {_AUDIT_TABLE} "
    "WHERE community_id = %s ORDER BY seq DESC LIMIT 1) AS head ON 1 = 1"
)


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
        user, _ = _actor_fields(actor, actor_label)
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
