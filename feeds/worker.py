"""Start and stop a real Celery worker process (used by ``quickstart`` and the test suite)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

from django.conf import settings

BASE_DIR = Path(settings.BASE_DIR)


def worker_command(
    *,
    loglevel: str = "INFO",
    queue: str | None = None,
    beat: bool = False,
    name: str | None = None,
) -> list[str]:
    embedded_beat = (
        # One process runs the periodic tasks too (closing proposals, reconciling runs): fine
        # for a single machine; production runs `celery -A config beat` once, separately.
        ["-B", "--schedule", str(settings.VAR_DIR / "celerybeat-schedule")] if beat else []
    )
    return [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "config",
        "worker",
        "--pool=solo",
        f"--loglevel={loglevel}",
        "--without-gossip",
        "--without-mingle",
        "-Q",
        queue or settings.CELERY_TASK_DEFAULT_QUEUE,
        "-n",
        name or f"commonfeed-{os.getpid()}@%h",
        *embedded_beat,
    ]


def worker_start(
    *,
    env: Mapping[str, str] | None = None,
    log_path: Path | None = None,
    loglevel: str = "INFO",
    queue: str | None = None,
    beat: bool = False,
    name: str | None = None,
) -> subprocess.Popen[bytes]:
    """Start a worker in its own process with the same settings as this process.

    ``env`` entries override this process's environment (tests point the worker at the test
    database this way). ``name`` is the worker's node name (``celery -n``), for remote control.
    """
    full_env = {**os.environ, **(env or {})}
    full_env.setdefault("DJANGO_SETTINGS_MODULE", os.environ.get("DJANGO_SETTINGS_MODULE", ""))
    out = open(log_path, "ab") if log_path else None  # noqa: SIM115 - closed with the process
    return subprocess.Popen(
        worker_command(loglevel=loglevel, queue=queue, beat=beat, name=name),
        cwd=BASE_DIR,
        env=full_env,
        stdout=out,
        stderr=subprocess.STDOUT if out else None,
    )


def worker_stop(process: subprocess.Popen[bytes], *, timeout: float = 15.0) -> None:
    """Warm shutdown (SIGTERM lets the current task finish), then SIGKILL if it hangs."""
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
