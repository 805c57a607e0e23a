"""Feed pipeline writes: request a recompute, run it, swap it in; issue app credentials."""

from __future__ import annotations

import itertools
import logging
import secrets
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import numpy as np
from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.db import IntegrityError, connection, transaction
from django.db.models import Exists, F, Max, OuterRef, Q
from django.utils import timezone

from feeds import enqueue
from feeds.artifacts import artifact_load, artifact_save, artifacts_prune
from feeds.choices.services import RankingChoices, ranking_choices_load
from feeds.copytext import feed_copy_text
from feeds.credentials.auth import token_digest, token_generate
from feeds.models import (
    AppCredential,
    FeedPointer,
    FeedRun,
    FeedRunShard,
    Interaction,
    Item,
    ItemCreator,
    MemberChoices,
    MemberFeed,
)
from feeds.serving import cache as feedcache
from feeds.serving import selectors
from governance.models import AuditEntry, Community, Membership, PolicyVersion
from governance.selectors import policy_of, policy_version_current
from governance.services import audit_append
from ranking.effects import ItemAttributes
from ranking.feeds import FeedBatch, PreparedFeeds, prepare_feeds, refresh_feeds, score_feeds
from ranking.policy import (
    PROVENANCE_CLASSES,
    CreatorRefusal,
    ItemRefusal,
    OlderThanRefusal,
    Policy,
    ProvenanceRefusal,
    TagRefusal,
)

logger = logging.getLogger(__name__)

# A run whose current version failed this many times is not retried by the reconciler.
MAX_FAILED_RUNS = 3
# Feeds of this many most recent finished runs are kept; readers mid-request on the previous
# generation still find their rows after a swap.
RUNS_KEPT = 2
WRITE_BATCH = 2_000


def feed_run_request(*, community: Community, queue: str | None = None) -> FeedRun:
    """Record a recompute of the community's feeds under its current policy and enqueue it.

    The task is sent only after the transaction commits, so a worker never looks for a run that
    is not visible yet.
    """
    with transaction.atomic():
        version = policy_version_current(community=community)
        run = FeedRun.objects.create(
            community=community, policy_version=version, policy_sha256=version.sha256
        )
        transaction.on_commit(lambda: enqueue.run_recompute(run_id=run.pk, queue=queue))
    return run


class LostClaim(Exception):
    """Another worker took the run over (this one was presumed dead); stop without swapping."""


def _lease() -> timedelta:
    return timedelta(seconds=settings.COMMONFEED_RUN_LEASE_SECONDS)


def _claim(run_id: int) -> str | None:
    """Compare-and-set the run to RUNNING under a fresh token; None if it is not ours to run.

    A queued run is claimed at once. A running run is taken over only when its holder's
    heartbeat is older than the lease, i.e. the worker died (SIGKILL, lost machine).
    """
    now = timezone.now()
    token = secrets.token_hex(16)
    fields = {"status": FeedRun.Status.RUNNING, "claim": token, "heartbeat_at": now}
    claimed = FeedRun.objects.filter(pk=run_id, status=FeedRun.Status.QUEUED).update(
        started_at=now, attempts=F("attempts") + 1, **fields
    )
    if not claimed:
        claimed = FeedRun.objects.filter(
            pk=run_id, status=FeedRun.Status.RUNNING, heartbeat_at__lt=now - _lease()
        ).update(attempts=F("attempts") + 1, **fields)
        if claimed:
            logger.warning("feed run %s: took over from a worker whose lease ran out", run_id)
    return token if claimed else None


class _Heartbeat:
    """Renew a run's or a shard's claim from a background thread while the worker computes.

    The thread has its own database connection (closed when it stops). If the claim is gone
    (another worker took over), ``lost`` is set and the run must not be swapped in.
    """

    def __init__(self, model: type[FeedRun] | type[FeedRunShard], pk: int, token: str) -> None:
        self.model, self.pk, self.token = model, pk, token
        self.lost = False
        # Inside an enclosing transaction (a test, an eager call) the run's rows are invisible
        # to another connection; nothing else can take the run over then, so no beat is needed.
        self.enabled = not connection.in_atomic_block
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._beat, name=f"heartbeat-{model.__name__}-{pk}", daemon=True
        )

    def _beat(self) -> None:
        interval = settings.COMMONFEED_RUN_LEASE_SECONDS / 4
        try:
            while not self._stop.wait(interval):
                # Both models spell their running state "running".
                renewed = self.model._default_manager.filter(
                    pk=self.pk, claim=self.token, status=FeedRun.Status.RUNNING
                ).update(heartbeat_at=timezone.now())
                if not renewed:
                    self.lost = True
                    return
        finally:
            connection.close()

    def __enter__(self) -> _Heartbeat:
        if self.enabled:
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self.enabled:
            self._thread.join()


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


def _audit_run(run: FeedRun, action: str, payload: dict[str, object]) -> None:
    audit_append(
        community=run.community,
        actor=None,
        action=action,
        obj=run,
        payload={
            "run": run.pk,
            "policy_version": run.policy_version.number,
            "policy_sha256": run.policy_sha256,
            **payload,
        },
    )


