"""Governance reads."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from django.db.models import QuerySet

from governance import audit_chain
from governance.charter import Charter
from governance.models import AuditEntry, CharterVersion, Community, PolicyVersion
from ranking.policy import Policy

_AUDIT_COLUMNS = (
    "community_id",
    "seq",
    "created_at",
    "actor_id",
    "actor_label",
    "action",
    "object_type",
    "object_id",
    "payload_json",
    "prev_hash",
    "entry_hash",
)


def policy_version_current(*, community: Community) -> PolicyVersion:
    """The community's current policy version (there is exactly one; the database guarantees it)."""
    return PolicyVersion.objects.get(community=community, is_current=True)


def policy_of(version: PolicyVersion) -> Policy:
    """Parse a stored policy document."""
    return Policy.model_validate(version.document)


def charter_version_current(*, community: Community) -> CharterVersion:
    """The community's current charter version."""
    return CharterVersion.objects.get(community=community, is_current=True)


def charter_of(version: CharterVersion) -> Charter:
    """Parse a stored charter document."""
    return Charter.model_validate(version.document)


def audit_entries(*, community: Community | None = None) -> QuerySet[AuditEntry]:
    """Audit entries in chain order: by community, then seq."""
    entries = AuditEntry.objects.order_by("community_id", "seq")
    return entries if community is None else entries.filter(community=community)


def audit_stream(
    *, community: Community | None = None, chunk_size: int = 5_000
) -> Iterator[audit_chain.StoredEntry]:
    """Stream entries in chain order, chunked (a server-side cursor on PostgreSQL)."""
    rows = audit_entries(community=community).values_list(*_AUDIT_COLUMNS)
    for row in rows.iterator(chunk_size=chunk_size):
        body = audit_chain.entry_body(
            community=row[0],
            seq=row[1],
            created_at=row[2],
            actor_id=row[3],
            actor_label=row[4],
            action=row[5],
            object_type=row[6],
            object_id=row[7],
            payload_json=row[8],
        )
        yield audit_chain.StoredEntry(body=body, prev_hash=row[9], entry_hash=row[10])


def audit_locate(community_id: int, entry_hash: str) -> Any:
    """The seq of the community's entry with this hash, or None (used to diagnose reordering)."""
    return (
        AuditEntry.objects.filter(community_id=community_id, entry_hash=entry_hash)
        .values_list("seq", flat=True)
        .first()
    )


def audit_verify(*, community: Community | None = None) -> list[audit_chain.ChainState]:
    """Recompute every chain (or one community's) and return each chain's state."""
    return list(audit_chain.verify_chains(audit_stream(community=community), locate=audit_locate))
