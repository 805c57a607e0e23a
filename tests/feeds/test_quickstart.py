"""The README's first command, minus the install and the server: the demo must come up."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def test_quickstart_seeds_computes_feeds_in_a_worker_and_prints_the_login(tmp_path: Path) -> None:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in {"DATABASE_URL", "REDIS_URL", "CELERY_BROKER_URL", "SECRET_KEY", "CI"}
    }
    # Embedded mode in a folder of its own: SQLite file, filesystem broker, worker log.
    env.update({"DEBUG": "true", "COMMONFEED_VAR_DIR": str(tmp_path)})
    env.pop("DJANGO_SETTINGS_MODULE", None)  # the real settings, as a user runs it
    result = subprocess.run(
        [
            sys.executable,
            "manage.py",
            "quickstart",
            "--no-serve",
            "--members",
            "200",
            "--items",
            "500",
            "--creators",
            "50",
            "--interactions",
            "8000",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "Feed run 1 finished" in out
    assert "user: admin   password: " in out
    assert "/c/demo/members/m0/feed/" in out
    assert "Authorization: Bearer cf_" in out
    assert "Worker stopped." in out
    # Sign-in accounts to run a proposal through the browser, with a one-hour vote.
    assert "/c/demo/governance/" in out
    for name in ("moderator", "alice", "bob", "carol"):
        assert f"          {name} / " in out
    assert "(admin, member " in out  # carol manages the members page
    assert "; creator c" in out and "dashboard /c/demo/creators/c" in out  # bob is a creator too
    # The run was done by the worker process, whose log shows the task.
    log = (tmp_path / "worker.log").read_text()
    assert "feeds.tasks.recompute_community_feeds[" in log
    assert (tmp_path / "commonfeed.sqlite3").exists()