def feed_run_execute(
    *, run_id: int, queue: str | None = None, shards_inline: bool = False
) -> FeedRun:
    """Train the run's model, then have its shards scored; the last shard swaps the run in.

    Safe to call twice or after a crash: the claim lets one caller in (a run whose worker died
    is taken over once its lease expires). After training, the run is ``scoring`` and nobody
    holds it: each :class:`FeedRunShard` is claimed on its own. A run with a single shard (at
    most ``COMMONFEED_SHARD_MEMBERS`` members), or any run with ``shards_inline``, is scored
    right here, shard by shard, through the same code as the shard tasks; otherwise one
    ``score_feed_shard`` task per shard is sent to ``queue`` once the shards are committed.
    """
    token = _claim(run_id)
    if token is None:
        logger.info("feed run %s is not claimable (done, failed or held); skipping", run_id)
        return FeedRun.objects.get(pk=run_id)
    run = FeedRun.objects.select_related("community", "policy_version").get(pk=run_id)
    with transaction.atomic():
        _audit_run(run, "feed_run.started", {"attempt": run.attempts})
    try:
        with _Heartbeat(FeedRun, run_id, token) as heartbeat:
            prepared, shards = _train(run, token, heartbeat)
        inline = shards_inline or len(shards) == 1
        if not inline:
            for shard_id in shards:
                enqueue.shard_score(shard_id=shard_id, queue=queue)
    except LostClaim:
        logger.warning("feed run %s: lost the claim to another worker; stopping", run_id)
        return FeedRun.objects.get(pk=run_id)
    except Exception as exc:
        logger.exception("feed run %s failed", run_id)
        _fail_run(run, repr(exc), claim=token)
        raise
    if inline:
        for shard_id in shards:
            feed_run_shard_execute(shard_id=shard_id, prepared=prepared)
    run.refresh_from_db()
    return run


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


@dataclass(frozen=True)
class ServedFeeds:
    batch: FeedBatch
    watermark: int
    """The last interaction read: the same cut as a run's ``watermark``."""


def served_feeds_compute(
    *, community: Community, policy: Policy, members: Sequence[int] | None = None
) -> ServedFeeds:
    """The feeds a run would serve now under ``policy``, computed here and stored nowhere.

    The same inputs as a run (``_run_inputs``: interactions, active items, refusals, creators'
    opt-outs, members' mutes and refusals), the same feed length and the same ranking
    (``ranking.feeds.prepare_feeds`` and ``score_feeds``), for every member or only
    ``members``. The impact preview measures these, so what it shows is what ratification
    delivers on the same data.
    """
    inputs = _run_inputs(community)
    feed_members = None
    if members is not None:
        feed_members = np.intersect1d(
            inputs.data.feed_members, np.asarray(list(members), dtype=np.int64)
        )
    prepared = prepare_feeds(**inputs.prepare_arguments(policy, feed_members))
    return ServedFeeds(batch=score_feeds(prepared), watermark=inputs.data.watermark)


def _train(run: FeedRun, token: str, heartbeat: _Heartbeat) -> tuple[PreparedFeeds, list[int]]:
    """Load, fit, store the artifact, and hand the run over to its shards (one transaction)."""
    started = time.perf_counter()
    inputs = _run_inputs(run.community)
    data, attributes, choices = inputs.data, inputs.attributes, inputs.choices
    policy = policy_of(run.policy_version)
    loaded = time.perf_counter()
    prepared = prepare_feeds(**inputs.prepare_arguments(policy))
    fallback_ids, fallback_scores = _community_popular(
        data,
        settings.COMMONFEED_FEED_LENGTH,
        policy=policy,
        attributes=attributes,
        choices=choices,
    )
    trained = time.perf_counter()
    if heartbeat.lost:
        raise LostClaim(run.pk)
    artifact = artifact_save(
        community_id=run.community_id, run_id=run.pk, token=token, prepared=prepared
    )
    saved = time.perf_counter()
    bounds = _shard_bounds(len(prepared))
    stats = {
        **prepared.metadata,
        "load_seconds": round(loaded - started, 3),
        "prepare_seconds": round(trained - loaded, 3),
        "artifact_save_seconds": round(saved - trained, 3),
        "members": len(prepared),
        "shards": len(bounds),
    }
    with transaction.atomic():
        # Only the claim holder may hand the run over: a worker presumed dead finds 0 rows.
        moved = FeedRun.objects.filter(
            pk=run.pk, claim=token, status=FeedRun.Status.RUNNING
        ).update(
            status=FeedRun.Status.SCORING,
            artifact=artifact,
            shards_total=len(bounds),
            shards_done=0,
            watermark=data.watermark,
            stats=stats,
            fallback_item_ids=fallback_ids,
            fallback_scores=fallback_scores,
        )
        if not moved:
            raise LostClaim(run.pk)
        targets = prepared.targets
        shards = FeedRunShard.objects.bulk_create(
            FeedRunShard(
                run_id=run.pk,
                index=index,
                start=start,
                stop=stop,
                member_lo=int(targets[start]),
                member_hi=int(targets[stop - 1]),
            )
            for index, (start, stop) in enumerate(bounds)
        )
        if not shards:  # a community without members: nothing to score
            _finish_and_swap(run)
    if not shards:
        _after_finish(run)
    return prepared, [shard.pk for shard in shards]


