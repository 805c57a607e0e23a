"""A synthetic, reproducible community for demos, load tests and fairness experiments.

Everything is drawn from one ``numpy.random.default_rng(seed)`` stream in a fixed order, so the
same arguments always give the same rows. The shapes follow what real platforms show:

* creators' output follows a power law (a few prolific creators, a long tail with one item);
* item popularity follows a power law, damped for recent items (less time to be found);
* member activity is lognormal (most members do little, a few do a lot);
* a share of items is ``ai_generated``, smaller shares ``ai_assisted`` and ``unknown``;
* interactions are mostly views, then likes, saves, shares and a few skips, each kind with its
  own weight, and always happen after the item was published.

Interactions are generated in bulk with numpy (no per-row random calls) and written with
PostgreSQL's binary ``COPY`` into a temporary table, then moved over with
``INSERT ... SELECT ... ON CONFLICT DO NOTHING``; on SQLite with ``executemany``. Idempotency
keys come from (seed, row number), so re-running the same command inserts nothing.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import numpy as np
import numpy.typing as npt
from django.db import connection, transaction
from django.utils import timezone

from feeds.importers import Tally, progress, rows_ensure, tables_analyze
from feeds.models import Creator, Interaction, Item, ItemCreator
from governance.models import Community, Membership
from governance.services import community_get_or_create

TAGS = (
    "music", "film", "books", "news", "science", "tech", "gaming", "sports", "cooking",
    "travel", "nature", "art", "comedy", "politics", "history", "health", "education",
    "fashion", "diy", "pets", "finance", "poetry", "photography", "local",
)  # fmt: skip
# Provenance codes in the order the shares are given to the generator.
PROVENANCES = ("human", "ai_assisted", "ai_generated", "unknown")
# Of the items that are not AI-generated: this share AI-assisted, this share of unknown origin.
AI_ASSISTED_SHARE = 0.10
UNKNOWN_SHARE = 0.05
KINDS = ("view", "like", "save", "share", "skip")
KIND_SHARES = (0.72, 0.14, 0.05, 0.03, 0.06)
# Weights say how strong a signal each kind is when a policy uses ``weighting: weight``. A skip
# is a negative signal; 0 keeps it from adding confidence (ALS confidences cannot be negative).
KIND_WEIGHTS = (1.0, 3.0, 4.0, 5.0, 0.0)
CREATOR_ZIPF_EXPONENT = 0.8
ITEM_ZIPF_EXPONENT = 0.8
MEMBER_ACTIVITY_SIGMA = 1.2
CO_CREATED_SHARE = 0.08
MAX_TAGS = 3
HISTORY = timedelta(days=730)
KEY_PREFIX = "synthetic"
COPY_CHUNK_ROWS = 250_000


@dataclass(frozen=True)
class SyntheticSpec:
    members: int = 2_000
    items: int = 5_000
    creators: int = 500
    interactions: int = 100_000
    seed: int = 42
    ai_share: float = 0.15
    end: datetime = field(default_factory=lambda: _midnight_utc(timezone.now()))
    """Items are published in the two years before ``end``; interactions happen before it.
    Defaults to today's midnight (UTC), so runs on the same day match to the second."""

    def __post_init__(self) -> None:
        for name in ("members", "items", "creators"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        if self.interactions < 0:
            raise ValueError("interactions must not be negative")
        if not 0 <= self.seed < 2**63:
            raise ValueError("seed must be a non-negative 64-bit integer")
        if not 0.0 <= self.ai_share <= 1.0:
            raise ValueError("ai_share must be between 0 and 1")
        if timezone.is_naive(self.end):
            raise ValueError("end must be timezone-aware")


@dataclass(frozen=True)
class Catalogue:
    """Creators and items as arrays, indexed 0..n-1 (external ids ``c{n}``, ``i{n}``)."""

    primary_creator: npt.NDArray[np.int64]
    second_creator: npt.NDArray[np.int64]
    """The co-creator at position 1, or -1."""
    provenance: npt.NDArray[np.int64]
    tags: list[list[str]]
    published: npt.NDArray[np.int64]
    """Unix seconds."""
    popularity: npt.NDArray[np.float64]
    """Unnormalised probability of being the item of an interaction."""
    activity: npt.NDArray[np.float64]
    """Unnormalised probability, per member, of being the member of an interaction."""


@dataclass(frozen=True)
class Interactions:
    """Rows in arrival (= occurred) order; row ``r`` has the key ``synthetic:{seed}:{r}``."""

    member: npt.NDArray[np.int64]
    item: npt.NDArray[np.int64]
    kind: npt.NDArray[np.int64]
    """Index into ``KINDS``."""
    occurred: npt.NDArray[np.int64]
    """Unix seconds."""


@dataclass(frozen=True)
class SeedResult:
    community: Community
    community_created: bool
    members: Tally
    items: Tally
    creators: Tally
    credits: Tally
    interactions: Tally
    elapsed_s: float


def synthetic_generate(*, spec: SyntheticSpec) -> tuple[Catalogue, Interactions]:
    """Draw the whole community. Pure: no database, same spec -> identical arrays."""
    rng = np.random.default_rng(spec.seed)
    catalogue = _catalogue_generate(rng=rng, spec=spec)
    return catalogue, _interactions_generate(rng=rng, spec=spec, catalogue=catalogue)


def seed_demo(
    *,
    community_slug: str,
    spec: SyntheticSpec,
    community_name: str | None = None,
    batch_size: int = 5_000,
    show_progress: bool = False,
) -> SeedResult:
    """Fill the community (created if missing) with the synthetic data ``spec`` describes.

    Insert-only and idempotent: rows already there (by external id or idempotency key) are left
    as they are. One transaction, so an interrupted run leaves nothing behind.
    """
    started = time.monotonic()
    catalogue, interactions = synthetic_generate(spec=spec)
    with transaction.atomic():
        community, community_created = community_get_or_create(
            slug=community_slug, name=community_name
        )
        members, member_pks = rows_ensure(
            model=Membership,
            community=community,
            objects={
                f"m{n}": Membership(
                    community=community,
                    external_id=f"m{n}",
                    display_name=f"Member {n}",
                    role=Membership.Role.MEMBER,
                )
                for n in range(spec.members)
            },
            batch_size=batch_size,
        )
        creators, creator_pks = rows_ensure(
            model=Creator,
            community=community,
            objects={
                f"c{n}": Creator(community=community, external_id=f"c{n}", name=f"Creator {n}")
                for n in range(spec.creators)
            },
            batch_size=batch_size,
        )
        published = catalogue.published.tolist()
        items, item_pks = rows_ensure(
            model=Item,
            community=community,
            objects={
                f"i{n}": Item(
                    community=community,
                    external_id=f"i{n}",
                    title=f"Item {n} ({catalogue.tags[n][0]})",
                    tags=catalogue.tags[n],
                    provenance=PROVENANCES[p],
                    published_at=datetime.fromtimestamp(published[n], tz=UTC),
                )
                for n, p in enumerate(catalogue.provenance.tolist())
            },
            batch_size=batch_size,
        )
        credits = _credits_ensure(
            community=community,
            catalogue=catalogue,
            item_pks=item_pks,
            creator_pks=creator_pks,
            batch_size=batch_size,
        )
        # Dense index -> primary key, so interaction rows are translated with one numpy gather.
        member_pk = np.array([member_pks[f"m{n}"] for n in range(spec.members)], dtype=np.int64)
        item_pk = np.array([item_pks[f"i{n}"] for n in range(spec.items)], dtype=np.int64)
        in_community = Interaction.objects.filter(community=community)
        before = in_community.count()
        write = _interactions_copy if connection.vendor == "postgresql" else _interactions_insert
        write(
            community=community,
            seed=spec.seed,
            member_pk=member_pk[interactions.member],
            item_pk=item_pk[interactions.item],
            interactions=interactions,
            show_progress=show_progress,
            batch_size=batch_size,
        )
        created = in_community.count() - before
    tables_analyze(Membership, Creator, Item, ItemCreator, Interaction)
    return SeedResult(
        community=community,
        community_created=community_created,
        members=members,
        items=items,
        creators=creators,
        credits=credits,
        interactions=Tally(created=created, present=spec.interactions - created),
        elapsed_s=time.monotonic() - started,
    )


# --- Generation ------------------------------------------------------------------------------


def _midnight_utc(moment: datetime) -> datetime:
    return moment.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)


