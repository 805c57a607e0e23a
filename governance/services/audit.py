"""The audit chain's writes: append an entry under the community lock, hashed by
``governance.audit_chain``, in the transaction of the change it records."""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from typing import Any, Final

from django.contrib.auth.models import AbstractBaseUser
from django.db import models, transaction
from django.utils import timezone

from governance import audit_chain
from governance.models import (
    AuditEntry,
    Community,
)

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


def actor_fields(
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
    user, label = actor_fields(actor, actor_label)
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