def _shard_bounds(members: int) -> list[tuple[int, int]]:
    """``[start, stop)`` of each shard: whole multiples of the scoring chunk (bit-identical
    feeds whatever the sharding, see ranking.feeds.score_feeds)."""
    chunk = settings.COMMONFEED_SCORE_CHUNK
    size = -(-settings.COMMONFEED_SHARD_MEMBERS // chunk) * chunk
    return [(start, min(start + size, members)) for start in range(0, members, size)]


def _shard_claim(shard_id: int) -> str | None:
    """Compare-and-set the shard to RUNNING under a fresh token; None if it is not ours."""
    now = timezone.now()
    token = secrets.token_hex(16)
    fields = {
        "status": FeedRunShard.Status.RUNNING,
        "claim": token,
        "heartbeat_at": now,
        "attempts": F("attempts") + 1,
    }
    claimed = FeedRunShard.objects.filter(pk=shard_id, status=FeedRunShard.Status.QUEUED).update(
        **fields
    )
    if not claimed:
        claimed = FeedRunShard.objects.filter(
            pk=shard_id, status=FeedRunShard.Status.RUNNING, heartbeat_at__lt=now - _lease()
        ).update(**fields)
        if claimed:
            logger.warning("feed run shard %s: took over from a dead worker", shard_id)
    return token if claimed else None


def feed_run_shard_execute(
    *, shard_id: int, prepared: PreparedFeeds | None = None
) -> FeedRunShard | None:
    """Score one shard of a run and commit its feed rows; the last shard swaps the run in.

    Safe under redelivery and after a crash: the shard's claim lets one caller in, its rows and
    its completion are committed in one transaction under that claim, and completion is
    counted on the run row in the database, so exactly one shard's transaction finishes the
    run. Returns None if the shard does not exist (its run was deleted).
    """
    token = _shard_claim(shard_id)
    shard = FeedRunShard.objects.select_related("run").filter(pk=shard_id).first()
    if shard is None or token is None:
        if shard is not None:
            logger.info("feed run shard %s is not claimable; skipping", shard_id)
        return shard
    run = shard.run
    try:
        with _Heartbeat(FeedRunShard, shard_id, token) as heartbeat:
            started = time.perf_counter()
            if prepared is None:
                prepared = artifact_load(run.artifact)
            loaded = time.perf_counter()
            batch = score_feeds(
                prepared,
                start=shard.start,
                stop=shard.stop,
                chunk_size=settings.COMMONFEED_SCORE_CHUNK,
            )
            scored = time.perf_counter()
            if heartbeat.lost:
                raise LostClaim(run.pk)
            finished = _commit_shard(
                shard,
                token=token,
                batch=batch,
                timings={
                    "artifact_load_seconds": round(loaded - started, 3),
                    "score_seconds": round(scored - loaded, 3),
                },
            )
    except LostClaim:
        logger.warning("feed run shard %s: lost its claim; stopping", shard_id)
        return FeedRunShard.objects.get(pk=shard_id)
    except Exception as exc:
        logger.exception("feed run shard %s failed", shard_id)
        _fail_run(run, f"shard {shard.index}: {exc!r}")
        raise
    if finished:
        _after_finish(run)
    shard.refresh_from_db()
    return shard


def _commit_shard(
    shard: FeedRunShard, *, token: str, batch: FeedBatch, timings: dict[str, float]
) -> bool:
    """In one transaction: the shard's rows, its completion, the run's count (and maybe swap).

    Returns whether this shard finished the run.
    """
    run = shard.run
    started = time.perf_counter()
    with transaction.atomic():
        done = FeedRunShard.objects.filter(
            pk=shard.pk, claim=token, status=FeedRunShard.Status.RUNNING
        ).update(status=FeedRunShard.Status.FINISHED, finished_at=timezone.now())
        if not done:
            raise LostClaim(run.pk)
        # A run that failed meanwhile (another shard broke) takes no more rows.
        if not FeedRun.objects.filter(pk=run.pk, status=FeedRun.Status.SCORING).exists():
            raise LostClaim(run.pk)
        _write_shard_rows(run, shard, batch)
        written = time.perf_counter()
        FeedRunShard.objects.filter(pk=shard.pk).update(
            stats={**timings, "write_seconds": round(written - started, 3)}
        )
        # Counted last, so the run row's lock is held only for the rest of this transaction;
        # concurrent shards serialise on it and exactly one of them sees the total.
        FeedRun.objects.filter(pk=run.pk).update(shards_done=F("shards_done") + 1)
        count, total = FeedRun.objects.filter(pk=run.pk).values_list("shards_done", "shards_total")[
            0
        ]
        if count < total:
            return False
        _finish_and_swap(run)
    return True


def _write_shard_rows(run: FeedRun, shard: FeedRunShard, batch: FeedBatch) -> None:
    # A shard's members are one id range of this run: whatever an earlier attempt left there
    # (none if it died before committing) is replaced.
    MemberFeed.objects.filter(
        run=run, member_id__gte=shard.member_lo, member_id__lte=shard.member_hi
    ).delete()
    if connection.vendor == "postgresql":
        _copy_rows(run.pk, batch)
        return
    rows = _feed_rows(batch)
    while chunk := list(itertools.islice(rows, WRITE_BATCH)):
        _bulk_create_rows(run.pk, chunk)


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
    laid out by numpy (feeds.copytext) rather than number by number."""
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


def _fail_run(run: FeedRun, error: str, *, claim: str | None = None) -> None:
    """Mark the run failed (once, audited) unless it finished or failed already."""
    with transaction.atomic():
        active = FeedRun.objects.filter(pk=run.pk)
        active = (
            active.filter(claim=claim, status=FeedRun.Status.RUNNING)
            if claim is not None
            else active.filter(status=FeedRun.Status.SCORING)
        )
        failed = active.update(
            status=FeedRun.Status.FAILED, finished_at=timezone.now(), error=error[:2000]
        )
        if failed:
            FeedRunShard.objects.filter(run=run).exclude(
                status=FeedRunShard.Status.FINISHED
            ).update(status=FeedRunShard.Status.FAILED)
            _audit_run(run, "feed_run.finished", {"status": "failed", "error": error[:500]})


def _after_finish(run: FeedRun) -> None:
    """Once a run is swapped in: fold in what it missed; drop feeds and artifacts of runs
    nobody reads any more."""
    try:
        _refresh_after_swap(run)
    except Exception:  # the members' feeds are those of the run; their next event refreshes
        logger.exception("fold-in after the swap of run %s failed", run.pk)
    try:
        feed_runs_prune(community=run.community)
    except Exception:  # housekeeping only; the next finished run prunes again
        logger.exception("pruning the feeds of %s failed", run.community_id)


def _community_popular(
    data: _TrainingData,
    n: int,
    *,
    policy: Policy,
    attributes: ItemAttributes,
    choices: RankingChoices,
) -> tuple[list[int], list[float]]:
    """The community's non-personalised feed: items most members engaged with, best first.

    It obeys the same hard refusals as members' feeds (community rules, provenance classes shut
    out by ``exclude`` or a share of 0, creators who opted out) and leaves out the interactions
    of members who refused training.
    """
    positive = (data.weights > 0) & ~np.isin(data.member_ids, choices.no_training_members)
    items, counts = _members_per_item(data.member_ids[positive], data.item_ids[positive])
    shut_out = selectors.excluded_provenance(policy)  # "exclude", or a share of 0
    excluded = [code for code, name in enumerate(PROVENANCE_CLASSES) if name in shut_out]
    refused = attributes.refused_by(policy.refusals) | np.isin(attributes.provenance, excluded)
    allowed = np.setdiff1d(
        attributes.item_ids[~refused], choices.refused_items, assume_unique=False
    )
    keep = np.isin(items, allowed)
    items, counts = items[keep], counts[keep]
    order = np.lexsort((items, -counts))[:n]  # most members first, ties by id
    top = int(counts[order[0]]) if len(order) else 1
    return items[order].tolist(), np.round(counts[order] / top, 6).tolist()


def _members_per_item(
    member_ids: np.ndarray, item_ids: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Each item (ascending) with the number of distinct members of its ``(member, item)`` pairs.

    Pairs are packed into one int64 key and sorted (numpy's vectorised sort: 0.02 s for 2M
    pairs where ``np.unique(..., axis=0)`` took 1.6 s); ids too large to pack take that slow path.
    """
    if member_ids.size == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    width = int(item_ids.max()) + 1
    if int(member_ids.max()) >= np.iinfo(np.int64).max // width:
        pairs = np.unique(np.stack([member_ids, item_ids], axis=1), axis=0).reshape(-1, 2)
        items, counts = np.unique(pairs[:, 1], return_counts=True)
        return items, counts.astype(np.int64)
    keys = member_ids.astype(np.int64) * width + item_ids
    keys.sort()
    distinct = np.empty(keys.size, dtype=bool)
    distinct[0] = True
    np.not_equal(keys[1:], keys[:-1], out=distinct[1:])
    items_of_pairs = keys[distinct] % width
    if width <= 4 * items_of_pairs.size + 1_000_000:
        per_item = np.bincount(items_of_pairs, minlength=width)
        items = np.flatnonzero(per_item)
        return items, per_item[items].astype(np.int64)
    items, counts = np.unique(items_of_pairs, return_counts=True)
    return items, counts.astype(np.int64)