def _zipf_weights(rng: np.random.Generator, n: int, exponent: float) -> npt.NDArray[np.float64]:
    """Weights ``1 / rank**exponent`` with the ranks shuffled, so index order means nothing."""
    ranks = rng.permutation(n) + 1
    return 1.0 / ranks.astype(np.float64) ** exponent


def _draw(
    rng: np.random.Generator, weights: npt.NDArray[np.float64], size: int
) -> npt.NDArray[np.int64]:
    """``size`` indices drawn with probability proportional to ``weights`` (inverse CDF)."""
    cdf = np.cumsum(weights)
    cdf /= cdf[-1]
    picks = np.searchsorted(cdf, rng.random(size), side="right")
    # Guard against the last cdf value rounding below a draw of 0.999...
    return np.minimum(picks, len(weights) - 1).astype(np.int64)


def _catalogue_generate(*, rng: np.random.Generator, spec: SyntheticSpec) -> Catalogue:
    n_items, n_creators = spec.items, spec.creators
    # Creators: a power law of output. Each creator gets one item first when there are enough
    # items, so the long tail is "one item each" rather than creators with nothing at all.
    prolific = _zipf_weights(rng, n_creators, CREATOR_ZIPF_EXPONENT)
    guaranteed = np.arange(n_creators if n_creators <= n_items else 0, dtype=np.int64)
    rest = _draw(rng, prolific, n_items - len(guaranteed))
    primary = rng.permutation(np.concatenate([guaranteed, rest]))
    second = np.full(n_items, -1, dtype=np.int64)
    if n_creators > 1:
        co_created = rng.random(n_items) < CO_CREATED_SHARE
        partners = _draw(rng, prolific, n_items)
        partners = np.where(partners == primary, (partners + 1) % n_creators, partners)
        second[co_created] = partners[co_created]

    not_ai = 1.0 - spec.ai_share
    shares = np.array(
        [
            not_ai * (1.0 - AI_ASSISTED_SHARE - UNKNOWN_SHARE),
            not_ai * AI_ASSISTED_SHARE,
            spec.ai_share,
            not_ai * UNKNOWN_SHARE,
        ]
    )
    provenance = rng.choice(len(PROVENANCES), size=n_items, p=shares / shares.sum())

    # Tags: 1-3 per item without repeats, common tags more likely. Gumbel top-k draws weighted
    # samples without replacement for all items at once.
    tag_weights = 1.0 / np.arange(1, len(TAGS) + 1) ** 0.8
    keys = np.log(tag_weights) + rng.gumbel(size=(n_items, len(TAGS)))
    top = np.argsort(-keys, axis=1)[:, :MAX_TAGS]
    counts = rng.integers(1, MAX_TAGS + 1, size=n_items)
    tags = [
        [TAGS[t] for t in row[:k]] for row, k in zip(top.tolist(), counts.tolist(), strict=True)
    ]

    end = int(spec.end.timestamp())
    span = int(HISTORY.total_seconds())
    # Published at least a day before ``end``, so every item has time to be interacted with.
    age = rng.integers(86_400, span, size=n_items, endpoint=True)
    published = end - age
    # Popularity: a power law, damped for young items (they have had less time to spread).
    popularity = _zipf_weights(rng, n_items, ITEM_ZIPF_EXPONENT) * (0.2 + 0.8 * age / span)
    activity = rng.lognormal(mean=0.0, sigma=MEMBER_ACTIVITY_SIGMA, size=spec.members)
    return Catalogue(
        primary_creator=primary,
        second_creator=second,
        provenance=provenance.astype(np.int64),
        tags=tags,
        published=published.astype(np.int64),
        popularity=popularity,
        activity=activity,
    )


