"""Cold start through the pipeline: a new creator's items reach members' first pages.

Under a ratified policy with ``candidates.new_items``, items nobody has interacted with are
candidates in a run, and items published after the run reach served feeds by fold-in (beat's
``fold_in_published_items``), through the same refusals. The ``integration`` test publishes
through the catalogue API and lets a real Celery worker refresh.
"""

from __future__ import annotations

import json
import subprocess
import time
from datetime import timedelta
from typing import Any

import pytest
from django.test import Client
from django.utils import timezone

from feeds.credentials.services import app_credential_create
from feeds.foldin import services as foldin
from feeds.foldin.services import member_feeds_refresh
from feeds.models import FeedPointer, Item
from governance.services import community_create
from ranking.effects import quota_required
from ranking.policy import Policy, policy_validate
from tests.factories import CreatorFactory, ItemFactory, MembershipFactory, interact, run_computed

UNSEEN = "New from a creator you haven't seen yet"


def _policy(new_items: int) -> Policy:
    return policy_validate(
        {
            "model": {"factors": 8, "iterations": 5, "seed": 3},
            "candidates": {"pool_size": 40, "new_items": new_items},
            "ranking": {"new_creator_quota": 0.2, "new_creator_days": 30},
            "refusals": [{"kind": "tag", "tag": "banned", "reason": "not here"}],
        }
    )


def _orchard(slug: str, new_items: int = 5) -> dict[str, Any]:
    """25 members who liked 8 of 48 old items by 4 creators; a new creator 'fresh' published
    three items yesterday that nobody has interacted with; a finished run."""
    community = community_create(slug=slug, name=slug.title(), policy=_policy(new_items))
    long_ago = timezone.now() - timedelta(days=400)
    creators = [CreatorFactory(community=community, external_id=f"c{i}") for i in range(4)]
    items = [
        ItemFactory(
            community=community, external_id=f"i{i}", published_at=long_ago, by=[creators[i % 4]]
        )
        for i in range(48)
    ]
    fresh = CreatorFactory(community=community, external_id="fresh")
    yesterday = timezone.now() - timedelta(days=1)
    for k in range(3):
        ItemFactory(community=community, external_id=f"f{k}", published_at=yesterday, by=[fresh])
    members = [MembershipFactory(community=community, external_id=f"m{j}") for j in range(25)]
    for m, member in enumerate(members):
        for k in range(8):
            interact(member, items[(m * 5 + k * 3) % 48])
    run = run_computed(community)
    _, token = app_credential_create(
        community=community, name="app", scopes=["feeds:read", "catalogue:write"]
    )
    return {"community": community, "run": run, "token": token, "members": members}


def _api(client: Client, orchard: dict[str, Any], method: str, path: str, body: Any = None) -> Any:
    return getattr(client, method)(
        f"/api/v1/communities/{orchard['community'].slug}/{path}",
        data=json.dumps(body) if body is not None else None,
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {orchard['token']}",
    )


def _first_page(client: Client, orchard: dict[str, Any], member: str) -> list[dict[str, Any]]:
    response = _api(client, orchard, "get", f"feeds/{member}/?limit=10")
    assert response.status_code == 200
    items: list[dict[str, Any]] = response.json()["items"]
    return items


def _new_creator(entry: dict[str, Any], creators: set[str]) -> bool:
    return entry["creators"][0]["external_id"] in creators


@pytest.mark.django_db
def test_a_new_creators_items_fill_the_share_of_every_first_page_the_policy_promises(
    client: Client,
) -> None:
    orchard = _orchard("orchard")

    for member in orchard["members"]:
        page = _first_page(client, orchard, member.external_id)
        flags = [_new_creator(entry, {"fresh"}) for entry in page]
        assert len(flags) == 10
        for k in range(1, 11):
            assert sum(flags[:k]) >= quota_required(0.2, k), (member.external_id, flags)
        for entry in page:
            if _new_creator(entry, {"fresh"}):
                assert any(reason.startswith(UNSEEN) for reason in entry["reasons"])


@pytest.mark.django_db
def test_without_the_lever_the_new_creator_reaches_no_one(client: Client) -> None:
    orchard = _orchard("plain", new_items=0)

    for member in orchard["members"]:
        page = _first_page(client, orchard, member.external_id)
        assert not any(_new_creator(entry, {"fresh"}) for entry in page)


@pytest.mark.django_db
def test_items_published_after_the_run_reach_feeds_by_fold_in_and_refusals_hold(
    client: Client,
) -> None:
    orchard = _orchard("later")
    community, run = orchard["community"], orchard["run"]
    assert foldin.published_items_fold_in() == []  # nothing published since the run
    late = CreatorFactory(community=community, external_id="late")
    now = timezone.now()
    kept = ItemFactory(community=community, external_id="l0", published_at=now, by=[late])
    ItemFactory(community=community, external_id="l1", published_at=now, tags=["banned"], by=[late])

    asked = foldin.published_items_fold_in()

    assert asked == [community.pk]
    pointer = FeedPointer.objects.get(community=community)
    assert (pointer.run_id, pointer.published_through) == (run.pk, Item.objects.latest("pk").pk)
    assert foldin.published_items_fold_in() == []  # asked once per newest item
    # The requests went to the fold-in queue (a worker drains it); refresh here instead.
    member_feeds_refresh(community=community, member_ids=[m.pk for m in orchard["members"]])
    reached = 0
    for member in orchard["members"]:
        page = _first_page(client, orchard, member.external_id)
        shown = {entry["item"]["external_id"] for entry in page}
        assert "l1" not in shown, "a refused item never appears"
        reached += "l0" in shown
        flags = [_new_creator(entry, {"fresh", "late"}) for entry in page]
        for k in range(1, len(flags) + 1):
            assert sum(flags[:k]) >= quota_required(0.2, k)
    assert reached > 0
    assert kept.pk == pointer.published_through - 1


@pytest.mark.integration
def test_an_item_posted_by_an_app_reaches_feeds_through_the_worker(
    transactional_db: None, celery_worker: subprocess.Popen[bytes], client: Client
) -> None:
    orchard = _orchard("posted")
    creators = {"creators": [{"id": "newcomer", "name": "Newcomer"}]}
    assert _api(client, orchard, "post", "creators/", creators).status_code == 200
    item = {
        "id": "p0",
        "title": "Posted after the run",
        "creators": ["newcomer"],
        "published_at": timezone.now().isoformat(),
    }
    response = _api(client, orchard, "post", "items/", {"items": [item]})
    assert response.status_code == 200, response.content

    assert foldin.published_items_fold_in() == [orchard["community"].pk]

    def reached() -> list[str]:
        return [
            member.external_id
            for member in orchard["members"]
            if any(
                entry["item"]["external_id"] == "p0"
                for entry in _first_page(client, orchard, member.external_id)
            )
        ]

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not reached():
        time.sleep(0.5)
    assert reached(), "the worker's fold-in put the posted item in members' first pages"
