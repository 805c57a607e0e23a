"""Import a MovieLens dataset in RecBole's atomic-file layout into a community.

The layout (e.g. ``ml-100k/``) is five tab-separated files named after the directory, each with a
typed header such as ``user_id:token``: ``.user``, ``.item``, ``.inter``, ``.link`` and
``.directed_by.kg``. Everything is read and validated before the first write, and the writes run
in one transaction, so a malformed file leaves the database exactly as it was.

Mapping (see ``docs/importers.md`` for the reasons):

* users -> ``Membership`` (external id = MovieLens user id, no login); demographics are not kept;
* films -> ``Item`` (tags = genres, provenance human, published Jan 1 of the release year);
* directors -> ``Creator`` (external id and name = Freebase id), credited in file order; films
  with no known director are credited to one shared ``unattributed`` creator;
* ratings -> ``Interaction`` of kind ``rating`` with the stars (1-5) as weight.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from django.db import transaction

from feeds.importers import ImportFileError, Tally, progress, rows_ensure, tables_analyze
from feeds.models import Creator, Interaction, Item, ItemCreator
from governance.models import Community, Membership
from governance.services import community_get_or_create

USER_COLUMNS = ("user_id", "age", "gender", "occupation", "zip_code")
ITEM_COLUMNS = ("item_id", "movie_title", "release_year", "class")
INTER_COLUMNS = ("user_id", "item_id", "rating", "timestamp")
LINK_COLUMNS = ("item_id", "entity_id")
DIRECTED_BY_COLUMNS = ("head_id", "relation_id", "tail_id")

DIRECTED_BY_RELATION = "film.film.directed_by"
UNATTRIBUTED_ID = "unattributed"
UNATTRIBUTED_NAME = "Unattributed"
# MovieLens marks films with no genre by the pseudo-genre "unknown"; as a tag it would group
# unrelated films together, so it is dropped (those films get no tags).
NO_GENRE = "unknown"
KEY_PREFIX = "movielens"
RATING_MIN, RATING_MAX = 1.0, 5.0
YEAR_MIN, YEAR_MAX = 1800, 2100

_EXTERNAL_ID = re.compile(r"^\S{1,255}$")


@dataclass(frozen=True, slots=True)
class Film:
    item_id: str
    title: str
    year: int | None
    genres: tuple[str, ...]
    directors: tuple[str, ...] = ()
    """Directors' Freebase ids in file order; the first is the primary creator."""

    @property
    def published_at(self) -> datetime | None:
        return datetime(self.year, 1, 1, tzinfo=UTC) if self.year is not None else None


@dataclass(frozen=True, slots=True)
class Rating:
    user_id: str
    item_id: str
    stars: float
    timestamp: int

    @property
    def occurred_at(self) -> datetime:
        return datetime.fromtimestamp(self.timestamp, tz=UTC)

    @property
    def idempotency_key(self) -> str:
        return f"{KEY_PREFIX}:{self.user_id}:{self.item_id}:{self.timestamp}"


@dataclass(frozen=True)
class MovieLensData:
    """A fully validated dataset, ready to write."""

    users: list[str]
    films: list[Film]
    ratings: list[Rating]
    warnings: list[str] = field(default_factory=list)

    @property
    def directors(self) -> list[str]:
        """Distinct director ids in order of first appearance (deterministic insert order)."""
        return list(dict.fromkeys(d for film in self.films for d in film.directors))


@dataclass(frozen=True)
class MovieLensImportResult:
    community: Community
    community_created: bool
    members: Tally
    items: Tally
    creators: Tally
    credits: Tally
    interactions: Tally
    directors: int
    films_with_director: int
    films_with_several_directors: int
    films_without_director: int
    warnings: list[str]
    elapsed_s: float


