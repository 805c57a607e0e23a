"""Feed runs: request, train, score in shards, swap in atomically, reconcile what the broker lost,
prune old runs. Claims in the database make every step safe to deliver twice."""

from __future__ import annotations

import itertools
import logging
import secrets
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import timedelta

import numpy as np
from django.conf import settings
from django.db import IntegrityError, connection, transaction
from django.db.models import F, Q
from django.utils import timezone

from feeds import enqueue
from feeds.choices.services import RankingChoices
from feeds.foldin.services import _refresh_after_swap
from feeds.models import (
    FeedPointer,
    FeedRun,
    FeedRunShard,
    MemberFeed,
)
from feeds.runs.artifacts import artifact_load, artifact_save, artifacts_prune
from feeds.runs.inputs import _run_inputs, _TrainingData
from feeds.runs.store import WRITE_BATCH, _bulk_create_rows, _copy_rows, _feed_rows
from feeds.serving import cache as feedcache
from feeds.serving import selectors
from governance.models import Community, PolicyVersion
from governance.selectors import policy_of, policy_version_current
from governance.services import audit_append
from ranking.effects import ItemAttributes
from ranking.pipeline import FeedBatch, PreparedFeeds, prepare_feeds, score_feeds
from ranking.policy import (
    PROVENANCE_CLASSES,
    Policy,
)

logger = logging.getLogger(__name__)


# A run whose current version failed this many times is not retried by the reconciler.
MAX_FAILED_RUNS = 3

# Feeds of this many most recent finished runs are kept; readers mid-request on the previous
# generation still find their rows after a swap.
RUNS_KEPT = 2


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
class ServedFeeds:
    batch: FeedBatch
    watermark: int
    """The last interaction read: the same cut as a run's ``watermark``."""


def served_feeds_compute(
    *, community: Community, policies: Sequence[Policy], members: Sequence[int] | None = None
) -> list[ServedFeeds]:
    """The feeds a run would serve now under each of ``policies``, computed here and stored
    nowhere.

    The same inputs as a run (``_run_inputs``: interactions, active items, refusals, creators'
    opt-outs, members' mutes and refusals), read once for all the policies, the same feed length
    and the same ranking (``ranking.pipeline.prepare_feeds`` and ``score_feeds``), for every
    member or only ``members``. The impact preview measures these, so what it shows is what
    ratification delivers on the same data.
    """
    inputs = _run_inputs(community)
    feed_members = None
    if members is not None:
        feed_members = np.intersect1d(
            inputs.data.feed_members, np.asarray(list(members), dtype=np.int64)
        )
    return [
        ServedFeeds(
            batch=score_feeds(prepare_feeds(**inputs.prepare_arguments(policy, feed_members))),
            watermark=inputs.data.watermark,
        )
        for policy in policies
    ]


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
    feeds whatever the sharding, see ranking.pipeline.score_feeds)."""
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