def _finish_and_swap(run: FeedRun) -> None:
    """Finish a run whose shards are all committed and move the community's pointer to it.

    Called inside the transaction of the shard that completed the run (or by the reconciler).
    """
    # Compare-and-set on the status: of two callers (a shard and the reconciler) one finishes.
    stats = _shard_stats(run)
    finished = FeedRun.objects.filter(
        pk=run.pk, status=FeedRun.Status.SCORING, shards_done=F("shards_total")
    ).update(status=FeedRun.Status.FINISHED, finished_at=timezone.now(), stats=stats)
    if not finished:
        raise LostClaim(run.pk)
    watermark = FeedRun.objects.filter(pk=run.pk).values_list("watermark", flat=True)[0]
    _audit_run(
        run,
        "feed_run.finished",
        {"status": "finished", "watermark": watermark, "members": stats.get("members")},
    )
    feedcache.pointer_changed(community=run.community)  # the fast path's pointer (feedcache)
    # Compare-and-set: only move the pointer forward, so a stale or duplicate run that finishes
    # late never replaces feeds from a newer one.
    moved = FeedPointer.objects.filter(community_id=run.community_id, run_id__lt=run.pk).update(
        run_id=run.pk, switched_at=timezone.now(), published_through=None
    )
    if moved or FeedPointer.objects.filter(community_id=run.community_id).exists():
        return
    try:
        with transaction.atomic():
            FeedPointer.objects.create(community_id=run.community_id, run_id=run.pk)
    except IntegrityError:
        # Another run created the pointer concurrently; retry the forward-only move.
        FeedPointer.objects.filter(community_id=run.community_id, run_id__lt=run.pk).update(
            run_id=run.pk, switched_at=timezone.now(), published_through=None
        )