def movielens_import(
    *,
    directory: Path,
    community_slug: str,
    community_name: str | None = None,
    dataset: str | None = None,
    batch_size: int = 5_000,
    show_progress: bool = False,
) -> MovieLensImportResult:
    """Read, validate and write a MovieLens dataset into the community (created if missing).

    Raises ``ImportFileError`` (naming the file and line) before any write if a file is missing
    or malformed. Re-running inserts nothing twice: rows are matched by external id and
    interactions by idempotency key.
    """
    started = time.monotonic()
    name = dataset or directory.name
    data = movielens_read(directory=directory, dataset=name, show_progress=show_progress)
    with transaction.atomic():
        community, community_created = community_get_or_create(
            slug=community_slug, name=community_name or f"MovieLens ({name})"
        )
        # A member "joined" when they first rated, so join dates precede their history.
        first_rated: dict[str, datetime] = {}
        for rating in data.ratings:
            when = rating.occurred_at
            if rating.user_id not in first_rated or when < first_rated[rating.user_id]:
                first_rated[rating.user_id] = when
        members, member_pks = rows_ensure(
            model=Membership,
            community=community,
            objects={
                user_id: Membership(
                    community=community,
                    external_id=user_id,
                    display_name=f"MovieLens user {user_id}",
                    role=Membership.Role.MEMBER,
                    **({"joined_at": first_rated[user_id]} if user_id in first_rated else {}),
                )
                for user_id in data.users
            },
            batch_size=batch_size,
        )
        creator_objects = {
            director: Creator(community=community, external_id=director, name=director)
            for director in data.directors
        }
        if any(not film.directors for film in data.films):
            creator_objects[UNATTRIBUTED_ID] = Creator(
                community=community,
                external_id=UNATTRIBUTED_ID,
                name=UNATTRIBUTED_NAME,
                placeholder=True,
            )
        creators, creator_pks = rows_ensure(
            model=Creator, community=community, objects=creator_objects, batch_size=batch_size
        )
        items, item_pks = rows_ensure(
            model=Item,
            community=community,
            objects={
                film.item_id: Item(
                    community=community,
                    external_id=film.item_id,
                    title=film.title,
                    tags=list(film.genres),
                    provenance=Item.Provenance.HUMAN,
                    published_at=film.published_at,
                )
                for film in data.films
            },
            batch_size=batch_size,
        )
        credits = _credits_ensure(
            community=community,
            films=data.films,
            item_pks=item_pks,
            creator_pks=creator_pks,
            batch_size=batch_size,
        )
        interactions = _ratings_ensure(
            community=community,
            ratings=data.ratings,
            member_pks=member_pks,
            item_pks=item_pks,
            batch_size=batch_size,
            show_progress=show_progress,
        )
    tables_analyze(Membership, Creator, Item, ItemCreator, Interaction)
    return MovieLensImportResult(
        community=community,
        community_created=community_created,
        members=members,
        items=items,
        creators=creators,
        credits=credits,
        interactions=interactions,
        directors=len(data.directors),
        films_with_director=sum(1 for film in data.films if film.directors),
        films_with_several_directors=sum(1 for film in data.films if len(film.directors) > 1),
        films_without_director=sum(1 for film in data.films if not film.directors),
        warnings=data.warnings,
        elapsed_s=time.monotonic() - started,
    )


def movielens_read(
    *, directory: Path, dataset: str | None = None, show_progress: bool = False
) -> MovieLensData:
    """Parse and cross-check all five files; raise ``ImportFileError`` on the first problem."""
    name = dataset or directory.name

    def path_of(suffix: str) -> Path:
        return directory / f"{name}.{suffix}"

    # Fail on a missing file before spending time parsing the others.
    for suffix in ("user", "item", "inter", "link", "directed_by.kg"):
        if not path_of(suffix).is_file():
            raise ImportFileError(path=path_of(suffix), line=None, message="file not found")
    warnings: list[str] = []
    users = _users_read(path=path_of("user"))
    films = _films_read(path=path_of("item"), warnings=warnings)
    entity_to_item = _links_read(path=path_of("link"), films=films)
    directors = _directors_read(
        path=path_of("directed_by.kg"), entity_to_item=entity_to_item, warnings=warnings
    )
    ratings = _ratings_read(
        path=path_of("inter"), users=users, films=films, show_progress=show_progress
    )
    films_with_directors = [
        Film(
            item_id=film.item_id,
            title=film.title,
            year=film.year,
            genres=film.genres,
            directors=tuple(directors.get(film.item_id, ())),
        )
        for film in films.values()
    ]
    return MovieLensData(
        users=list(users), films=films_with_directors, ratings=ratings, warnings=warnings
    )