def _interactions_generate(
    *, rng: np.random.Generator, spec: SyntheticSpec, catalogue: Catalogue
) -> Interactions:
    n = spec.interactions
    member = _draw(rng, catalogue.activity, n)
    item = _draw(rng, catalogue.popularity, n)
    kind = _draw(rng, np.array(KIND_SHARES), n)
    # Interest is front-loaded: most interactions come soon after publication (Beta(1, 3)).
    published = catalogue.published[item]
    window = int(spec.end.timestamp()) - published
    occurred = published + 1 + np.floor(rng.beta(1.0, 3.0, size=n) * (window - 1)).astype(np.int64)
    # Interaction ids are arrival order (training's watermark follows them): number the rows
    # chronologically so the inserted ids are too.
    order = np.argsort(occurred, kind="stable")
    return Interactions(
        member=member[order], item=item[order], kind=kind[order], occurred=occurred[order]
    )


# --- Writing ---------------------------------------------------------------------------------


def _credits_ensure(
    *,
    community: Community,
    catalogue: Catalogue,
    item_pks: dict[str, int],
    creator_pks: dict[str, int],
    batch_size: int,
) -> Tally:
    credits = [
        ItemCreator(item_id=item_pks[f"i{n}"], creator_id=creator_pks[f"c{c}"], position=0)
        for n, c in enumerate(catalogue.primary_creator.tolist())
    ] + [
        ItemCreator(item_id=item_pks[f"i{n}"], creator_id=creator_pks[f"c{c}"], position=1)
        for n, c in enumerate(catalogue.second_creator.tolist())
        if c >= 0
    ]
    in_community = ItemCreator.objects.filter(item__community=community)
    before = in_community.count()
    ItemCreator.objects.bulk_create(credits, batch_size=batch_size, ignore_conflicts=True)
    created = in_community.count() - before
    return Tally(created=created, present=len(credits) - created)


