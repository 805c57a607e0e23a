"""A run trained once and scored in shards: same feeds, counted in the database, swapped once."""

from __future__ import annotations

import random
from datetime import timedelta
from typing import Any

import numpy as np
import pytest
from django.core.management import call_command
from django.utils import timezone

from feeds.models import (
    Creator,
    FeedPointer,
    FeedRun,
    FeedRunShard,
    Interaction,
    MemberChoices,
    MemberFeed,
)
from feeds.runs import artifacts, inputs, services
from feeds.runs.services import (
    feed_run_execute,
    feed_run_request,
    feed_run_shard_execute,
    feed_runs_reconcile,
)
from governance.models import AuditEntry, Community, Membership
from tests.factories import make_community

pytestmark = pytest.mark.django_db

MEMBERS = 400


@pytest.fixture
def community(settings: Any, tmp_path: Any) -> Community:
    settings.STORAGES = {
        **settings.STORAGES,
        artifacts.STORAGE_ALIAS: {
            "BACKEND": "django.core.files.storage.FileSystemStorage",
            "OPTIONS": {"location": str(tmp_path / "feedmodels")},
        },
    }
    settings.COMMONFEED_SCORE_CHUNK = 50
    settings.COMMONFEED_SHARD_MEMBERS = 100  # four shards
    call_command(
        "seed_demo",
        community="shards",
        members=MEMBERS,
        items=300,
        creators=30,
        interactions=8_000,
        no_progress=True,
    )
    community = Community.objects.get(slug="shards")
    # Every route of ranking.pipeline: trained, recalculated, popular (no history), refusing.
    members = list(Membership.objects.filter(community=community).order_by("id"))
    creator = Creator.objects.filter(community=community).first()
    for index, member in enumerate(members[:60]):
        choices = MemberChoices.objects.create(
            member=member, personalise=index % 3 != 0, train_on_my_data=index % 3 != 1
        )
        choices.muted_creators.add(creator)
    return community


