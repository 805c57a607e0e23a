"""Ingestion from apps: upsert members, creators and items; record interaction events.

Every batch is all-or-nothing: rows are checked first (shape by the API's serializers, references
here, in bulk), and a batch with any bad row writes nothing and reports every bad row by index.
Writes are bulk statements, a few per batch whatever its size.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from django.db import transaction
from django.utils import timezone

from feeds.models import Creator, Interaction, Item, ItemCreator
from governance.models import Community, Membership

MAX_BATCH = 1_000

# Weight of an event when the app does not send one: how strongly each kind signals interest.
# A skip is not interest: weight 0 never trains the model (see ranking.policy.ModelParams).
DEFAULT_WEIGHTS: dict[str, float] = {
    "view": 1.0,
    "like": 3.0,
    "save": 4.0,
    "share": 5.0,
    "skip": 0.0,
    "rating": 1.0,  # never used: the API requires a rating's weight
}


@dataclass(frozen=True)
class RowError:
    index: int
    field: str
    message: str

    def as_dict(self) -> dict[str, Any]:
        return {"index": self.index, "field": self.field, "message": self.message}


class BatchRejected(Exception):
    """The batch has bad rows; nothing was written."""

    def __init__(self, errors: Sequence[RowError]) -> None:
        super().__init__(f"{len(errors)} bad row(s)")
        self.errors = list(errors)


@dataclass(frozen=True)
class UpsertResult:
    created: int
    updated: int


@dataclass(frozen=True)
class IngestResult:
    accepted: int
    duplicates: int
    duplicate_ids: list[str] = field(default_factory=list)


def _duplicate_ids(rows: Sequence[dict[str, Any]], key: str) -> list[RowError]:
    seen: dict[str, int] = {}
    errors = []
    for index, row in enumerate(rows):
        value = row[key]
        if value in seen:
            errors.append(
                RowError(index, key, f"{value!r} appears twice in the batch (row {seen[value]})")
            )
        else:
            seen[value] = index
    return errors


def _existing(model: type[Any], community: Community, external_ids: set[str]) -> dict[str, int]:
    return dict(
        model.objects.filter(community=community, external_id__in=external_ids).values_list(
            "external_id", "pk"
        )
    )


@transaction.atomic
def members_upsert(*, community: Community, rows: Sequence[dict[str, Any]]) -> UpsertResult:
    """Create members by external id, or update their display name."""
    errors = _duplicate_ids(rows, "id")
    if errors:
        raise BatchRejected(errors)
    existing = _existing(Membership, community, {r["id"] for r in rows})
    objects = [
        Membership(
            community=community,
            external_id=r["id"],
            display_name=r.get("display_name", ""),
        )
        for r in rows
    ]
    Membership.objects.bulk_create(
        objects,
        update_conflicts=True,
        unique_fields=["community", "external_id"],
        update_fields=["display_name"],
    )
    return UpsertResult(created=len(rows) - len(existing), updated=len(existing))


@transaction.atomic
def creators_upsert(*, community: Community, rows: Sequence[dict[str, Any]]) -> UpsertResult:
    """Create creators by external id, or update their name."""
    errors = _duplicate_ids(rows, "id")
    if errors:
        raise BatchRejected(errors)
    existing = _existing(Creator, community, {r["id"] for r in rows})
    Creator.objects.bulk_create(
        [Creator(community=community, external_id=r["id"], name=r["name"]) for r in rows],
        update_conflicts=True,
        unique_fields=["community", "external_id"],
        update_fields=["name"],
    )
    return UpsertResult(created=len(rows) - len(existing), updated=len(existing))


@transaction.atomic
def items_upsert(*, community: Community, rows: Sequence[dict[str, Any]]) -> UpsertResult:
    """Create or update items by external id, with their creators in credit order.

    Every creator must exist already (upsert creators first); an item's credits are replaced by
    the list given.
    """
    errors = _duplicate_ids(rows, "id")
    creator_ids = {c for r in rows for c in r["creators"]}
    creators = _existing(Creator, community, creator_ids)
    for index, row in enumerate(rows):
        missing = [c for c in row["creators"] if c not in creators]
        if missing:
            errors.append(RowError(index, "creators", f"unknown creator(s): {', '.join(missing)}"))
        if len(set(row["creators"])) != len(row["creators"]):
            errors.append(RowError(index, "creators", "a creator is listed twice"))
    if errors:
        raise BatchRejected(sorted(errors, key=lambda e: e.index))

    existing = _existing(Item, community, {r["id"] for r in rows})
    fields = ["title", "url", "tags", "provenance", "published_at", "active"]
    Item.objects.bulk_create(
        [
            Item(
                community=community,
                external_id=r["id"],
                title=r["title"],
                url=r.get("url", ""),
                tags=r.get("tags", []),
                provenance=r.get("provenance", Item.Provenance.UNKNOWN),
                published_at=r.get("published_at"),
                active=r.get("active", True),
            )
            for r in rows
        ],
        update_conflicts=True,
        unique_fields=["community", "external_id"],
        update_fields=fields,
    )
    item_pks = _existing(Item, community, {r["id"] for r in rows})
    ItemCreator.objects.filter(item_id__in=item_pks.values()).delete()
    ItemCreator.objects.bulk_create(
        [
            ItemCreator(item_id=item_pks[r["id"]], creator_id=creators[c], position=position)
            for r in rows
            for position, c in enumerate(r["creators"])
        ]
    )
    return UpsertResult(created=len(rows) - len(existing), updated=len(existing))


@transaction.atomic
def events_ingest(*, community: Community, rows: Sequence[dict[str, Any]]) -> IngestResult:
    """Record interaction events, idempotently by event id.

    An event whose id the community has already recorded is a duplicate: it is skipped, never
    updated, so re-sending a batch after a timeout changes nothing.
    """
    errors = _duplicate_ids(rows, "id")
    members = _existing(Membership, community, {r["member"] for r in rows})
    items = _existing(Item, community, {r["item"] for r in rows})
    now = timezone.now()
    for index, row in enumerate(rows):
        if row["member"] not in members:
            errors.append(RowError(index, "member", f"unknown member {row['member']!r}"))
        if row["item"] not in items:
            errors.append(RowError(index, "item", f"unknown item {row['item']!r}"))
        occurred: datetime | None = row.get("occurred_at")
        if occurred is not None and occurred > now + timezone.timedelta(minutes=5):
            errors.append(RowError(index, "occurred_at", "is in the future"))
    if errors:
        raise BatchRejected(sorted(errors, key=lambda e: e.index))

    keys = [r["id"] for r in rows]
    already = set(
        Interaction.objects.filter(community=community, idempotency_key__in=keys).values_list(
            "idempotency_key", flat=True
        )
    )
    fresh = [
        Interaction(
            community=community,
            member_id=members[r["member"]],
            item_id=items[r["item"]],
            kind=r["kind"],
            weight=r["weight"] if r.get("weight") is not None else DEFAULT_WEIGHTS[r["kind"]],
            occurred_at=r.get("occurred_at") or now,
            idempotency_key=r["id"],
        )
        for r in rows
        if r["id"] not in already
    ]
    # ignore_conflicts: a concurrent request sending the same event id cannot fail this batch.
    Interaction.objects.bulk_create(fresh, ignore_conflicts=True)
    return IngestResult(accepted=len(fresh), duplicates=len(already), duplicate_ids=sorted(already))