def _shard_stats(run: FeedRun) -> dict[str, object]:
    """The trainer's stats plus the shards' timings (summed: work, not wall time)."""
    stats: dict[str, object] = dict(
        FeedRun.objects.filter(pk=run.pk).values_list("stats", flat=True)[0] or {}
    )
    shard_stats = list(FeedRunShard.objects.filter(run=run).values_list("stats", flat=True))
    for key in ("artifact_load_seconds", "score_seconds", "write_seconds"):
        stats[key] = round(sum(float(s.get(key, 0.0)) for s in shard_stats), 3)
    stats["compute_seconds"] = round(
        float(str(stats.get("prepare_seconds", 0.0))) + float(str(stats["score_seconds"])), 3
    )
    return stats


# --- Fold-in: fresh feeds between runs ------------------------------------------------------------

# Members re-ranked per refresh transaction when a drain task empties a community's queue.
FOLD_IN_BATCH = 500


@dataclass(frozen=True)
class FeedsRefreshed:
    """What :func:`member_feeds_refresh` did."""

    run_id: int | None
    members: int
    written: int
    skipped: str = ""
    """Why nothing was written: ``no_run`` (no served run yet), ``no_artifact`` (the served
    run's model is missing from the storage), ``pointer_moved`` (a newer run was swapped in
    meanwhile; it or a later refresh has the members' events), or ``""``."""
    seconds: dict[str, float] = field(default_factory=dict)


def member_feeds_refresh(*, community: Community, member_ids: Iterable[int]) -> FeedsRefreshed:
    """Re-rank these members' feeds in the served run from their current data (fold-in).

    Loads the served run's artifact (the model, catalogue and policy it was scored with), then
    in one transaction: locks the community's pointer row and checks it still names that run
    (a swap waits for the lock; if the pointer moved, nothing is written), reads the members'
    interactions and choices as they are now, ranks them (:func:`ranking.feeds.refresh_feeds`)
    and replaces their rows of that run. Their cached pages are dropped after the commit.

    Safe to run twice and concurrently: refreshes of a community serialise on the pointer row
    and each reads the data after taking it, so the last writer has the newest data.
    """
    started = time.perf_counter()
    wanted = sorted({int(m) for m in member_ids})
    run = FeedRun.objects.filter(pointed_by__community=community).only("id", "artifact").first()
    if not wanted:
        return FeedsRefreshed(run_id=None, members=0, written=0)
    if run is None or not run.artifact:
        return FeedsRefreshed(run_id=None, members=0, written=0, skipped="no_run")
    try:
        prepared = artifact_load(run.artifact)
    except FileNotFoundError:
        # The served run's model is gone from the storage (lost, or a wrongly shared folder):
        # nothing to rank against; the members' data is committed and the next run has it.
        logger.error("fold-in: the artifact %s of run %s is missing", run.artifact, run.pk)
        return FeedsRefreshed(run_id=run.pk, members=0, written=0, skipped="no_artifact")
    loaded = time.perf_counter()
    # Outside the pointer lock: a change that lands meanwhile bumps the pointer's revision, and
    # the next page withdraws it and asks for another refresh.
    refused = _refused_by_policy_now(community, prepared.policy)
    with transaction.atomic():
        held = list(
            FeedPointer.objects.select_for_update()
            .filter(community=community, run_id=run.pk)
            .values_list("run_id", flat=True)
        )
        if not held:
            return FeedsRefreshed(run_id=run.pk, members=0, written=0, skipped="pointer_moved")
        members = dict(
            Membership.objects.filter(community=community, pk__in=wanted).values_list(
                "pk", "external_id"
            )
        )
        ids = sorted(members)
        published = None
        if prepared.estimator is not None and prepared.policy.candidates.new_items:
            after = int(np.max(prepared.space_ids, initial=0))
            published = _load_item_attributes(community, after_id=after)[0]
        batch = refresh_feeds(
            prepared, **_refresh_inputs(community, ids, refused), published_items=published
        )
        ranked = time.perf_counter()
        MemberFeed.objects.filter(run_id=run.pk, member_id__in=ids).delete()
        _bulk_create_rows(run.pk, _feed_rows(batch))
        slug, external_ids = community.slug, [members[m] for m in ids]
        transaction.on_commit(
            lambda: feedcache.member_pages_invalidate(slug=slug, members=external_ids)
        )
    written = time.perf_counter()
    seconds = {
        "artifact_load": round(loaded - started, 4),
        "read_and_rank": round(ranked - loaded, 4),
        "write": round(written - ranked, 4),
    }
    logger.info(
        "fold-in: %s members of %s refreshed in run %s (%s)", len(ids), slug, run.pk, seconds
    )
    return FeedsRefreshed(run_id=run.pk, members=len(ids), written=len(ids), seconds=seconds)


