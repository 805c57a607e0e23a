"""Ingestion from apps: upsert members, creators and items; record interaction events.

Every batch is all-or-nothing: rows are checked first (shape by ``feeds.ingest.schemas``,
references here, in bulk), and a batch with any bad row writes nothing and reports every bad row by
index. Writes are bulk statements, a few per batch whatever its size; events go in with a single
``INSERT ... ON CONFLICT DO NOTHING RETURNING`` on PostgreSQL.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from django.db import connection, transaction
from django.db.models import Max
from django.utils import timezone

from feeds import enqueue
from feeds.choices.services import creator_member_link_audit
from feeds.models import Creator, FeedRun, Interaction, Item, ItemCreator
from feeds.serving import cache as feedcache
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
    """``{external id: pk}`` of the community's rows among ``external_ids``, in one query."""
    if not external_ids:
        return {}
    if connection.vendor != "postgresql":
        return dict(
            model.objects.filter(community=community, external_id__in=external_ids).values_list(
                "external_id", "pk"
            )
        )
    # The ids travel as one array parameter: an IN list of 1,000 parameters costs more to build
    # and send (client-side binding splices each one into the SQL) than the lookup itself.
    # ``= ANY(array)`` rather than ``IN (SELECT json_array_elements_text(...))``: without
    # statistics (a table just filled, before autovacuum's first ANALYZE) the planner ran that
    # subquery once per row of the community, 1 s for 1,000 ids among 5,000 members, where
    # ANY with a constant array is a hashed test per row at worst (docs/benchmarks.md,
    # "Event ingestion").
    meta = model._meta
    quote = connection.ops.quote_name
    external_id = quote(meta.get_field("external_id").column)
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT {external_id}, {quote(meta.pk.column)} FROM {quote(meta.db_table)} "
            f"WHERE {quote(meta.get_field('community').column)} = %s "
            f"AND {external_id} = ANY(%s::text[])",
            [community.pk, list(external_ids)],
        )
        return dict(cursor.fetchall())


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
    """Create creators by external id, or update their name; rows with ``member`` link the
    creator to that member's account (None unlinks), each change audited."""
    errors = _duplicate_ids(rows, "id")
    linking = [(index, r) for index, r in enumerate(rows) if "member" in r]
    accounts = _existing(Membership, community, {r["member"] for _, r in linking if r["member"]})
    errors += [
        RowError(index, "member", f"unknown member {r['member']!r}")
        for index, r in linking
        if r["member"] and r["member"] not in accounts
    ]
    if errors:
        raise BatchRejected(errors)
    existing = _existing(Creator, community, {r["id"] for r in rows})
    names = dict(
        Creator.objects.filter(pk__in=existing.values()).values_list("external_id", "name")
        if existing
        else []
    )
    renamed = any(r["id"] in names and names[r["id"]] != r["name"] for r in rows)
    Creator.objects.bulk_create(
        [Creator(community=community, external_id=r["id"], name=r["name"]) for r in rows],
        update_conflicts=True,
        unique_fields=["community", "external_id"],
        update_fields=["name"],
    )
    if renamed:  # served pages show the names; rows first, then the pointer, like every writer
        feedcache.served_content_changed(community=community)
    if linking:
        _creators_link(community, {r["id"]: accounts.get(r["member"]) for _, r in linking})
    return UpsertResult(created=len(rows) - len(existing), updated=len(existing))


def _creators_link(community: Community, links: dict[str, int | None]) -> None:
    """Set each creator's member account; audit the ones that change (``creator.member_linked``):
    the link lets that account read the creator dashboard and opt the creator out."""
    creators = list(
        Creator.objects.filter(community=community, external_id__in=links)
        .select_related("member")
        .order_by("external_id")
    )
    changed = [c for c in creators if c.member_id != links[c.external_id]]
    if not changed:
        return
    names = dict(
        Membership.objects.filter(pk__in={v for v in links.values() if v}).values_list(
            "pk", "external_id"
        )
    )
    for creator in changed:
        previous = creator.member.external_id if creator.member is not None else None
        creator.member_id = links[creator.external_id]
        creator.community = community
        creator_member_link_audit(
            creator=creator,
            member=names.get(creator.member_id) if creator.member_id else None,
            previous=previous,
        )
    Creator.objects.bulk_update(changed, ["member"])


