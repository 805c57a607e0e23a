"""The audit log's hash construction and a streaming verifier. Pure Python, no Django.

An entry's *body* is the JSON object of its fields (everything but the two hashes). Following
RFC 9162 (Certificate Transparency 2.0), leaves and links are hashed with different one-byte
prefixes, so a leaf can never be passed off as a link or the other way round::

    leaf_hash  = SHA-256(0x00 || canonical_json(body))
    entry_hash = SHA-256(0x01 || prev_hash || leaf_hash)      (hashes as 32 raw bytes)

``prev_hash`` is the previous entry's ``entry_hash`` in the same community, 32 zero bytes for
seq 1. ``canonical_json`` sorts keys, uses no whitespace, keeps non-ASCII characters as UTF-8 and
refuses NaN and infinities. docs/audit.md gives the same algorithm as a standalone verifier.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any, Final

FORMAT_VERSION: Final = 1
GENESIS_HASH: Final = "0" * 64
HASH_FIELDS: Final = ("prev_hash", "entry_hash")


def canonical_json(data: Any) -> str:
    """Deterministic JSON: sorted keys, compact separators, UTF-8, no NaN or infinities."""
    return json.dumps(
        data, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    )


def format_timestamp(moment: datetime) -> str:
    """UTC, microseconds, ``Z``: the one spelling of a timestamp that goes into a hash."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def entry_body(
    *,
    community: int,
    seq: int,
    created_at: datetime,
    actor_id: int | None,
    actor_label: str,
    action: str,
    object_type: str,
    object_id: str,
    payload_json: str,
) -> dict[str, Any]:
    """The hashed content of an entry, exactly as it appears (with the hashes) in an export."""
    return {
        "v": FORMAT_VERSION,
        "community": community,
        "seq": seq,
        "created_at": format_timestamp(created_at),
        "actor_id": actor_id,
        "actor_label": actor_label,
        "action": action,
        "object_type": object_type,
        "object_id": object_id,
        "payload": json.loads(payload_json),
    }


def export_line(entry: StoredEntry) -> dict[str, Any]:
    """An entry as a third party verifies it: its body plus both hashes (docs/audit.md)."""
    return {**entry.body, "prev_hash": entry.prev_hash, "entry_hash": entry.entry_hash}


def leaf_hash(body: dict[str, Any]) -> bytes:
    return hashlib.sha256(b"\x00" + canonical_json(body).encode()).digest()


def link_hash(prev_hash: str, leaf: bytes) -> str:
    return hashlib.sha256(b"\x01" + bytes.fromhex(prev_hash) + leaf).hexdigest()


def entry_hash(prev_hash: str, body: dict[str, Any]) -> str:
    return link_hash(prev_hash, leaf_hash(body))


@dataclass(frozen=True)
class Problem:
    """The first thing wrong with a chain."""

    community: int
    seq: int
    kind: str  # "gap", "duplicate", "reordered", "broken link", "hash mismatch"
    detail: str

    def __str__(self) -> str:
        return f"seq {self.seq}: {self.kind}: {self.detail}"


@dataclass
class ChainState:
    community: int
    count: int = 0
    head_seq: int = 0
    head_hash: str = GENESIS_HASH
    problem: Problem | None = None


@dataclass(frozen=True)
class StoredEntry:
    body: dict[str, Any]
    prev_hash: str
    entry_hash: str


def verify_chains(
    entries: Iterable[StoredEntry], *, locate: Any = None, start: ChainState | None = None
) -> Iterator[ChainState]:
    """Check entries sorted by (community, seq); yield each community's state when it ends.

    A chain stops being checked at its first problem. ``locate(community, entry_hash)`` (optional)
    returns the seq of the entry with that hash in the community, or None; it is only called once
    a link is broken, to tell a reordering (the predecessor exists elsewhere) from a rewrite.
    ``start`` (optional) resumes one community's chain from a head verified earlier: ``entries``
    then begin after ``start.head_seq``, and the state is yielded even when there are none.
    """
    state: ChainState | None = replace(start) if start is not None else None
    for entry in entries:
        community = entry.body["community"]
        if state is None or state.community != community:
            if state is not None:
                yield state
            state = ChainState(community=community)
        if state.problem is not None:
            continue
        state.problem = _check(state, entry, locate)
        if state.problem is None:
            state.count += 1
            state.head_seq = entry.body["seq"]
            state.head_hash = entry.entry_hash
    if state is not None:
        yield state


def _check(state: ChainState, entry: StoredEntry, locate: Any) -> Problem | None:
    seq = entry.body["seq"]
    expected = state.head_seq + 1

    def problem(kind: str, detail: str, at: int = seq) -> Problem:
        return Problem(community=state.community, seq=at, kind=kind, detail=detail)

    if seq == state.head_seq:
        return problem("duplicate", f"a second entry claims seq {seq}")
    if seq > expected:
        return problem(
            "gap",
            f"entries {expected}..{seq - 1} are missing (next stored entry is seq {seq})"
            if seq > expected + 1
            else f"entry {expected} is missing (next stored entry is seq {seq})",
            at=expected,
        )
    if entry.prev_hash != state.head_hash:
        found = locate(state.community, entry.prev_hash) if locate else None
        if found is not None:
            return problem(
                "reordered",
                f"it links to seq {found}, not to seq {state.head_seq}: entries were moved",
            )
        return problem(
            "broken link", f"prev_hash {entry.prev_hash[:12]}... is not seq {state.head_seq}'s hash"
        )
    if entry_hash(entry.prev_hash, entry.body) != entry.entry_hash:
        return problem("hash mismatch", "the entry's content does not match its entry_hash")
    return None
