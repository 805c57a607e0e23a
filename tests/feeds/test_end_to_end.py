"""Data in -> ALS in a real Celery worker process -> every member's feed out over HTTP."""

from __future__ import annotations

import os
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest
from django.conf import settings
from django.core.management import call_command
from django.test import Client

from feeds.models import Creator, FeedRun, Interaction, Item
from governance.models import Membership

pytestmark = [pytest.mark.integration]

ROOT = Path(__file__).resolve().parents[2]


def test_movielens_feeds_are_computed_by_a_worker_and_served_to_every_member(
    transactional_db: None, celery_worker: subprocess.Popen[bytes], ml_100k: Path, client: Client
) -> None:
    call_command("import_movielens", str(ml_100k), community="ml-100k", no_progress=True)
    assert Membership.objects.filter(community__slug="ml-100k").count() == 943
    assert Item.objects.filter(community__slug="ml-100k").count() == 1682
    assert Interaction.objects.filter(community__slug="ml-100k").count() == 100_000
    assert (
        Creator.objects.filter(community__slug="ml-100k").exclude(external_id="unattributed")
    ).count() == 1131

    call_command("recompute_feeds", "ml-100k", wait=True, timeout=600)
    run = FeedRun.objects.get(community__slug="ml-100k")
    assert run.status == FeedRun.Status.FINISHED, Path(celery_worker.log_path).read_text()
    # The run was computed by the worker process, not in this one.
    assert "feeds.tasks.recompute_community_feeds[" in Path(celery_worker.log_path).read_text()

    # The credential comes from the command, as a script would get it: the last line of output.
    output = subprocess.run(
        [
            sys.executable,
            "manage.py",
            "create_app_credential",
            "ml-100k",
            "--name",
            "e2e",
            "--scopes",
            "feeds:read",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "DATABASE_URL": _db_url()},
    ).stdout
    token = output.strip().splitlines()[-1]
    assert token.startswith("cf_")

    seen: dict[str, set[str]] = defaultdict(set)
    for member, item in Interaction.objects.filter(community__slug="ml-100k").values_list(
        "member__external_id", "item__external_id"
    ):
        seen[member].add(item)
    n = settings.COMMONFEED_FEED_LENGTH
    members = list(
        Membership.objects.filter(community__slug="ml-100k").values_list("external_id", flat=True)
    )
    assert len(members) == 943
    for external_id in members:
        response = client.get(
            f"/api/v1/communities/ml-100k/feeds/{external_id}/",
            HTTP_AUTHORIZATION=f"Bearer {token}",
        )
        assert response.status_code == 200, response.content
        items = [entry["item"]["external_id"] for entry in response.json()["items"]]
        assert len(items) == n
        assert len(set(items)) == n
        assert not seen[external_id] & set(items), external_id


def _db_url() -> str:
    from django.db import connection

    from tests.conftest import _database_url_for_worker

    return _database_url_for_worker(connection.settings_dict)
