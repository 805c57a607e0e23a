"""The shipped gunicorn settings (config/gunicorn.py) load, and each worker freezes what it has
loaded before its first request."""

from __future__ import annotations

import gc
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from config.gunicorn import freeze_loaded_objects

ROOT = Path(__file__).resolve().parents[1]


def test_freezing_moves_the_loaded_application_out_of_reach_of_collections() -> None:
    assert gc.get_freeze_count() == 0
    try:
        frozen = freeze_loaded_objects()
        # Django, DRF and every view module: far more than a bare interpreter's few thousand.
        assert frozen > 50_000
        # It returns the count it froze; a frozen object freed since (another thread's) lowers
        # the count, never raises it.
        assert 0 <= frozen - gc.get_freeze_count() < 1_000
        # Collections still run on what was created later: a cycle made now is freed.
        cycle: list[object] = []
        cycle.append(cycle)
        del cycle
        assert gc.collect() >= 1
    finally:
        gc.unfreeze()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def test_gunicorn_started_with_the_settings_freezes_in_every_worker(tmp_path: Path) -> None:
    port = _free_port()
    log = tmp_path / "gunicorn.log"
    env = {
        **os.environ,
        "DEBUG": "true",
        "DJANGO_SETTINGS_MODULE": "config.settings",
        "COMMONFEED_VAR_DIR": str(tmp_path),
    }
    for name in ("DATABASE_URL", "REDIS_URL", "CELERY_BROKER_URL"):
        env.pop(name, None)  # embedded defaults: the page below reads no database
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gunicorn",
            "-c",
            "config/gunicorn.py",
            "config.wsgi",
            "-b",
            f"127.0.0.1:{port}",
            "-w",
            "2",
            "--log-level",
            "info",
            "--error-logfile",
            str(log),
        ],
        cwd=ROOT,
        env=env,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(
                    f"http://127.0.0.1:{port}/accounts/login/", timeout=5
                ) as r:
                    status = r.status
                break
            except (urllib.error.URLError, ConnectionError):
                assert server.poll() is None, log.read_text()
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.2)
        assert status == 200
        deadline = time.monotonic() + 30
        while log.read_text().count("froze ") < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        lines = [line for line in log.read_text().splitlines() if "froze " in line]
        assert len(lines) == 2, log.read_text()  # one per worker
        assert all("objects loaded before the first request" in line for line in lines)
    finally:
        server.terminate()
        server.wait(timeout=30)
