"""Bulk loaders that fill a community with members, items, creators and interactions.

The work lives here; the ``import_movielens`` and ``seed_demo`` management commands only parse
arguments and print. See ``docs/importers.md``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from django.db import connection, models
from tqdm import tqdm

from governance.models import Community

T = TypeVar("T")
M = TypeVar("M", bound=models.Model)


class ImportFileError(Exception):
    """An input file is missing or malformed. Raised before anything is written."""

    def __init__(self, *, path: Path, line: int | None, message: str) -> None:
        self.path = path
        self.line = line
        self.message = message
        where = f"{path}, line {line}" if line is not None else str(path)
        super().__init__(f"{where}: {message}")


@dataclass(frozen=True)
class Tally:
    """Rows of one kind that an import wrote, and those it found already there."""

    created: int
    present: int

    @property
    def total(self) -> int:
        return self.created + self.present

    def __str__(self) -> str:
        return f"{self.total:,} ({self.created:,} created, {self.present:,} already present)"


def progress(
    iterable: Iterable[T] | None = None, *, total: int | None, desc: str, enabled: bool
) -> tqdm:
    """A progress bar on stderr, or a silent pass-through.

    ``disable=None`` makes tqdm switch itself off when stderr is not a terminal, so logs and
    pipes from cron or CI never fill with carriage returns.
    """
    return tqdm(
        iterable,
        total=total,
        desc=desc,
        unit=" rows",
        unit_scale=True,
        disable=None if enabled else True,
        leave=False,
        dynamic_ncols=True,
    )


def rows_ensure(
    *,
    model: type[M],
    community: Community,
    objects: dict[str, M],
    batch_size: int,
) -> tuple[Tally, dict[str, int]]:
    """Insert the ``objects`` (keyed by external id) that the community lacks; return all pks.

    Rows already there are left untouched (imports never overwrite), which is what makes a
    re-run a no-op. ``ignore_conflicts`` also covers a concurrent writer inserting the same id.
    """
    existing = _pks_by_external_id(model=model, community=community)
    missing = [obj for external_id, obj in objects.items() if external_id not in existing]
    model.objects.bulk_create(missing, batch_size=batch_size, ignore_conflicts=True)
    # bulk_create with ignore_conflicts sets no pks on PostgreSQL or SQLite, so read them back.
    pks = _pks_by_external_id(model=model, community=community) if missing else existing
    created = sum(1 for external_id in objects if external_id not in existing)
    return Tally(created=created, present=len(objects) - created), pks


def _pks_by_external_id(*, model: type[M], community: Community) -> dict[str, int]:
    return dict(model.objects.filter(community=community).values_list("external_id", "pk"))


def tables_analyze(*model_classes: type[models.Model]) -> None:
    """After a bulk load, refresh PostgreSQL's planner statistics of these tables.

    Autovacuum gets to a freshly loaded table only later; until then the planner works from the
    empty table's estimates and may pick plans that are far off (after 20M interactions were
    seeded, a member's interactions were read through a bitmap of the whole community's rows:
    0.75 s instead of a few milliseconds). ANALYZE samples a fixed number of rows, so it takes
    seconds even on large tables. Outside the importer's transaction, so the statistics see the
    committed rows. Nothing to do on SQLite.
    """
    if connection.vendor != "postgresql":
        return
    with connection.cursor() as cursor:
        for model in model_classes:
            cursor.execute(f"ANALYZE {connection.ops.quote_name(model._meta.db_table)}")
