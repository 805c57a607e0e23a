"""The session's shared Celery worker runs only the tasks of the tests that use it
(tests/conftest.py, ``shared_worker_isolation``)."""

from __future__ import annotations

import uuid

from django.conf import settings

from config.celery import app
from feeds.tasks import reconcile_feed_runs


def _queued(queue: str) -> int:
    with app.connection_for_write() as conn:
        return int(conn.default_channel._size(queue))


def test_a_test_without_the_worker_sends_nothing_to_its_queue() -> None:
    default = settings.CELERY_TASK_DEFAULT_QUEUE
    before = _queued(default)
    reconcile_feed_runs.delay()
    assert _queued(default) == before


def test_messages_for_a_queue_of_the_test_s_own_still_go_out() -> None:
    queue = f"isolation-{uuid.uuid4().hex[:8]}"
    reconcile_feed_runs.apply_async(queue=queue)
    try:
        assert _queued(queue) == 1
    finally:
        with app.connection_for_write() as conn:
            conn.default_channel.queue_purge(queue)
