"""Shared fixtures. The ``celery_worker`` fixture runs a real worker process, not eager tasks."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from subprocess import Popen
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
    process = worker_start(env={"DATABASE_URL": url}, log_path=log, loglevel="INFO")
    deadline = time.monotonic() + 60
    while b"ready" not in (log.read_bytes() if log.exists() else b""):
        if process.poll() is not None or time.monotonic() > deadline:
            worker_stop(process)
            pytest.fail(f"Celery worker did not start:\n{log.read_text(errors='replace')}")
        time.sleep(0.2)
    process.log_path = log  # type: ignore[attr-defined]
    yield process
    worker_stop(process)


@pytest.fixture(autouse=True)
def redis_reachable() -> None:
    """Each test starts with Redis taken as reachable. After a failed call the feed cache and
    the throttle leave Redis alone for a few seconds (a back-off, module state); a test that
    made one fail, on purpose or not, must not turn the next test's cache off."""
    from feeds import feedcache, throttling

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