# --- Parsing ---------------------------------------------------------------------------------


def _rows(path: Path, columns: tuple[str, ...]) -> Iterator[tuple[int, list[str]]]:
    """Yield ``(line number, fields)`` for each data line, after checking the header.

    Header columns are compared by name only: RecBole's type suffixes (``:token``, ``:float``)
    say how RecBole would load a column, not what this importer accepts. Blank lines are skipped.
    """
    if not path.is_file():
        raise ImportFileError(path=path, line=None, message="file not found")
    # Binary mode, decoded line by line: a text-mode file decodes ahead in blocks, so a bad byte
    # would be reported on the wrong line.
    with path.open("rb") as handle:
        header = _decode(handle.readline(), path=path, line=1, encoding="utf-8-sig")
        if not header:
            raise ImportFileError(path=path, line=1, message="the file is empty (no header)")
        names = tuple(column.split(":", 1)[0] for column in header.split("\t"))
        if names != columns:
            raise ImportFileError(
                path=path,
                line=1,
                message=(
                    f"expected the tab-separated header columns {', '.join(columns)} "
                    f"(optionally typed, e.g. {columns[0]}:token); found {header!r}"
                ),
            )
        for line, raw in enumerate(handle, start=2):
            text = _decode(raw, path=path, line=line)
            if not text.strip():
                continue
            fields = text.split("\t")
            if len(fields) != len(columns):
                raise ImportFileError(
                    path=path,
                    line=line,
                    message=(
                        f"expected {len(columns)} tab-separated columns "
                        f"({', '.join(columns)}), found {len(fields)}"
                    ),
                )
            yield line, fields


def _decode(raw: bytes, *, path: Path, line: int, encoding: str = "utf-8") -> str:
    try:
        return raw.decode(encoding).rstrip("\r\n")
    except UnicodeDecodeError as exc:
        raise ImportFileError(
            path=path, line=line, message=f"not valid UTF-8 ({exc.reason})"
        ) from None


def _int(value: str, *, path: Path, line: int, column: str, minimum: int | None = None) -> int:
    try:
        number = int(value)
    except ValueError:
        # RecBole types numeric columns as float, so "881250949.0" is a fair spelling of an int.
        try:
            as_float = float(value)
        except ValueError:
            as_float = math.nan
        if not as_float.is_integer():
            raise ImportFileError(
                path=path, line=line, message=f"{column} {value!r} is not an integer"
            ) from None
        number = int(as_float)
    if minimum is not None and number < minimum:
        raise ImportFileError(
            path=path, line=line, message=f"{column} {value!r} must be at least {minimum}"
        )
    return number


def _id(value: str, *, path: Path, line: int, column: str) -> str:
    """A MovieLens user or film id: a positive integer, stored in canonical form ("012" -> "12")."""
    return str(_int(value, path=path, line=line, column=column, minimum=1))


def _token(value: str, *, path: Path, line: int, column: str) -> str:
    if not _EXTERNAL_ID.match(value):
        raise ImportFileError(
            path=path,
            line=line,
            message=f"{column} {value!r} must be 1 to 255 characters without whitespace",
        )
    return value


def _users_read(*, path: Path) -> dict[str, int]:
    """User ids -> the line that defined them. Age, gender, occupation and zip code are dropped:
    the data model has no place for them and feeds must not be ranked by demographics."""
    users: dict[str, int] = {}
    for line, fields in _rows(path, USER_COLUMNS):
        user_id = _id(fields[0], path=path, line=line, column="user_id")
        if user_id in users:
            raise ImportFileError(
                path=path,
                line=line,
                message=f"duplicate user_id {user_id} (see line {users[user_id]})",
            )
        users[user_id] = line
    return users