def _refused_by_policy_now(community: Community, policy: Policy) -> np.ndarray:
    """Active items the run's policy refuses by their attributes *now*, as
    ``ranking.effects.ItemAttributes.refused_by`` and the excluded provenance classes decide
    (``feeds.serving.selectors.withdrawn_items`` applies the same when serving): a refresh must not
    rank again what the page would withdraw. One query, the rules as SQL conditions (tags by
    JSON containment on PostgreSQL; elsewhere the tag rules are checked here)."""
    excluded = selectors.excluded_provenance(policy)
    tags = {r.tag for r in policy.refusals if isinstance(r, TagRefusal)}
    creators = [r.creator for r in policy.refusals if isinstance(r, CreatorRefusal)]
    items = [r.item for r in policy.refusals if isinstance(r, ItemRefusal)]
    provenance = excluded | {
        r.provenance for r in policy.refusals if isinstance(r, ProvenanceRefusal)
    }
    days = [r.days for r in policy.refusals if isinstance(r, OlderThanRefusal)]
    if not (tags or creators or items or provenance or days):
        return np.zeros(0, dtype=np.int64)
    condition = Q(pk__in=[])
    if items:
        condition |= Q(external_id__in=items)
    if provenance:
        condition |= Q(provenance__in=sorted(provenance))
    if days:
        condition |= Q(published_at__lt=timezone.now() - timedelta(days=min(days)))
    if creators:
        condition |= Q(
            Exists(
                ItemCreator.objects.filter(
                    item=OuterRef("pk"), position=0, creator__external_id__in=creators
                )
            )
        )
    in_sql = tags and connection.vendor == "postgresql"
    for tag in tags if in_sql else ():
        condition |= Q(tags__contains=[tag])
    active = Item.objects.filter(community=community, active=True)
    refused = set(active.filter(condition).values_list("pk", flat=True))
    if tags and not in_sql:
        refused.update(
            pk for pk, item_tags in active.values_list("pk", "tags") if tags & set(item_tags or [])
        )
    return np.fromiter(sorted(refused), dtype=np.int64, count=len(refused))


def _refresh_inputs(
    community: Community, member_ids: list[int], refused_by_policy: np.ndarray
) -> dict[str, object]:
    """The members' current interactions and choices, as refresh_feeds takes them.

    Read by the same rules as a run (interaction weights, mutes resolved to items, refusals);
    besides, items deactivated since the run and ``refused_by_policy`` are refused.
    """
    # By member alone: the ids are this community's memberships (the caller read them so), and
    # a filter on the community as well can lead the planner to bitmap-AND the community's
    # whole index range with the members' (seconds at 20M interactions, milliseconds without).
    rows = np.array(
        list(
            Interaction.objects.filter(member_id__in=member_ids).values_list(
                "member_id", "item_id", "weight"
            )
        ),
        dtype=np.float64,
    ).reshape(-1, 3)
    item_tags: dict[int, list[str]] = {}
    if MemberChoices.objects.filter(member_id__in=member_ids).exclude(muted_tags=[]).exists():
        item_tags = {
            pk: tags or []
            for pk, tags in Item.objects.filter(community=community, active=True).values_list(
                "id", "tags"
            )
        }
    choices = ranking_choices_load(community=community, item_tags=item_tags, members=member_ids)
    inactive = np.fromiter(
        Item.objects.filter(community=community, active=False).values_list("id", flat=True),
        dtype=np.int64,
    )
    return {
        "feed_members": np.asarray(member_ids, dtype=np.int64),
        "member_ids": rows[:, 0].astype(np.int64),
        "item_ids": rows[:, 1].astype(np.int64),
        "weights": rows[:, 2].astype(np.float32),
        "member_blocks": choices.member_blocks,
        "no_personalisation_members": choices.no_personalisation_members,
        "refused_items": np.concatenate([choices.refused_items, inactive, refused_by_policy]),
    }


def member_feeds_refresh_drain(*, community_id: int, member_ids: list[int] | None = None) -> int:
    """Refresh the given members and every member queued for the community; returns how many
    refreshes ran. Members are forgotten only after their refresh committed, and only if they
    were not queued again meanwhile, so a killed worker or a concurrent event loses nothing."""
    community = Community.objects.filter(pk=community_id).first()
    done = 0
    if community is not None and member_ids:
        done += member_feeds_refresh(community=community, member_ids=member_ids).members
    while True:
        taken = feedcache.foldin_take(community_id=community_id, limit=FOLD_IN_BATCH) or []
        if taken and community is not None:
            done += member_feeds_refresh(
                community=community, member_ids=[member for member, _ in taken]
            ).members
        if not feedcache.foldin_done(community_id=community_id, taken=taken):
            return done


