"""Writing a run's feed rows: COPY on PostgreSQL, bulk inserts elsewhere."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator

import numpy as np
from django.db import connection

from feeds.models import (
    MemberFeed,
)
from feeds.runs.copytext import feed_copy_text
from ranking.pipeline import FeedBatch

logger = logging.getLogger(__name__)


WRITE_BATCH = 2_000


def _bulk_create_rows(run_id: int, rows: Iterable[FeedRow]) -> None:
    MemberFeed.objects.bulk_create(
        [
            MemberFeed(
                run_id=run_id,
                member_id=member,
                item_ids=items,
                scores=row_scores,
                base_scores=row_base,
                reasons=reasons,
            )
            for member, items, row_scores, row_base, reasons in rows
        ],
        batch_size=WRITE_BATCH,
    )


# (member, item ids, scores, base scores, reasons): one MemberFeed row.
FeedRow = tuple[int, list[int], list[float], list[float], list[int]]


def _feed_rows(batch: FeedBatch) -> Iterator[FeedRow]:
    """``(member, item ids, scores, base scores, reasons)`` per member, padding dropped."""
    valid = batch.item_ids >= 0
    scores = np.round(batch.scores.astype(np.float64), 6)
    base_scores = np.round(batch.base_scores.astype(np.float64), 6)
    return (
        (
            int(batch.member_ids[r]),
            batch.item_ids[r][valid[r]].tolist(),
            scores[r][valid[r]].tolist(),
            base_scores[r][valid[r]].tolist(),
            batch.reasons[r][valid[r]].tolist(),
        )
        for r in range(len(batch.member_ids))
    )


def _copy_rows(run_id: int, batch: FeedBatch) -> None:
    """PostgreSQL: stream the rows with COPY (several times faster than INSERTs), their text
    laid out by numpy (feeds.runs.copytext) rather than number by number."""
    table = MemberFeed._meta.db_table
    columns = "run_id, member_id, item_ids, scores, base_scores, reasons"
    connection.ensure_connection()
    with (
        connection.connection.cursor() as cursor,
        cursor.copy(f"COPY {table} ({columns}) FROM STDIN") as copy,
    ):
        for block in feed_copy_text(
            run_id,
            batch.member_ids,
            batch.item_ids,
            batch.scores,
            batch.base_scores,
            batch.reasons,
        ):
            copy.write(block)
