"""Real worker processes killed and messages lost: feed runs still finish, readers see no tear."""

from __future__ import annotations

import threading
import time
import uuid
from pathlib import Path
from subprocess import Popen
from typing import Any

import pytest
from django.conf import settings as django_settings
from django.core.management import call_command
from django.db import connection
from django.test import Client
from django.utils import timezone

from feeds.credentials.services import app_credential_create
from feeds.models import FeedRun, FeedRunShard, Item, MemberFeed
from feeds.runs.services import feed_run_execute, feed_run_request, feed_runs_reconcile
from feeds.worker import worker_start, worker_stop
from governance.models import Community
from tests.conftest import _database_url_for_worker

pytestmark = [pytest.mark.integration]

LEASE = 3


# 8,000 members: two shards of 4,000, scored in chunks of 1,000.
SHARDED = {"COMMONFEED_SHARD_MEMBERS": "4000", "COMMONFEED_SCORE_CHUNK": "1000"}


def _worker(queue: str, log: Path) -> Popen[bytes]:
    env = {
        "DATABASE_URL": _database_url_for_worker(connection.settings_dict),
        "COMMONFEED_RUN_LEASE_SECONDS": str(LEASE),
        **SHARDED,
    }
    return worker_start(env=env, log_path=log, queue=queue)