def published_items_fold_in() -> list[int]:
    """Ask for every member's feed to be refreshed in communities where items were published
    since the served run, when its policy takes new items as candidates; returns those
    communities.

    Beat runs it every minute, so a new item reaches members' feeds within minutes, without a
    run: each refresh ranks it as the run ranks its own new items (``candidates.new_items``),
    through the same refusals. Asked once per newest item: the pointer remembers the largest
    id asked for (compare-and-set, so two beats ask once).
    """
    if not settings.COMMONFEED_FOLD_IN:
        return []
    asked = []
    pointers = FeedPointer.objects.select_related("run__policy_version").only(
        "community_id", "published_through", "run__id", "run__stats", "run__policy_version"
    )
    for pointer in pointers:
        run = pointer.run
        if not policy_of(run.policy_version).candidates.new_items:
            continue
        known = (run.stats or {}).get("max_item_id")
        if known is None:
            continue
        through = max(int(known), pointer.published_through or 0)
        newest = Item.objects.filter(
            community_id=pointer.community_id, active=True, pk__gt=through
        ).aggregate(newest=Max("pk"))["newest"]
        if newest is None:
            continue
        claimed = FeedPointer.objects.filter(
            community_id=pointer.community_id,
            run_id=run.pk,
            published_through=pointer.published_through,
        ).update(published_through=newest)
        if not claimed:
            continue
        members = list(
            Membership.objects.filter(community_id=pointer.community_id)
            .order_by("pk")
            .values_list("pk", flat=True)
        )
        enqueue.member_feeds_refresh_request(community_id=pointer.community_id, member_ids=members)
        asked.append(pointer.community_id)
    return asked


def member_feeds_refresh_reconcile() -> list[int]:
    """Re-send drain tasks for communities whose queued refreshes lost their task."""
    stranded = feedcache.foldin_stranded()
    for community_id in stranded:
        enqueue.members_refresh(community_id=community_id)
    return stranded


def _refresh_after_swap(run: FeedRun) -> None:
    """Fold into a freshly swapped-in run what happened while it trained.

    The run read interactions up to its watermark and choices when it started: members with
    later interactions, choice changes or data deletions get refreshed against it.
    """
    if not settings.COMMONFEED_FOLD_IN:
        return
    watermark, started_at = FeedRun.objects.filter(pk=run.pk).values_list(
        "watermark", "started_at"
    )[0]
    members = set(
        Interaction.objects.filter(community_id=run.community_id, id__gt=watermark or 0)
        .values_list("member_id", flat=True)
        .distinct()
    )
    if started_at is not None:
        members |= set(
            MemberChoices.objects.filter(
                member__community_id=run.community_id, updated_at__gte=started_at
            ).values_list("member_id", flat=True)
        )
        members |= {
            int(pk)
            for pk in AuditEntry.objects.filter(
                community_id=run.community_id,
                action="member.data_deleted",
                created_at__gte=started_at,
            ).values_list("object_id", flat=True)
        }
    if members:
        enqueue.member_feeds_refresh_request(
            community_id=run.community_id, member_ids=sorted(members)
        )


@dataclass(frozen=True)
class Reconciled:
    resent: list[int]
    requested: list[int]
    shards_resent: list[int] = field(default_factory=list)
    finished: list[int] = field(default_factory=list)


def feed_runs_reconcile(*, queue: str | None = None) -> Reconciled:
    """Make sure every community's current policy ends up with a finished feed run.

    The broker is not the source of truth: a message can be lost (Redis restarted or flushed, a
    worker killed before acknowledging). The database is. This re-sends runs that sat queued
    past the grace period or whose trainer stopped beating; re-sends shards that sat queued
    past the grace period or whose worker stopped beating; finishes runs whose shards are all
    done but which were not swapped in; and requests a run for any community whose current
    policy version has none (after a ratification whose announcement was lost). Safe to run any
    time, from beat or by hand: claims make duplicate messages harmless.
    """
    now = timezone.now()
    grace = timedelta(seconds=settings.COMMONFEED_QUEUE_GRACE_SECONDS)
    stale = FeedRun.objects.filter(
        Q(status=FeedRun.Status.QUEUED, requested_at__lt=now - grace)
        | Q(status=FeedRun.Status.RUNNING, heartbeat_at__lt=now - _lease())
    ).values_list("pk", flat=True)
    resent = list(stale)
    for run_id in resent:
        enqueue.run_recompute(run_id=run_id, queue=queue)

    shards_resent = list(
        FeedRunShard.objects.filter(run__status=FeedRun.Status.SCORING)
        .filter(
            Q(status=FeedRunShard.Status.QUEUED, queued_at__lt=now - grace)
            | Q(status=FeedRunShard.Status.RUNNING, heartbeat_at__lt=now - _lease())
        )
        .order_by("run_id", "index")
        .values_list("pk", flat=True)
    )
    # Start the grace period again, so a shard waiting behind a long queue is not re-sent on
    # every pass.
    FeedRunShard.objects.filter(pk__in=shards_resent, status=FeedRunShard.Status.QUEUED).update(
        queued_at=now
    )
    for shard_id in shards_resent:
        enqueue.shard_score(shard_id=shard_id, queue=queue)

    finished = []
    for run in FeedRun.objects.filter(
        status=FeedRun.Status.SCORING, shards_done=F("shards_total")
    ).select_related("community", "policy_version"):
        try:
            with transaction.atomic():
                _finish_and_swap(run)
        except LostClaim:
            continue
        _after_finish(run)
        finished.append(run.pk)

    requested = []
    for version in PolicyVersion.objects.filter(is_current=True).select_related("community"):
        runs = FeedRun.objects.filter(policy_version=version)
        if runs.exclude(status=FeedRun.Status.FAILED).exists():
            continue
        if runs.count() >= MAX_FAILED_RUNS:
            logger.error(
                "policy version %s of %s failed %s runs; not retrying",
                version.number,
                version.community.slug,
                MAX_FAILED_RUNS,
            )
            continue
        requested.append(feed_run_request(community=version.community, queue=queue).pk)
    if resent or requested or shards_resent or finished:
        logger.info(
            "reconciler: re-sent runs %s and shards %s, finished runs %s, requested runs %s",
            resent,
            shards_resent,
            finished,
            requested,
        )
    return Reconciled(
        resent=resent, requested=requested, shards_resent=shards_resent, finished=finished
    )


