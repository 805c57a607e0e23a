"""What a feed run reads: the interactions (binary COPY on PostgreSQL), the active items' attributes
and the members' and creators' choices, as the ranking library takes them."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
from django.conf import settings
from django.db import connection
from django.db.models import Max
from django.utils import timezone

from feeds.choices.services import RankingChoices, ranking_choices_load
from feeds.models import (
    Interaction,
    Item,
    ItemCreator,
)
from governance.models import Community, Membership
from ranking.effects import ItemAttributes
from ranking.policy import (
    Policy,
)

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class _TrainingData:
    member_ids: np.ndarray
    item_ids: np.ndarray
    weights: np.ndarray
    feed_members: np.ndarray
    candidate_items: np.ndarray
    watermark: int


def _load_training_data(community: Community) -> _TrainingData:
    """Read the community's interactions, members and active items as arrays, in bulk."""
    watermark = Interaction.objects.filter(community=community).aggregate(m=Max("id"))["m"] or 0
    if connection.vendor == "postgresql":
        member_ids, item_ids, weights = _interactions_copy(community.pk, watermark)
    else:
        rows = Interaction.objects.filter(community=community, id__lte=watermark).values_list(
            "member_id", "item_id", "weight"
        )
        data = np.array(list(rows.iterator(chunk_size=50_000)), dtype=np.float64).reshape(-1, 3)
        member_ids, item_ids = data[:, 0].astype(np.int64), data[:, 1].astype(np.int64)
        weights = data[:, 2].astype(np.float32)
    feed_members = np.fromiter(
        # Ascending ids: each shard's members are then one id range (FeedRunShard).
        Membership.objects.filter(community=community).order_by("id").values_list("id", flat=True),
        dtype=np.int64,
    )
    candidate_items = np.fromiter(
        Item.objects.filter(community=community, active=True).values_list("id", flat=True),
        dtype=np.int64,
    )
    return _TrainingData(
        member_ids=member_ids,
        item_ids=item_ids,
        weights=weights,
        feed_members=feed_members,
        candidate_items=candidate_items,
        watermark=watermark,
    )


# One row of PostgreSQL's binary COPY of (bigint, bigint, float8): a field count, then each
# field's length and big-endian value.
_COPY_ROW = np.dtype(
    [
        ("fields", ">i2"),
        ("member_length", ">i4"),
        ("member", ">i8"),
        ("item_length", ">i4"),
        ("item", ">i8"),
        ("weight_length", ">i4"),
        ("weight", ">f8"),
    ]
)

_COPY_SIGNATURE = b"PGCOPY\n\xff\r\n\x00"


def _interactions_copy(
    community_id: int, watermark: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """PostgreSQL: the interactions as arrays through one binary COPY (no row objects)."""
    table = Interaction._meta.db_table
    query = (
        f"COPY (SELECT member_id::bigint, item_id::bigint, weight::float8 FROM {table} "
        f"WHERE community_id = {int(community_id)} AND id <= {int(watermark)}) "
        "TO STDOUT (FORMAT binary)"
    )
    buffer = bytearray()
    connection.ensure_connection()
    with connection.connection.cursor() as cursor, cursor.copy(query) as copy:
        for block in copy:
            buffer += block
    # Header: signature, flags (int32), extension length (int32, 0 here); trailer: int16 -1.
    if bytes(buffer[:11]) != _COPY_SIGNATURE or bytes(buffer[15:19]) != b"\x00\x00\x00\x00":
        raise RuntimeError("unexpected header in PostgreSQL's binary COPY output")
    rows = np.frombuffer(memoryview(buffer)[19 : len(buffer) - 2], dtype=_COPY_ROW)
    if rows.size and not (rows["fields"] == 3).all():
        raise RuntimeError("unexpected row in PostgreSQL's binary COPY output")
    return (
        rows["member"].astype(np.int64),
        rows["item"].astype(np.int64),
        rows["weight"].astype(np.float32),
    )


def _load_item_attributes(
    community: Community, *, after_id: int = 0
) -> tuple[ItemAttributes, dict[int, list[str]]]:
    """The active items' primary creator, provenance, age and tags, for the policy's effects
    (only those with an id above ``after_id``: items published after a run).

    Also returns each active item's tags, which members' tag mutes are resolved against.
    """
    now = timezone.now()
    items = list(
        Item.objects.filter(community=community, active=True, pk__gt=after_id)
        .order_by("id")
        .values_list("id", "external_id", "provenance", "published_at", "tags")
    )
    primary = dict(
        (item_id, (creator_id, key))
        for item_id, creator_id, key in ItemCreator.objects.filter(
            item__community=community, item__active=True, item_id__gt=after_id, position=0
        ).values_list("item_id", "creator_id", "creator__external_id")
    )
    attributes = ItemAttributes.from_records(
        [row[0] for row in items],
        creator_ids=[primary.get(row[0], (-1, ""))[0] for row in items],
        creator_keys=[primary.get(row[0], (-1, ""))[1] for row in items],
        item_keys=[row[1] for row in items],
        provenance=[row[2] for row in items],
        age_days=[
            (now - row[3]).total_seconds() / 86_400 if row[3] is not None else float("nan")
            for row in items
        ],
        tags=[row[4] or [] for row in items],
    )
    return attributes, {row[0]: row[4] or [] for row in items}


@dataclass(frozen=True)
class _RunInputs:
    """Everything a run reads: interactions, the active catalogue, members' and creators'
    choices. The preview (``served_feeds_compute``) reads the same, so it ranks as a run does."""

    data: _TrainingData
    attributes: ItemAttributes
    choices: RankingChoices

    def prepare_arguments(
        self, policy: Policy, feed_members: np.ndarray | None = None
    ) -> dict[str, Any]:
        data, choices = self.data, self.choices
        return {
            "member_ids": data.member_ids,
            "item_ids": data.item_ids,
            "weights": data.weights,
            "policy": policy,
            "feed_members": data.feed_members if feed_members is None else feed_members,
            "candidate_items": data.candidate_items,
            "n": settings.COMMONFEED_FEED_LENGTH,
            "item_attributes": self.attributes,
            "refused_items": choices.refused_items,
            "member_blocks": choices.member_blocks,
            "no_personalisation_members": choices.no_personalisation_members,
            "no_training_members": choices.no_training_members,
        }


def _run_inputs(community: Community) -> _RunInputs:
    data = _load_training_data(community)
    attributes, item_tags = _load_item_attributes(community)
    choices = ranking_choices_load(community=community, item_tags=item_tags)
    return _RunInputs(data=data, attributes=attributes, choices=choices)
