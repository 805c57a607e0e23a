"""Settings come from the environment and fail loudly on bad values."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_OURS = {"DEBUG", "SECRET_KEY", "DATABASE_URL", "REDIS_URL", "CELERY_BROKER_URL", "ALLOWED_HOSTS"}


def _django(
    args: list[str], env: dict[str, str], tmp_path: Path
) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if k not in _OURS}
    clean.update({"DJANGO_SETTINGS_MODULE": "config.settings", "COMMONFEED_VAR_DIR": str(tmp_path)})
    clean.update(env)
    return subprocess.run(
        [sys.executable, "manage.py", *args], cwd=ROOT, env=clean, capture_output=True, text=True
    )


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"DEBUG": "maybe"}, "DEBUG='maybe' is not a boolean"),
        ({"DEBUG": "false"}, "SECRET_KEY is required when DEBUG is off"),
        ({"DEBUG": "true", "DATABASE_URL": "mysql://u@h/db"}, "DATABASE_URL must be postgres://"),
        ({"DEBUG": "true", "DB_CONN_MAX_AGE": "soon"}, "DB_CONN_MAX_AGE='soon' is not an integer"),
        ({"DEBUG": "true", "CSRF_TRUSTED_ORIGINS": "example.org"}, "must start with http"),
        ({"DEBUG": "true", "CELERY_BROKER_URL": "kafka://x"}, "CELERY_BROKER_URL='kafka://x'"),
        ({"DEBUG": "true", "COMMONFEED_FEED_LENGTH": "0"}, "COMMONFEED_FEED_LENGTH=0 must be"),
        ({"DEBUG": "true", "COMMONFEED_VISIBLE_DEPTH": "0"}, "COMMONFEED_VISIBLE_DEPTH=0 must be"),
        ({"DEBUG": "true", "COMMONFEED_VISIBLE_DEPTH": "ten"}, "COMMONFEED_VISIBLE_DEPTH='ten'"),
    ],
)
def test_a_bad_setting_stops_start_up_with_a_message_naming_it(
    env: dict[str, str], message: str, tmp_path: Path
) -> None:
    result = _django(["check"], env, tmp_path)
    assert result.returncode != 0
    assert message in result.stderr


def test_production_settings_pass_the_deployment_checklist(tmp_path: Path) -> None:
    env = {
        "DEBUG": "false",
        "SECRET_KEY": "k" * 20 + "-production-like-key-with-enough-entropy-0123456789",
        "ALLOWED_HOSTS": "commonfeed.example.org",
    }
    result = _django(["check", "--deploy", "--fail-level", "WARNING"], env, tmp_path)
    assert result.returncode == 0, result.stderr
    assert "no issues" in result.stdout


def test_without_any_environment_it_runs_embedded_on_sqlite_and_the_filesystem_broker(
    tmp_path: Path,
) -> None:
    code = (
        "from django.conf import settings as s;"
        "print(s.DATABASES['default']['ENGINE']); print(s.CELERY_BROKER_URL)"
    )
    result = _django(["shell", "-v", "0", "-c", code], {"DEBUG": "true"}, tmp_path)
    assert result.returncode == 0, result.stderr
    engine, broker = result.stdout.split()
    assert engine == "django.db.backends.sqlite3"
    assert broker.startswith("filesystem://")