def _items_change(
    community: Community,
    rows: Sequence[dict[str, Any]],
    existing: dict[str, int],
    creators: dict[str, int],
) -> bool:
    """Whether the batch changes an item that served feeds may show (any field or its
    credits), in three queries. Re-sending an unchanged catalogue changes nothing.

    Only items that existed when the latest finished run read its catalogue can be in a stored
    feed (a fold-in refresh ranks that catalogue only), so an app still editing items it added
    since changes no served page; a minute of margin covers clocks of different machines.
    """
    served_until = FeedRun.objects.filter(
        community=community, status=FeedRun.Status.FINISHED
    ).aggregate(until=Max("finished_at"))["until"]
    if served_until is None:
        return False
    candidates = Item.objects.filter(
        pk__in=existing.values(), created_at__lt=served_until + timedelta(minutes=1)
    )
    stored = {
        external_id: values
        for external_id, *values in candidates.values_list(
            "external_id", "title", "url", "tags", "provenance", "published_at", "active"
        )
    }
    if not stored:
        return False
    credits: dict[int, list[int]] = {}
    for item_id, creator_id in (
        ItemCreator.objects.filter(item_id__in=[existing[key] for key in stored])
        .order_by("item_id", "position")
        .values_list("item_id", "creator_id")
    ):
        credits.setdefault(item_id, []).append(creator_id)
    for r in rows:
        old = stored.get(r["id"])
        if old is None:
            continue
        new = [
            r["title"],
            r.get("url", ""),
            r.get("tags", []),
            r.get("provenance", Item.Provenance.UNKNOWN),
            r.get("published_at"),
            r.get("active", True),
        ]
        if old != new or credits.get(existing[r["id"]], []) != [creators[c] for c in r["creators"]]:
            return True
    return False


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
    changed = bool(existing) and _items_change(community, rows, existing, creators)
    fields = ["title", "url", "tags", "provenance", "published_at", "active"]
    items = Item.objects.bulk_create(
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
    # PostgreSQL and SQLite return every row's pk from the upsert (RETURNING), so no re-read.
    item_pks = {item.external_id: item.pk for item in items}
    if None in item_pks.values():
        item_pks = _existing(Item, community, {r["id"] for r in rows})
    ItemCreator.objects.filter(item_id__in=item_pks.values()).delete()
    ItemCreator.objects.bulk_create(
        [
            ItemCreator(item_id=item_pks[r["id"]], creator_id=creators[c], position=position)
            for r in rows
            for position, c in enumerate(r["creators"])
        ]
    )
    if changed:  # after the rows: writers lock catalogue rows first, then the pointer
        feedcache.served_content_changed(community=community)
    return UpsertResult(created=len(rows) - len(existing), updated=len(existing))


def _events_insert_sql(vendor: str) -> str:
    """The INSERT of events that skips ids the community has already recorded.

    ``ON CONFLICT DO NOTHING`` on the idempotency constraint makes the database the judge of
    duplicates: a concurrent request carrying the same event waits for the other to commit, then
    skips it, so each event is stored once and each request counts it right. ``RETURNING`` names
    the rows this statement inserted. PostgreSQL takes the whole batch as one JSON parameter, an
    array per column (encoding it costs about a millisecond; binding 8,000 parameters, or
    adapting Python lists to arrays, costs several); SQLite as rows of VALUES (the caller adds
    the placeholders).
    """
    meta = Interaction._meta
    quote = connection.ops.quote_name
    columns = ", ".join(
        quote(meta.get_field(name).column)
        for name in (
            "community",
            "member",
            "item",
            "kind",
            "weight",
            "occurred_at",
            "idempotency_key",
            "received_at",
        )
    )
    conflict = (
        f"ON CONFLICT ({quote(meta.get_field('community').column)}, "
        f"{quote(meta.get_field('idempotency_key').column)}) DO NOTHING "
        f"RETURNING {quote(meta.get_field('idempotency_key').column)}"
    )
    if vendor == "postgresql":
        return (
            f"INSERT INTO {quote(meta.db_table)} ({columns}) "
            "SELECT %s, t.m::bigint, t.i::bigint, t.k, t.w::float8, "
            "coalesce(t.o::timestamptz, %s), t.key, %s "
            # jsonb: the text is parsed once, not once per column.
            "FROM (SELECT %s::jsonb AS a) AS batch, ROWS FROM ("
            "jsonb_array_elements_text(a->0), jsonb_array_elements_text(a->1), "
            "jsonb_array_elements_text(a->2), jsonb_array_elements_text(a->3), "
            "jsonb_array_elements_text(a->4), jsonb_array_elements_text(a->5)"
            ") AS t(m, i, k, w, o, key) "
            f"{conflict}"
        )
    return f"INSERT INTO {quote(meta.db_table)} ({columns}) VALUES {{values}} {conflict}"


def _events_insert(
    *,
    community: Community,
    rows: list[tuple[int, int, str, float, datetime | None, str]],
    now: datetime,
) -> set[str]:
    """Insert ``(member pk, item pk, kind, weight, occurred_at, key)`` rows; the keys inserted.

    ``now`` is when they were received, and when they occurred where ``occurred_at`` is None.
    """
    # Rows go in key order: two requests sending overlapping events in different orders would
    # otherwise each wait for the other's uncommitted row (a deadlock PostgreSQL breaks by
    # failing one of them).
    if not rows:
        return set()
    rows = sorted(rows, key=lambda row: row[5])
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            members, items, kinds, weights, times, keys = zip(*rows, strict=True)
            batch = [
                members,
                items,
                kinds,
                weights,
                [None if t is None else t.isoformat() for t in times],
                keys,
            ]
            cursor.execute(
                _events_insert_sql("postgresql"), [community.pk, now, now, json.dumps(batch)]
            )
            return {key for (key,) in cursor.fetchall()}
        inserted: set[str] = set()
        adapt = connection.ops.adapt_datetimefield_value
        received_at = adapt(now)
        per_statement = max(1, connection.features.max_query_params // 8)
        for start in range(0, len(rows), per_statement):
            chunk = rows[start : start + per_statement]
            sql = _events_insert_sql(connection.vendor).format(
                values=", ".join(["(%s, %s, %s, %s, %s, %s, %s, %s)"] * len(chunk))
            )
            params: list[Any] = []
            for member, item, kind, weight, occurred_at, key in chunk:
                occurred = received_at if occurred_at is None else adapt(occurred_at)
                params += [community.pk, member, item, kind, weight, occurred, key, received_at]
            cursor.execute(sql, params)
            inserted.update(key for (key,) in cursor.fetchall())
        return inserted


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
    latest = now + timedelta(minutes=5)
    for index, row in enumerate(rows):
        if row["member"] not in members:
            errors.append(RowError(index, "member", f"unknown member {row['member']!r}"))
        if row["item"] not in items:
            errors.append(RowError(index, "item", f"unknown item {row['item']!r}"))
        occurred: datetime | None = row.get("occurred_at")
        if occurred is not None and occurred > latest:
            errors.append(RowError(index, "occurred_at", "is in the future"))
    if errors:
        raise BatchRejected(sorted(errors, key=lambda e: e.index))

    inserted = _events_insert(
        community=community,
        rows=[
            (
                members[r["member"]],
                items[r["item"]],
                r["kind"],
                r["weight"] if r.get("weight") is not None else DEFAULT_WEIGHTS[r["kind"]],
                r.get("occurred_at"),
                r["id"],
            )
            for r in rows
        ],
        now=now,
    )
    duplicates = sorted(r["id"] for r in rows if r["id"] not in inserted)
    # Fold-in: the members with new events get their served feeds re-ranked once this commits.
    # Every new event counts, a skip too (it makes its item seen, so it leaves the feed);
    # duplicates changed nothing.
    changed = sorted({members[r["member"]] for r in rows if r["id"] in inserted})
    if changed:
        community_id = community.pk
        transaction.on_commit(
            lambda: enqueue.member_feeds_refresh_request(
                community_id=community_id, member_ids=changed
            )
        )
    return IngestResult(
        accepted=len(inserted), duplicates=len(duplicates), duplicate_ids=duplicates
    )