# PostgreSQL binary COPY: a fixed header, then per row a field count and (length, value) pairs
# in network byte order, then a -1 trailer. A packed numpy record array produces the row bytes
# for a whole chunk at once, which is several times faster than formatting text row by row.
_COPY_HEADER = b"PGCOPY\n\xff\r\n\x00" + (0).to_bytes(4, "big") + (0).to_bytes(4, "big")
_COPY_TRAILER = (-1).to_bytes(2, "big", signed=True)
_COPY_ROW = np.dtype(
    [
        ("fields", ">i2"),
        ("row_len", ">i4"), ("row", ">i8"),
        ("member_len", ">i4"), ("member", ">i8"),
        ("item_len", ">i4"), ("item", ">i8"),
        ("kind_len", ">i4"), ("kind", ">i2"),
        ("occurred_len", ">i4"), ("occurred", ">i8"),
    ]
)  # fmt: skip
_STAGING = "seed_demo_staging"


def _copy_rows(
    *,
    start: int,
    member_pk: npt.NDArray[np.int64],
    item_pk: npt.NDArray[np.int64],
    kind: npt.NDArray[np.int64],
    occurred: npt.NDArray[np.int64],
) -> bytes:
    rows = np.empty(len(member_pk), dtype=_COPY_ROW)
    rows["fields"] = 5
    for name, width in (("row", 8), ("member", 8), ("item", 8), ("kind", 2), ("occurred", 8)):
        rows[f"{name}_len"] = width
    rows["row"] = np.arange(start, start + len(member_pk))
    rows["member"] = member_pk
    rows["item"] = item_pk
    rows["kind"] = kind
    rows["occurred"] = occurred
    return _COPY_HEADER + rows.tobytes() + _COPY_TRAILER