def feed_runs_prune(*, community: Community, keep: int = RUNS_KEPT) -> int:
    """Delete stored feeds and artifacts of all but the ``keep`` newest finished runs (and the
    one the pointer names). Runs still in progress are left alone. Returns rows deleted."""
    pointer = FeedPointer.objects.filter(community=community).first()
    kept = list(
        FeedRun.objects.filter(community=community, status=FeedRun.Status.FINISHED)
        .order_by("-id")
        .values_list("id", flat=True)[:keep]
    )
    if pointer is not None:
        kept.append(pointer.run_id)
    done = (
        FeedRun.objects.filter(
            community=community, status__in=[FeedRun.Status.FINISHED, FeedRun.Status.FAILED]
        )
        .exclude(id__in=kept)
        .exclude(artifact="", member_feeds__isnull=True)
    )
    pruned = list(done.values_list("id", flat=True).distinct())
    if not pruned:
        return 0
    deleted, _ = MemberFeed.objects.filter(run_id__in=pruned).delete()
    artifacts_prune(community_id=community.pk, run_ids=pruned)
    FeedRun.objects.filter(id__in=pruned).update(artifact="")
    return deleted


class AppCredentialInvalid(ValueError):
    """A credential cannot be issued as asked; ``field`` names the input at fault."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


def app_credential_create(
    *,
    community: Community,
    name: str,
    scopes: list[str],
    actor: AbstractBaseUser | None = None,
) -> tuple[AppCredential, str]:
    """Issue an app credential. Returns the row and the token, which is not stored anywhere."""
    valid = set(AppCredential.Scope.values)
    unknown = sorted(set(scopes) - valid)
    if unknown or not scopes:
        raise AppCredentialInvalid(
            "scopes",
            f"unknown scope(s) {', '.join(unknown)}; choose from {', '.join(sorted(valid))}"
            if unknown
            else "at least one scope is required",
        )
    name = name.strip()
    if not name or len(name) > 100:
        raise AppCredentialInvalid("name", "a name of 1 to 100 characters is required")
    prefix, token = token_generate()
    with transaction.atomic():
        try:
            # A savepoint, so a clash leaves the caller's transaction usable.
            with transaction.atomic():
                credential = AppCredential.objects.create(
                    community=community,
                    name=name,
                    prefix=prefix,
                    secret_sha256=token_digest(token),
                    scopes=sorted(set(scopes)),
                )
        except IntegrityError:
            # The partial unique constraint (one active credential per name) decides, not a
            # prior SELECT, so two concurrent requests cannot both win.
            raise AppCredentialInvalid(
                "name", f"an active credential named {name!r} already exists"
            ) from None
        audit_append(
            community=community,
            actor=actor,
            action="app_credential.created",
            obj=credential,
            payload={"name": credential.name, "prefix": prefix, "scopes": credential.scopes},
        )
    return credential, token


def app_credential_revoke(
    *, credential: AppCredential, actor: AbstractBaseUser | None = None
) -> bool:
    """Revoke the credential from its next request on. Returns False if it was revoked already."""
    with transaction.atomic():
        feedcache.credential_invalidate(credential)  # before the commit: see feeds/serving/cache.py
        # Conditional update: of two concurrent revokes exactly one writes (and audits).
        revoked = AppCredential.objects.filter(pk=credential.pk, revoked_at__isnull=True).update(
            revoked_at=timezone.now()
        )
        if revoked:
            credential.refresh_from_db(fields=["revoked_at"])
            audit_append(
                community=credential.community,
                actor=actor,
                action="app_credential.revoked",
                obj=credential,
                payload={"name": credential.name, "prefix": credential.prefix},
            )
    return bool(revoked)