@pytest.fixture
def sent(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Shard messages, collected instead of sent to a broker."""
    from feeds import enqueue

    messages: list[int] = []
    monkeypatch.setattr(enqueue, "shard_score", lambda **kw: messages.append(kw["shard_id"]))
    monkeypatch.setattr(enqueue, "run_recompute", lambda **kw: None)
    return messages


def _rows(run: FeedRun) -> dict[int, tuple[Any, ...]]:
    return {
        row.member_id: (row.item_ids, row.scores, row.base_scores, row.reasons)
        for row in MemberFeed.objects.filter(run=run)
    }


def _audits(run: FeedRun) -> list[str]:
    return sorted(
        AuditEntry.objects.filter(object_type="feeds.feedrun", object_id=str(run.pk)).values_list(
            "action", flat=True
        )
    )


def test_a_run_scored_in_shards_stores_exactly_the_feeds_of_an_unsharded_run(
    community: Community, sent: list[int], settings: Any
) -> None:
    run = feed_run_execute(run_id=feed_run_request(community=community).pk)

    assert run.status == FeedRun.Status.SCORING
    assert run.shards_total == 4 and run.shards_done == 0
    assert artifacts.artifact_storage().exists(run.artifact)
    shards = list(FeedRunShard.objects.filter(run=run))
    assert sorted(sent) == [s.pk for s in shards]
    assert [(s.start, s.stop) for s in shards] == [(0, 100), (100, 200), (200, 300), (300, 400)]
    assert not FeedPointer.objects.filter(community=community).exists()

    # Every message delivered twice, in any order: each shard is scored once.
    artifacts._loaded.clear()  # as in another worker process: read the stored artifact
    deliveries = sent * 2
    random.Random(4).shuffle(deliveries)
    for shard_id in deliveries:
        run.refresh_from_db()
        assert run.status != FeedRun.Status.FINISHED or shard_id in sent
        feed_run_shard_execute(shard_id=shard_id)

    run.refresh_from_db()
    assert run.status == FeedRun.Status.FINISHED
    assert run.shards_done == 4
    assert FeedPointer.objects.get(community=community).run_id == run.pk
    assert set(FeedRunShard.objects.filter(run=run).values_list("attempts", flat=True)) == {1}
    assert MemberFeed.objects.filter(run=run).count() == MEMBERS
    assert _audits(run) == ["feed_run.finished", "feed_run.started"]
    assert {"load_seconds", "fit_seconds", "score_seconds", "write_seconds"} <= set(run.stats)

    settings.COMMONFEED_SHARD_MEMBERS = 10_000  # one shard, scored by the trainer itself
    single = feed_run_execute(run_id=feed_run_request(community=community).pk)
    assert single.status == FeedRun.Status.FINISHED and single.shards_total == 1
    sharded, unsharded = _rows(run), _rows(single)
    assert len(sharded) == MEMBERS
    assert sharded == unsharded
    reasons = {reason for *_, row in unsharded.values() for reason in row}
    assert len(reasons) > 2  # personalised, popular and fallback feeds are all in there


def test_a_shard_whose_worker_died_is_taken_over_and_a_presumed_dead_one_cannot_commit(
    community: Community, sent: list[int], settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = feed_run_execute(run_id=feed_run_request(community=community).pk)
    first, second, *rest = FeedRunShard.objects.filter(run=run)

    assert services._shard_claim(first.pk) is not None  # a worker claims it, then dies
    assert feed_run_shard_execute(shard_id=first.pk).status == FeedRunShard.Status.RUNNING
    assert first.pk not in feed_runs_reconcile().shards_resent  # its lease is still fresh
    lapsed = timezone.now() - timedelta(seconds=settings.COMMONFEED_RUN_LEASE_SECONDS + 1)
    FeedRunShard.objects.filter(pk=first.pk).update(heartbeat_at=lapsed)
    assert feed_runs_reconcile().shards_resent == [first.pk]
    assert feed_run_shard_execute(shard_id=first.pk).attempts == 2

    # A worker that claimed a shard and was then presumed dead commits nothing.
    real_claim = services._shard_claim

    def claim_then_lose_it(shard_id: int) -> str | None:
        token = real_claim(shard_id)
        FeedRunShard.objects.filter(pk=shard_id).update(claim="someone-else")
        return token

    monkeypatch.setattr(services, "_shard_claim", claim_then_lose_it)
    assert feed_run_shard_execute(shard_id=second.pk).status == FeedRunShard.Status.RUNNING
    assert not MemberFeed.objects.filter(
        run=run, member_id__gte=second.member_lo, member_id__lte=second.member_hi
    ).exists()
    monkeypatch.setattr(services, "_shard_claim", real_claim)

    for shard in rest:
        feed_run_shard_execute(shard_id=shard.pk)
    run.refresh_from_db()
    assert (run.status, run.shards_done) == (FeedRun.Status.SCORING, 3)
    FeedRunShard.objects.filter(pk=second.pk).update(heartbeat_at=lapsed)
    assert feed_runs_reconcile().shards_resent == [second.pk]
    feed_run_shard_execute(shard_id=second.pk)
    run.refresh_from_db()
    assert run.status == FeedRun.Status.FINISHED
    assert MemberFeed.objects.filter(run=run).count() == MEMBERS
    assert _audits(run) == ["feed_run.finished", "feed_run.started"]


def test_queued_shards_whose_messages_were_lost_are_sent_again(
    community: Community, sent: list[int], settings: Any
) -> None:
    run = feed_run_execute(run_id=feed_run_request(community=community).pk)
    sent.clear()  # the broker lost every shard message
    assert feed_runs_reconcile().shards_resent == []  # within the grace period
    FeedRunShard.objects.filter(run=run).update(queued_at=timezone.now() - timedelta(hours=1))
    resent = feed_runs_reconcile().shards_resent
    assert resent == list(FeedRunShard.objects.filter(run=run).values_list("pk", flat=True))
    assert feed_runs_reconcile().shards_resent == []  # the grace period starts again
    for shard_id in sent:
        feed_run_shard_execute(shard_id=shard_id)
    run.refresh_from_db()
    assert run.status == FeedRun.Status.FINISHED


def test_a_run_whose_shards_are_done_but_which_was_not_swapped_is_finished_by_the_reconciler(
    community: Community, sent: list[int]
) -> None:
    run = feed_run_execute(run_id=feed_run_request(community=community).pk)
    # As if the finishing step had been lost: every shard counted, the run still scoring.
    FeedRunShard.objects.filter(run=run).update(status=FeedRunShard.Status.FINISHED)
    FeedRun.objects.filter(pk=run.pk).update(shards_done=run.shards_total)

    assert feed_runs_reconcile().finished == [run.pk]
    assert feed_runs_reconcile().finished == []
    run.refresh_from_db()
    assert run.status == FeedRun.Status.FINISHED
    assert FeedPointer.objects.get(community=community).run_id == run.pk
    assert _audits(run) == ["feed_run.finished", "feed_run.started"]


def test_a_failing_shard_fails_the_run_once_and_later_shards_write_nothing(
    community: Community, sent: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    run = feed_run_execute(run_id=feed_run_request(community=community).pk)
    first, *rest = FeedRunShard.objects.filter(run=run)

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("disk full")

    with monkeypatch.context() as patch:
        patch.setattr(services, "score_feeds", broken)
        with pytest.raises(RuntimeError):
            feed_run_shard_execute(shard_id=first.pk)
    run.refresh_from_db()
    assert run.status == FeedRun.Status.FAILED and "disk full" in run.error
    for shard in rest:
        feed_run_shard_execute(shard_id=shard.pk)
    assert not MemberFeed.objects.filter(run=run).exists()
    assert _audits(run) == ["feed_run.finished", "feed_run.started"]


def test_pruned_runs_lose_their_artifacts(
    community: Community, sent: list[int], settings: Any
) -> None:
    settings.COMMONFEED_SHARD_MEMBERS = 10_000
    runs = [feed_run_execute(run_id=feed_run_request(community=community).pk) for _ in range(3)]
    storage = artifacts.artifact_storage()
    oldest = runs[0].artifact
    assert oldest.startswith(f"runs/{community.pk}/{runs[0].pk}/")
    for run in runs:
        run.refresh_from_db()
    assert not storage.exists(oldest)
    # The two newest finished runs are kept (one of them is served); the oldest is pruned.
    assert runs[0].artifact == "" and not MemberFeed.objects.filter(run=runs[0]).exists()
    assert all(storage.exists(r.artifact) for r in runs[1:])
    # The artifact loads back into what a fold-in or a shard needs.
    prepared = artifacts.artifact_load(runs[2].artifact)
    assert len(prepared) == MEMBERS and prepared.model is not None


def test_interactions_are_read_in_bulk_exactly(community: Community) -> None:
    # PostgreSQL reads them with one binary COPY, SQLite through the ORM: same arrays.
    data = inputs._load_training_data(community)
    expected = Interaction.objects.filter(community=community).values_list(
        "member_id", "item_id", "weight"
    )
    assert sorted(
        zip(data.member_ids.tolist(), data.item_ids.tolist(), data.weights.tolist(), strict=True)
    ) == sorted((m, i, float(np.float32(w))) for m, i, w in expected)
    assert data.member_ids.dtype == np.int64 and data.weights.dtype == np.float32
    assert list(data.feed_members) == sorted(data.feed_members)

    empty = inputs._load_training_data(make_community())
    assert empty.member_ids.size == empty.item_ids.size == empty.weights.size == 0