def _wait(predicate: Any, timeout: float, what: str, log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            detail = log.read_text(errors="replace")[-4000:] if log and log.exists() else ""
            pytest.fail(f"timed out waiting for {what}\n{detail}")
        time.sleep(0.02)


def _status(run_id: int) -> str:
    return FeedRun.objects.get(pk=run_id).status  # type: ignore[no-any-return]


class Reader(threading.Thread):
    """Polls a member's feed over the API the whole time, recording what it saw."""

    def __init__(self, slug: str, member: str, token: str) -> None:
        super().__init__(daemon=True)
        self.url = f"/api/v1/communities/{slug}/feeds/{member}/"
        self.token = token
        self.seen: list[tuple[int, int, tuple[str, ...]]] = []
        self.stop = threading.Event()

    def run(self) -> None:
        client = Client()
        try:
            while not self.stop.is_set():
                response = client.get(self.url, HTTP_AUTHORIZATION=f"Bearer {self.token}")
                body = response.json()
                items = tuple(e["item"]["external_id"] for e in body.get("items", []))
                self.seen.append((response.status_code, body.get("run", 0), items))
                time.sleep(0.05)
        finally:
            connection.close()


@pytest.fixture
def crash_community(transactional_db: None, settings: Any) -> dict[str, Any]:
    settings.COMMONFEED_RUN_LEASE_SECONDS = LEASE  # the reconciler's view of the workers' lease
    # Big enough that a run takes a few seconds on two cores, so it can be killed mid-way.
    call_command(
        "seed_demo",
        community="crash",
        members=8000,
        items=8000,
        creators=500,
        interactions=250_000,
        no_progress=True,
    )
    community = Community.objects.get(slug="crash")
    _, token = app_credential_create(community=community, name="reader", scopes=["feeds:read"])
    return {"community": community, "token": token}


def _shards(run_id: int) -> list[tuple[int, str, int]]:
    return list(FeedRunShard.objects.filter(run_id=run_id).values_list("pk", "status", "attempts"))


def test_a_worker_killed_mid_shard_is_replaced_and_readers_never_see_a_torn_feed(
    crash_community: dict[str, Any], tmp_path: Path
) -> None:
    community = crash_community["community"]
    queue = f"crash-{uuid.uuid4().hex[:8]}"
    first = feed_run_execute(
        run_id=feed_run_request(community=community, queue=queue).pk, shards_inline=True
    )
    reader = Reader("crash", "m0", crash_community["token"])
    reader.start()

    log_a, log_b = tmp_path / "a.log", tmp_path / "b.log"
    worker_a = _worker(queue, log_a)
    run = feed_run_request(community=community, queue=queue)
    _wait(
        lambda: any(status == "running" for _, status, _ in _shards(run.pk)),
        120,
        "worker A to train and start a shard",
        log_a,
    )
    worker_a.kill()  # SIGKILL: no warm shutdown, no acknowledgement
    worker_a.wait()
    killed = [pk for pk, status, _ in _shards(run.pk) if status == "running"]
    assert killed, "the shard finished before the kill"
    assert _status(run.pk) == FeedRun.Status.SCORING

    # Until the lease runs out, nobody else may take the shard.
    assert feed_runs_reconcile(queue=queue).shards_resent == []
    time.sleep(LEASE + 1)
    assert feed_runs_reconcile(queue=queue).shards_resent == killed

    worker_b = _worker(queue, log_b)
    try:
        _wait(lambda: _status(run.pk) == FeedRun.Status.FINISHED, 180, "worker B", log_b)
        finished = FeedRun.objects.get(pk=run.pk)
        shards = _shards(run.pk)
        assert finished.attempts == 1 and finished.shards_done == len(shards) == 2
        assert {pk: attempts for pk, _, attempts in shards if pk in killed} == {
            pk: 2 for pk in killed
        }
        assert MemberFeed.objects.filter(run=run).count() == 8000

        # Duplicate delivery of every task, the run's and each shard's, changes nothing.
        from feeds.tasks import recompute_community_feeds, score_feed_shard

        for _ in range(2):
            recompute_community_feeds.apply_async((run.pk, queue), queue=queue)
            for pk, _, _ in shards:
                score_feed_shard.apply_async((pk,), queue=queue)
        time.sleep(3)
        again = FeedRun.objects.get(pk=run.pk)
        assert (again.status, again.finished_at, again.attempts, again.shards_done) == (
            FeedRun.Status.FINISHED,
            finished.finished_at,
            1,
            2,
        )
        assert _shards(run.pk) == shards
        assert MemberFeed.objects.filter(run=run).count() == 8000
        _wait(lambda: any(seen[1] == run.pk for seen in reader.seen), 10, "the reader to swap")
    finally:
        reader.stop.set()
        reader.join()
        worker_stop(worker_b)

    assert FeedRun.objects.filter(community=community).count() == 2
    complete = {r: _stored_feed(r, "m0") for r in (first.pk, run.pk)}
    runs_seen = [r for status, r, _ in reader.seen]
    assert all(status == 200 for status, _, _ in reader.seen)
    assert set(runs_seen) <= {first.pk, run.pk}
    assert runs_seen == sorted(runs_seen), "the served generation only moves forward"
    # Every response was one whole generation: exactly that run's stored feed, never a mix.
    assert all(items == complete[r] for _, r, items in reader.seen)
    assert len(reader.seen) > 20


def test_a_lost_queue_is_recovered_by_the_reconciler(
    crash_community: dict[str, Any], tmp_path: Path
) -> None:
    community = crash_community["community"]
    queue = f"lost-{uuid.uuid4().hex[:8]}"
    run = feed_run_request(community=community, queue=queue)
    _lose_every_message()
    FeedRun.objects.filter(pk=run.pk).update(
        requested_at=timezone.now() - timezone.timedelta(hours=1)
    )
    assert feed_runs_reconcile(queue=queue).resent == [run.pk]
    log = tmp_path / "worker.log"
    worker = _worker(queue, log)
    try:
        _wait(lambda: _status(run.pk) == FeedRun.Status.FINISHED, 180, "the worker", log)
    finally:
        worker_stop(worker)


def test_shard_messages_lost_mid_run_are_sent_again_by_the_reconciler(
    crash_community: dict[str, Any], tmp_path: Path, settings: Any
) -> None:
    community = crash_community["community"]
    queue = f"lost-shards-{uuid.uuid4().hex[:8]}"
    for name, value in SHARDED.items():
        setattr(settings, name, int(value))
    # Trained here, as a worker would; its two shard messages then vanish with the broker's data.
    run = feed_run_execute(
        run_id=feed_run_request(community=community, queue=queue).pk, queue=queue
    )
    assert run.status == FeedRun.Status.SCORING
    _lose_every_message()
    FeedRunShard.objects.filter(run=run).update(
        queued_at=timezone.now() - timezone.timedelta(hours=1)
    )
    assert len(feed_runs_reconcile(queue=queue).shards_resent) == 2
    log = tmp_path / "worker.log"
    worker = _worker(queue, log)
    try:
        _wait(lambda: _status(run.pk) == FeedRun.Status.FINISHED, 180, "the worker", log)
    finally:
        worker_stop(worker)
    assert MemberFeed.objects.filter(run=run).count() == 8000


def _stored_feed(run_id: int, member: str) -> tuple[str, ...]:
    ids = MemberFeed.objects.get(run_id=run_id, member__external_id=member).item_ids
    external = Item.objects.in_bulk(ids)
    return tuple(external[pk].external_id for pk in ids)


def _lose_every_message() -> None:
    """What a Redis restart without persistence (or FLUSHALL) does to queued messages."""
    url = django_settings.CELERY_BROKER_URL
    if url.startswith("redis"):
        import redis

        redis.Redis.from_url(url).flushdb()
    else:
        for message in Path(django_settings.CELERY_BROKER_TRANSPORT_OPTIONS["data_folder_in"]).glob(
            "*"
        ):
            message.unlink()