def _films_read(*, path: Path, warnings: list[str]) -> dict[str, Film]:
    films: dict[str, Film] = {}
    lines: dict[str, int] = {}
    for line, fields in _rows(path, ITEM_COLUMNS):
        item_id = _id(fields[0], path=path, line=line, column="item_id")
        if item_id in films:
            raise ImportFileError(
                path=path,
                line=line,
                message=f"duplicate item_id {item_id} (see line {lines[item_id]})",
            )
        title = fields[1].strip()
        if not title or len(title) > 500:
            raise ImportFileError(
                path=path, line=line, message="movie_title must be 1 to 500 characters"
            )
        films[item_id] = Film(
            item_id=item_id,
            title=title,
            year=_year(fields[2], path=path, line=line, warnings=warnings),
            genres=tuple(g for g in dict.fromkeys(fields[3].split()) if g != NO_GENRE),
        )
        lines[item_id] = line
    return films


def _year(value: str, *, path: Path, line: int, warnings: list[str]) -> int | None:
    """The release year, or None. Not an error: ml-100k itself has "unkonwn" and "V" here."""
    value = value.strip()
    if not value:
        return None
    if value.isdigit() and YEAR_MIN <= int(value) <= YEAR_MAX:
        return int(value)
    warnings.append(
        f"{path}, line {line}: release_year {value!r} is not a year; the film gets no published_at"
    )
    return None


def _links_read(*, path: Path, films: dict[str, Film]) -> dict[str, str]:
    """Freebase film entity id -> MovieLens item id."""
    entity_to_item: dict[str, str] = {}
    item_lines: dict[str, int] = {}
    for line, fields in _rows(path, LINK_COLUMNS):
        item_id = _id(fields[0], path=path, line=line, column="item_id")
        entity_id = _token(fields[1], path=path, line=line, column="entity_id")
        if item_id not in films:
            raise ImportFileError(
                path=path, line=line, message=f"item_id {item_id} is not in the .item file"
            )
        if item_id in item_lines:
            raise ImportFileError(
                path=path,
                line=line,
                message=f"item_id {item_id} is already linked (line {item_lines[item_id]})",
            )
        if entity_id in entity_to_item:
            raise ImportFileError(
                path=path,
                line=line,
                message=(
                    f"entity_id {entity_id} is already linked to item {entity_to_item[entity_id]}"
                ),
            )
        entity_to_item[entity_id] = item_id
        item_lines[item_id] = line
    return entity_to_item


def _directors_read(
    *, path: Path, entity_to_item: dict[str, str], warnings: list[str]
) -> dict[str, list[str]]:
    """MovieLens item id -> its directors' Freebase ids, in file order, without repeats."""
    directors: dict[str, list[str]] = {}
    unlinked = 0
    for line, fields in _rows(path, DIRECTED_BY_COLUMNS):
        head = _token(fields[0], path=path, line=line, column="head_id")
        if fields[1] != DIRECTED_BY_RELATION:
            raise ImportFileError(
                path=path,
                line=line,
                message=f"relation_id {fields[1]!r} is not {DIRECTED_BY_RELATION}",
            )
        tail = _token(fields[2], path=path, line=line, column="tail_id")
        item_id = entity_to_item.get(head)
        if item_id is None:
            # The knowledge graph may describe films that are not in this dataset.
            unlinked += 1
            continue
        credited = directors.setdefault(item_id, [])
        if tail not in credited:
            credited.append(tail)
    if unlinked:
        warnings.append(f"{path}: {unlinked} lines name a film that is not in the .link file")
    return directors