def _interactions_copy(
    *,
    community: Community,
    seed: int,
    member_pk: npt.NDArray[np.int64],
    item_pk: npt.NDArray[np.int64],
    interactions: Interactions,
    show_progress: bool,
    batch_size: int,
) -> None:
    """PostgreSQL: COPY each chunk into a temp table, then INSERT ... ON CONFLICT DO NOTHING."""
    del batch_size  # COPY chunks are sized for throughput, not by the ORM batch size.
    table = Interaction._meta.db_table
    received_at = timezone.now()
    with connection.cursor() as cursor:
        # Dropped first in case an earlier call in this transaction (tests) left one behind.
        cursor.execute(f"DROP TABLE IF EXISTS {_STAGING}")
        cursor.execute(
            f"CREATE TEMP TABLE {_STAGING} (row bigint, member_id bigint, item_id bigint, "
            "kind smallint, occurred bigint) ON COMMIT DROP"
        )
        total = len(member_pk)
        with progress(total=total, desc="Writing interactions", enabled=show_progress) as bar:
            for start in range(0, total, COPY_CHUNK_ROWS):
                stop = min(start + COPY_CHUNK_ROWS, total)
                data = _copy_rows(
                    start=start,
                    member_pk=member_pk[start:stop],
                    item_pk=item_pk[start:stop],
                    kind=interactions.kind[start:stop],
                    occurred=interactions.occurred[start:stop],
                )
                with cursor.copy(f"COPY {_STAGING} FROM STDIN (FORMAT BINARY)") as copy:
                    copy.write(data)
                cursor.execute(
                    f"INSERT INTO {table} (community_id, member_id, item_id, kind, weight, "
                    "occurred_at, idempotency_key, received_at) "
                    "SELECT %s, s.member_id, s.item_id, (%s::text[])[s.kind + 1], "
                    "(%s::float8[])[s.kind + 1], to_timestamp(s.occurred), "
                    "%s || s.row::text, %s "
                    f"FROM {_STAGING} s ORDER BY s.row "
                    "ON CONFLICT (community_id, idempotency_key) DO NOTHING",
                    [
                        community.pk,
                        list(KINDS),
                        list(KIND_WEIGHTS),
                        f"{KEY_PREFIX}:{seed}:",
                        received_at,
                    ],
                )
                cursor.execute(f"TRUNCATE {_STAGING}")
                bar.update(stop - start)
        cursor.execute(f"DROP TABLE {_STAGING}")


def _interactions_insert(
    *,
    community: Community,
    seed: int,
    member_pk: npt.NDArray[np.int64],
    item_pk: npt.NDArray[np.int64],
    interactions: Interactions,
    show_progress: bool,
    batch_size: int,
) -> None:
    """SQLite: executemany in batches; ``datetime(?, 'unixepoch')`` spells timestamps the way
    Django stores them ("YYYY-MM-DD HH:MM:SS"), so ORM range filters compare correctly."""
    table = Interaction._meta.db_table
    received_at = connection.ops.adapt_datetimefield_value(timezone.now())
    sql = (
        f"INSERT INTO {table} (community_id, member_id, item_id, kind, weight, occurred_at, "
        "idempotency_key, received_at) VALUES (%s, %s, %s, %s, %s, datetime(%s, 'unixepoch'), "
        "%s, %s) ON CONFLICT (community_id, idempotency_key) DO NOTHING"
    )
    prefix = f"{KEY_PREFIX}:{seed}:"
    total = len(member_pk)
    chunk = max(batch_size, 50_000)
    with (
        connection.cursor() as cursor,
        progress(total=total, desc="Writing interactions", enabled=show_progress) as bar,
    ):
        for start in range(0, total, chunk):
            stop = min(start + chunk, total)
            kinds = interactions.kind[start:stop].tolist()
            cursor.executemany(
                sql,
                [
                    (community.pk, m, i, KINDS[k], KIND_WEIGHTS[k], t, f"{prefix}{r}", received_at)
                    for r, m, i, k, t in zip(
                        range(start, stop),
                        member_pk[start:stop].tolist(),
                        item_pk[start:stop].tolist(),
                        kinds,
                        interactions.occurred[start:stop].tolist(),
                        strict=True,
                    )
                ],
            )
            bar.update(stop - start)
