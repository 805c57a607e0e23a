"""Feed pipeline writes: request a recompute, run it, swap it in; issue app credentials."""

from __future__ import annotations

import logging
import secrets
import threading
import time
from dataclasses import dataclass
from datetime import timedelta

import numpy as np
from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.db import IntegrityError, connection, transaction
from django.db.models import F, Max, Q
from django.utils import timezone

from feeds.auth import token_digest, token_generate
from feeds.choices import RankingChoices, ranking_choices_load
from feeds.models import (
    AppCredential,
    FeedPointer,
    FeedRun,
    Interaction,
    Item,
    ItemCreator,
    MemberFeed,
)
from governance.models import Community, Membership, PolicyVersion
from governance.selectors import policy_of, policy_version_current
from governance.services import audit_append
from ranking.effects import ItemAttributes
from ranking.feeds import FeedBatch, compute_feeds
from ranking.policy import PROVENANCE_CLASSES, Exclude, Policy

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
    from feeds.tasks import recompute_community_feeds

    with transaction.atomic():
        version = policy_version_current(community=community)
        run = FeedRun.objects.create(
            community=community, policy_version=version, policy_sha256=version.sha256
        )
        transaction.on_commit(lambda: recompute_community_feeds.apply_async((run.pk,), queue=queue))
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
    """Renew the run's claim from a background thread while the worker computes.

    The thread has its own database connection (closed when it stops). If the claim is gone
    (another worker took over), ``lost`` is set and the run must not be swapped in.
    """

    def __init__(self, run_id: int, token: str) -> None:
        self.run_id, self.token = run_id, token
        self.lost = False
        # Inside an enclosing transaction (a test, an eager call) the run's rows are invisible
        # to another connection; nothing else can take the run over then, so no beat is needed.
        self.enabled = not connection.in_atomic_block
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"heartbeat-{run_id}", daemon=True)

    def _beat(self) -> None:
        interval = settings.COMMONFEED_RUN_LEASE_SECONDS / 4
        try:
            while not self._stop.wait(interval):
                renewed = FeedRun.objects.filter(
                    pk=self.run_id, claim=self.token, status=FeedRun.Status.RUNNING
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
    rows = Interaction.objects.filter(community=community, id__lte=watermark).values_list(
        "member_id", "item_id", "weight"
    )
    data = np.array(list(rows.iterator(chunk_size=50_000)), dtype=np.float64).reshape(-1, 3)
    feed_members = np.fromiter(
        Membership.objects.filter(community=community).values_list("id", flat=True),
        dtype=np.int64,
    )
    candidate_items = np.fromiter(
        Item.objects.filter(community=community, active=True).values_list("id", flat=True),
        dtype=np.int64,
    )
    return _TrainingData(
        member_ids=data[:, 0].astype(np.int64),
        item_ids=data[:, 1].astype(np.int64),
        weights=data[:, 2].astype(np.float32),
        feed_members=feed_members,
        candidate_items=candidate_items,
        watermark=watermark,
    )


def _load_item_attributes(community: Community) -> tuple[ItemAttributes, dict[int, list[str]]]:
    """The active items' primary creator, provenance, age and tags, for the policy's effects.

    Also returns each active item's tags, which members' tag mutes are resolved against.
    """
    now = timezone.now()
    items = list(
        Item.objects.filter(community=community, active=True)
        .order_by("id")
        .values_list("id", "external_id", "provenance", "published_at", "tags")
    )
    primary = dict(
        (item_id, (creator_id, key))
        for item_id, creator_id, key in ItemCreator.objects.filter(
            item__community=community, item__active=True, position=0
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


def feed_run_execute(*, run_id: int) -> FeedRun:
    """Compute every member's feed for the run and swap the community over to it.

    Safe to call twice or after a crash: the claim lets one caller in; feed rows are keyed by
    (run, member) so a re-run after a partial write replaces them; the swap only moves forward.
    """
    token = _claim(run_id)
    if token is None:
        logger.info("feed run %s is not claimable (done, failed or held); skipping", run_id)
        return FeedRun.objects.get(pk=run_id)
    run = FeedRun.objects.select_related("community", "policy_version").get(pk=run_id)
    with transaction.atomic():
        _audit_run(run, "feed_run.started", {"attempt": run.attempts})
    try:
        with _Heartbeat(run_id, token) as heartbeat:
            _compute_and_swap(run, token, heartbeat)
    except LostClaim:
        logger.warning("feed run %s: lost the claim to another worker; stopping", run_id)
        return FeedRun.objects.get(pk=run_id)
    except Exception as exc:
        logger.exception("feed run %s failed", run_id)
        with transaction.atomic():
            failed = FeedRun.objects.filter(pk=run_id, claim=token).update(
                status=FeedRun.Status.FAILED, finished_at=timezone.now(), error=repr(exc)[:2000]
            )
            if failed:
                _audit_run(run, "feed_run.finished", {"status": "failed", "error": repr(exc)[:500]})
        raise
    feed_runs_prune(community=run.community)
    run.refresh_from_db()
    return run


def _compute_and_swap(run: FeedRun, token: str, heartbeat: _Heartbeat) -> None:
    started = time.perf_counter()
    data = _load_training_data(run.community)
    policy = policy_of(run.policy_version)
    attributes, item_tags = _load_item_attributes(run.community)
    choices = ranking_choices_load(community=run.community, item_tags=item_tags)
    loaded = time.perf_counter()
    batch = compute_feeds(
        member_ids=data.member_ids,
        item_ids=data.item_ids,
        weights=data.weights,
        policy=policy,
        feed_members=data.feed_members,
        candidate_items=data.candidate_items,
        n=settings.COMMONFEED_FEED_LENGTH,
        item_attributes=attributes,
        refused_items=choices.refused_items,
        member_blocks=choices.member_blocks,
        no_personalisation_members=choices.no_personalisation_members,
        no_training_members=choices.no_training_members,
    )
    computed = time.perf_counter()
    _write_member_feeds(run, batch)
    fallback_ids, fallback_scores = _community_popular(
        data,
        settings.COMMONFEED_FEED_LENGTH,
        policy=policy,
        attributes=attributes,
        choices=choices,
    )
    written = time.perf_counter()
    stats = {
        **batch.metadata,
        "load_seconds": round(loaded - started, 3),
        "compute_seconds": round(computed - loaded, 3),
        "write_seconds": round(written - computed, 3),
        "members": len(batch.member_ids),
    }
    if heartbeat.lost:
        raise LostClaim(run.pk)
    _finish_and_swap(
        run,
        token=token,
        watermark=data.watermark,
        stats=stats,
        fallback=(fallback_ids, fallback_scores),
    )


def _write_member_feeds(run: FeedRun, batch: FeedBatch) -> None:
    # A redelivered run may have written some rows before dying: start from a clean slate.
    MemberFeed.objects.filter(run=run).delete()
    valid = batch.item_ids >= 0
    scores = np.round(batch.scores.astype(np.float64), 6)
    base_scores = np.round(batch.base_scores.astype(np.float64), 6)
    for start in range(0, len(batch.member_ids), WRITE_BATCH):
        rows = [
            MemberFeed(
                run_id=run.pk,
                member_id=int(batch.member_ids[r]),
                item_ids=batch.item_ids[r][valid[r]].tolist(),
                scores=scores[r][valid[r]].tolist(),
                base_scores=base_scores[r][valid[r]].tolist(),
                reasons=batch.reasons[r][valid[r]].tolist(),
            )
            for r in range(start, min(start + WRITE_BATCH, len(batch.member_ids)))
        ]
        MemberFeed.objects.bulk_create(rows, batch_size=WRITE_BATCH)


def _community_popular(
    data: _TrainingData,
    n: int,
    *,
    policy: Policy,
    attributes: ItemAttributes,
    choices: RankingChoices,
) -> tuple[list[int], list[float]]:
    """The community's non-personalised feed: items most members engaged with, best first.

    It obeys the same hard refusals as members' feeds (community rules, excluded provenance,
    creators who opted out) and leaves out the interactions of members who refused training.
    """
    positive = (data.weights > 0) & ~np.isin(data.member_ids, choices.no_training_members)
    pairs = np.unique(
        np.stack([data.member_ids[positive], data.item_ids[positive]], axis=1), axis=0
    ).reshape(-1, 2)
    items, counts = np.unique(pairs[:, 1], return_counts=True)
    excluded = [
        code
        for code, name in enumerate(PROVENANCE_CLASSES)
        if isinstance(policy.ranking.provenance.get(name), Exclude)
    ]
    refused = attributes.refused_by(policy.refusals) | np.isin(attributes.provenance, excluded)
    allowed = np.setdiff1d(
        attributes.item_ids[~refused], choices.refused_items, assume_unique=False
    )
    keep = np.isin(items, allowed)
    items, counts = items[keep], counts[keep]
    order = np.lexsort((items, -counts))[:n]  # most members first, ties by id
    top = int(counts[order[0]]) if len(order) else 1
    return items[order].tolist(), np.round(counts[order] / top, 6).tolist()


@transaction.atomic
def _finish_and_swap(
    run: FeedRun,
    *,
    token: str,
    watermark: int,
    stats: dict[str, object],
    fallback: tuple[list[int], list[float]],
) -> None:
    # Only the claim holder may finish: a worker presumed dead that wakes up finds 0 rows here.
    finished = FeedRun.objects.filter(pk=run.pk, claim=token, status=FeedRun.Status.RUNNING).update(
        status=FeedRun.Status.FINISHED,
        finished_at=timezone.now(),
        watermark=watermark,
        stats=stats,
        fallback_item_ids=fallback[0],
        fallback_scores=fallback[1],
    )
    if not finished:
        raise LostClaim(run.pk)
    _audit_run(
        run,
        "feed_run.finished",
        {"status": "finished", "watermark": watermark, "members": stats.get("members")},
    )
    # Compare-and-set: only move the pointer forward, so a stale or duplicate run that finishes
    # late never replaces feeds from a newer one.
    moved = FeedPointer.objects.filter(community_id=run.community_id, run_id__lt=run.pk).update(
        run_id=run.pk, switched_at=timezone.now()
    )
    if moved or FeedPointer.objects.filter(community_id=run.community_id).exists():
        return
    try:
        with transaction.atomic():
            FeedPointer.objects.create(community_id=run.community_id, run_id=run.pk)
    except IntegrityError:
        # Another run created the pointer concurrently; retry the forward-only move.
        FeedPointer.objects.filter(community_id=run.community_id, run_id__lt=run.pk).update(
            run_id=run.pk, switched_at=timezone.now()
        )


@dataclass(frozen=True)
class Reconciled:
    resent: list[int]
    requested: list[int]


def feed_runs_reconcile(*, queue: str | None = None) -> Reconciled:
    """Make sure every community's current policy ends up with a finished feed run.

    The broker is not the source of truth: a message can be lost (Redis restarted or flushed, a
    worker killed before acknowledging). The database is. This re-sends runs that sat queued
    past the grace period or whose worker stopped beating, and requests a run for any community
    whose current policy version has none (after a ratification whose announcement was lost).
    Safe to run any time, from beat or by hand: claims make duplicate messages harmless.
    """
    from feeds.tasks import recompute_community_feeds

    now = timezone.now()
    grace = timedelta(seconds=settings.COMMONFEED_QUEUE_GRACE_SECONDS)
    stale = FeedRun.objects.filter(
        Q(status=FeedRun.Status.QUEUED, requested_at__lt=now - grace)
        | Q(status=FeedRun.Status.RUNNING, heartbeat_at__lt=now - _lease())
    ).values_list("pk", flat=True)
    resent = list(stale)
    for run_id in resent:
        recompute_community_feeds.apply_async((run_id,), queue=queue)

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
    if resent or requested:
        logger.info("reconciler: re-sent runs %s, requested runs %s", resent, requested)
    return Reconciled(resent=resent, requested=requested)


def feed_runs_prune(*, community: Community, keep: int = RUNS_KEPT) -> int:
    """Delete stored feeds of all but the ``keep`` newest finished runs. Returns rows deleted."""
    pointer = FeedPointer.objects.filter(community=community).first()
    kept = list(
        FeedRun.objects.filter(community=community, status=FeedRun.Status.FINISHED)
        .order_by("-id")
        .values_list("id", flat=True)[:keep]
    )
    if pointer is not None:
        kept.append(pointer.run_id)
    deleted, _ = (
        MemberFeed.objects.filter(run__community=community).exclude(run_id__in=kept).delete()
    )
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