def _ratings_read(
    *, path: Path, users: dict[str, int], films: dict[str, Film], show_progress: bool
) -> list[Rating]:
    ratings: list[Rating] = []
    seen: dict[tuple[str, str, int], int] = {}
    bar = progress(total=None, desc=f"Reading {path.name}", enabled=show_progress)
    with bar:
        for line, fields in _rows(path, INTER_COLUMNS):
            user_id = _id(fields[0], path=path, line=line, column="user_id")
            item_id = _id(fields[1], path=path, line=line, column="item_id")
            if user_id not in users:
                raise ImportFileError(
                    path=path, line=line, message=f"user_id {user_id} is not in the .user file"
                )
            if item_id not in films:
                raise ImportFileError(
                    path=path, line=line, message=f"item_id {item_id} is not in the .item file"
                )
            try:
                stars = float(fields[2])
            except ValueError:
                stars = math.nan
            if not RATING_MIN <= stars <= RATING_MAX:
                raise ImportFileError(
                    path=path,
                    line=line,
                    message=f"rating {fields[2]!r} is not a number from 1 to 5",
                )
            timestamp = _int(fields[3], path=path, line=line, column="timestamp", minimum=0)
            try:
                datetime.fromtimestamp(timestamp, tz=UTC)
            except (OverflowError, OSError, ValueError):
                raise ImportFileError(
                    path=path, line=line, message=f"timestamp {fields[3]!r} is out of range"
                ) from None
            key = (user_id, item_id, timestamp)
            if key in seen:
                raise ImportFileError(
                    path=path,
                    line=line,
                    message=f"duplicate rating: same user, film and timestamp as line {seen[key]}",
                )
            seen[key] = line
            ratings.append(
                Rating(user_id=user_id, item_id=item_id, stars=stars, timestamp=timestamp)
            )
            bar.update()
    return ratings


# --- Writing ---------------------------------------------------------------------------------


def _credits_ensure(
    *,
    community: Community,
    films: list[Film],
    item_pks: dict[str, int],
    creator_pks: dict[str, int],
    batch_size: int,
) -> Tally:
    credits = [
        ItemCreator(item_id=item_pks[film.item_id], creator_id=creator_pks[creator], position=i)
        for film in films
        for i, creator in enumerate(film.directors or (UNATTRIBUTED_ID,))
    ]
    in_community = ItemCreator.objects.filter(item__community=community)
    before = in_community.count()
    ItemCreator.objects.bulk_create(credits, batch_size=batch_size, ignore_conflicts=True)
    created = in_community.count() - before
    return Tally(created=created, present=len(credits) - created)


def _ratings_ensure(
    *,
    community: Community,
    ratings: list[Rating],
    member_pks: dict[str, int],
    item_pks: dict[str, int],
    batch_size: int,
    show_progress: bool,
) -> Tally:
    in_community = Interaction.objects.filter(community=community)
    before = in_community.count()
    existing = set(
        in_community.filter(idempotency_key__startswith=f"{KEY_PREFIX}:").values_list(
            "idempotency_key", flat=True
        )
    )
    # Interaction ids are the arrival order that training's watermark follows, so insert in
    # the order the ratings happened, not in file order.
    pending = sorted(
        (r for r in ratings if r.idempotency_key not in existing),
        key=lambda r: (r.timestamp, int(r.user_id), int(r.item_id)),
    )
    with progress(total=len(pending), desc="Writing ratings", enabled=show_progress) as bar:
        for start in range(0, len(pending), batch_size):
            batch = [
                Interaction(
                    community=community,
                    member_id=member_pks[r.user_id],
                    item_id=item_pks[r.item_id],
                    kind=Interaction.Kind.RATING,
                    weight=r.stars,
                    occurred_at=r.occurred_at,
                    idempotency_key=r.idempotency_key,
                )
                for r in pending[start : start + batch_size]
            ]
            Interaction.objects.bulk_create(batch, ignore_conflicts=True)
            bar.update(len(batch))
    created = in_community.count() - before
    return Tally(created=created, present=len(ratings) - created)
