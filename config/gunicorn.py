"""gunicorn settings for Commonfeed: ``gunicorn -c config/gunicorn.py config.wsgi --workers 4``.

Command-line options and ``GUNICORN_CMD_ARGS`` override what is set here.

Garbage collection: a web worker holds about 130,000 long-lived objects that the collector
tracks (Django, DRF, the URLconf, the views' modules). Python's full (generation 2) collection
walks all of them, and measured here it stopped a worker for 55-190 ms every few seconds under
load: every request that worker was serving waited that long. Once the worker has loaded the
application, :func:`post_worker_init` imports the URLconf and moves everything that exists at
that moment into the permanent generation (:func:`gc.freeze`), which collections skip; a full
collection then took 4-25 ms. Objects created later, per request or cached, are collected as
before. The measurement and its command are in the history of docs/benchmarks.md
(``git log -p docs/benchmarks.md``, 2026-12-05).
"""

from __future__ import annotations

import gc
from typing import Any


def freeze_loaded_objects() -> int:
    """Import the URLconf (and with it every view module), then move every object the garbage
    collector tracks into the permanent generation. Returns how many objects it froze."""
    from django.urls import get_resolver

    get_resolver().url_patterns  # noqa: B018 - imports the URLconf, as the first request would
    gc.collect()  # leave garbage out of the permanent generation
    gc.freeze()
    return gc.get_freeze_count()


def post_worker_init(worker: Any) -> None:  # gunicorn server hook
    frozen = freeze_loaded_objects()
    worker.log.info("froze %d objects loaded before the first request", frozen)
