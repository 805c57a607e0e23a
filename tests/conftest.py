"""Shared fixtures. The ``celery_worker`` fixture runs a real worker process, not eager tasks."""

from __future__ import annotations

import os
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from subprocess import Popen
from typing import Any
from urllib.parse import quote

import pytest

from tests.browser import CHROMIUM_ARGS, chromium_path

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
ML_100K = SHARED_DATA / "ml-100k"


def _database_url_for_worker(settings_dict: dict[str, object]) -> str:
    """The DATABASE_URL that points a separate process at the test database."""
    engine = str(settings_dict["ENGINE"])
    name = str(settings_dict["NAME"])
    if engine.endswith("sqlite3"):
        return f"sqlite:///{Path(name).resolve()}"
    user = quote(str(settings_dict.get("USER") or ""))
    password = quote(str(settings_dict.get("PASSWORD") or ""))
    auth = f"{user}:{password}@" if password else (f"{user}@" if user else "")
    host = settings_dict.get("HOST") or "localhost"
    port = settings_dict.get("PORT") or 5432
    return f"postgres://{auth}{host}:{port}/{name}"


@pytest.fixture(scope="session")
def celery_worker(
    django_db_setup: None, django_db_blocker: pytest.FixtureRequest, tmp_path_factory
) -> Iterator[Popen[bytes]]:
    """A real ``celery worker`` process consuming from the configured broker, on the test DB.

    Tests that use it must commit their data (``transactional_db``): the worker is another
    process with its own database connection.
    """
    from django.db import connection

    from config.celery import app
    from feeds.worker import worker_start, worker_stop

    with django_db_blocker.unblock():  # type: ignore[attr-defined]
        url = _database_url_for_worker(connection.settings_dict)
    # Messages left over from an earlier, interrupted run would be consumed against this
    # database; start from an empty queue.
    app.control.purge()
    log = tmp_path_factory.mktemp("worker") / "worker.log"
    name = f"commonfeed-tests-{os.getpid()}@{socket.gethostname()}"
    process = worker_start(env={"DATABASE_URL": url}, log_path=log, loglevel="INFO", name=name)
    deadline = time.monotonic() + 60
    while b"ready" not in (log.read_bytes() if log.exists() else b""):
        if process.poll() is not None or time.monotonic() > deadline:
            worker_stop(process)
            pytest.fail(f"Celery worker did not start:\n{log.read_text(errors='replace')}")
        time.sleep(0.2)
    process.log_path = log  # type: ignore[attr-defined]
    _shared_worker.append(name)
    yield process
    _shared_worker.clear()
    worker_stop(process)


# The node name of the session's shared worker while it runs (a list, so fixtures can change it).
_shared_worker: list[str] = []


def _shared_worker_wait_idle(name: str, *, timeout: float = 60.0) -> None:
    """Wait until the shared worker has nothing queued, running or reserved.

    A task still running when a transactional test flushes the database deadlocks with the
    flush's TRUNCATE (or, if it runs after, writes into the next test's tables).
    """
    from django.conf import settings

    from config.celery import app

    queue = settings.CELERY_TASK_DEFAULT_QUEUE
    deadline = time.monotonic() + timeout
    while True:
        try:
            with app.connection_for_write() as conn:
                queued = conn.default_channel._size(queue)
            inspect = app.control.inspect(destination=[name], timeout=1.0)
            # The solo pool answers remote control only between tasks: no reply means busy.
            active, reserved = inspect.active(), inspect.reserved()
        except ValueError:
            # The filesystem transport can read a reply file its writer has not filled yet
            # (an empty JSON document): ask again.
            queued, active, reserved = 1, None, None
        if not queued and active and reserved and not active[name] and not reserved[name]:
            return
        if time.monotonic() > deadline:
            pytest.fail(
                f"the shared Celery worker was still busy {timeout:.0f} s after the test: "
                f"{queued} queued, active {active}, reserved {reserved}"
            )
        time.sleep(0.05)


@pytest.fixture(autouse=True)
def shared_worker_isolation(request: pytest.FixtureRequest, monkeypatch: Any) -> Iterator[None]:
    """Keep the session's shared Celery worker to the tests that ask for it.

    Once started, the ``celery_worker`` process consumes the default queue for the rest of the
    session. So that it never runs another test's tasks, against another test's rows:

    - a test that does not use it sends nothing to the default queue: such messages are
      dropped, as they were never consumed before the worker started either (messages for
      another queue go out: tests that start workers of their own give them their own queue);
    - a transactional test waits, before its database is flushed, until the worker is idle,
      since workers the test started may have sent it work (a finished run's metrics).
    """
    from django.conf import settings

    marker = request.node.get_closest_marker("django_db")
    transactional = bool(
        {"transactional_db", "live_server"} & set(request.fixturenames)
        or (marker is not None and marker.kwargs.get("transaction"))
    )
    if transactional:
        # Set up before this fixture, so torn down (flushed) after its wait below.
        request.getfixturevalue("_django_db_helper")
    uses_worker = "celery_worker" in request.fixturenames
    if not uses_worker:
        from config.celery import app

        send_task = app.send_task

        def send_task_unless_shared(
            name: str, args: Any = None, kwargs: Any = None, **options: Any
        ):
            if options.get("queue") in (None, "", settings.CELERY_TASK_DEFAULT_QUEUE):
                return app.AsyncResult(options.get("task_id") or str(uuid.uuid4()))
            return send_task(name, args, kwargs, **options)

        monkeypatch.setattr(app, "send_task", send_task_unless_shared)
    yield
    # Remote control over the filesystem broker (the embedded mode) polls once a second: there
    # only the worker's own tests wait.
    remote_control_is_slow = settings.CELERY_BROKER_URL.startswith("filesystem://")
    if _shared_worker and transactional and (uses_worker or not remote_control_is_slow):
        _shared_worker_wait_idle(_shared_worker[0])


@pytest.fixture(autouse=True)
def redis_reachable() -> None:
    """Each test starts with Redis taken as reachable. After a failed call the feed cache and
    the throttle leave Redis alone for a few seconds (a back-off, module state); a test that
    made one fail, on purpose or not, must not turn the next test's cache off."""
    from feeds.credentials import throttling
    from feeds.serving import cache as feedcache

    feedcache._down_until = throttling._down_until = 0.0


@pytest.fixture
def ml_100k() -> Path:
    if not ML_100K.is_dir():
        pytest.skip(f"MovieLens data not found at {ML_100K}")
    return ML_100K


@pytest.fixture
def page() -> Iterator[object]:
    """A Playwright page in headless Debian Chromium."""
    from playwright.sync_api import sync_playwright

    # Playwright's sync API runs an event loop in this thread; the ORM calls the test makes
    # between page actions are still plain synchronous calls.
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS)
            context = browser.new_context()
            yield context.new_page()
            context.close()
            browser.close()
            # ORM calls made while Playwright's event loop runs get connections of their own
            # (asgiref locals are per context); close them here, or the test database cannot be
            # dropped at the end of the session.
            from django.db import connections

            connections.close_all()
    finally:
        os.environ.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)
