"""The ratified policy shapes what apps pull: refusals, labels, caps; every run is audited."""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

import pytest
from django.test import Client

from feeds.credentials.services import app_credential_create
from feeds.models import FeedRun, Item
from feeds.runs.services import feed_run_execute, feed_run_request
from governance.models import AuditEntry
from governance.selectors import audit_verify
from governance.services import community_create
from ranking.policy import Policy, policy_validate
from tests.factories import CreatorFactory, ItemFactory, MembershipFactory, interact

pytestmark = pytest.mark.django_db


def _community(policy: Policy) -> dict[str, Any]:
    community = community_create(slug="garden", name="Garden", policy=policy)
    creators = [CreatorFactory(community=community, external_id=f"c{i}") for i in range(4)]
    items = [
        ItemFactory(
            community=community,
            external_id=f"i{i}",
            tags=["banned"] if i % 5 == 0 else ["ok"],
            provenance="ai_generated" if i % 7 == 0 else "human",
            by=[creators[i % 4]],
        )
        for i in range(60)
    ]
    members = [MembershipFactory(community=community) for _ in range(25)]
    for m, member in enumerate(members):
        for k in range(8):
            # Refused items are popular too: the refusal, not the scores, must keep them out.
            interact(member, items[(m * 7 + k * 5) % 60])
    run = feed_run_execute(run_id=feed_run_request(community=community).pk)
    _, token = app_credential_create(community=community, name="app", scopes=["feeds:read"])
    return {"community": community, "members": members, "run": run, "token": token}


def _pull_all(client: Client, garden: dict[str, Any]) -> list[list[dict[str, Any]]]:
    feeds = []
    for member in garden["members"]:
        response = client.get(
            f"/api/v1/communities/garden/feeds/{member.external_id}/",
            HTTP_AUTHORIZATION=f"Bearer {garden['token']}",
        )
        assert response.status_code == 200
        feeds.append(response.json()["items"])
    return feeds


def test_items_refused_by_the_policy_never_appear_in_any_pulled_feed(client: Client) -> None:
    policy = policy_validate(
        {
            "refusals": [
                {"kind": "tag", "tag": "banned", "reason": "The community voted it out."},
                {"kind": "creator", "creator": "c3", "reason": "The creator asked to leave."},
                {"kind": "provenance", "provenance": "ai_generated", "reason": "Humans only."},
            ]
        }
    )
    garden = _community(policy)
    feeds = _pull_all(client, garden)
    assert all(feeds), "every member still gets a feed"
    shown = [entry for feed in feeds for entry in feed]
    assert not [e for e in shown if "banned" in e["item"]["tags"]]
    assert not [e for e in shown if e["creators"][0]["external_id"] == "c3"]
    assert not [e for e in shown if e["item"]["provenance"] == "ai_generated"]


def test_the_creator_cap_holds_on_every_pulled_feed(client: Client) -> None:
    garden = _community(policy_validate({"ranking": {"creator_cap": 2}}))
    for feed in _pull_all(client, garden):
        per_creator = Counter(e["creators"][0]["external_id"] for e in feed)
        assert per_creator and max(per_creator.values()) <= 2


def test_entries_explain_themselves_and_ai_generated_items_are_labelled(client: Client) -> None:
    garden = _community(Policy())  # the default policy labels AI-generated items
    shown = [entry for feed in _pull_all(client, garden) for entry in feed]
    assert all(entry["reasons"] for entry in shown)
    ai = [e for e in shown if e["item"]["provenance"] == "ai_generated"]
    assert ai and all("Labelled: AI-generated." in e["reasons"] for e in ai)
    human = [e for e in shown if e["item"]["provenance"] == "human"]
    assert human and not any("Labelled: AI-generated." in e["reasons"] for e in human)


def test_every_run_is_audited_with_the_policy_hash_it_used() -> None:
    garden = _community(Policy())
    run: FeedRun = garden["run"]
    entries = list(
        AuditEntry.objects.filter(community=garden["community"], action__startswith="feed_run.")
        .order_by("seq")
        .values_list("action", "payload_json")
    )
    assert [action for action, _ in entries] == ["feed_run.started", "feed_run.finished"]
    finished = json.loads(entries[1][1])
    assert finished["policy_sha256"] == run.policy_sha256
    assert finished["run"] == run.pk
    assert finished["status"] == "finished"
    assert all(state.problem is None for state in audit_verify(community=garden["community"]))


def test_a_policy_needing_item_attributes_works_on_a_community_without_tags() -> None:
    community = community_create(
        slug="bare", name="Bare", policy=policy_validate({"ranking": {"creator_cap": 1}})
    )
    item = ItemFactory(community=community, tags=[])
    member = MembershipFactory(community=community)
    interact(member, item)
    run = feed_run_execute(run_id=feed_run_request(community=community).pk)
    assert run.status == FeedRun.Status.FINISHED
    assert Item.objects.filter(community=community).count() == 1


@pytest.mark.parametrize(
    "treatment", [{"action": "exclude"}, {"action": "cap_share", "max_share": 0}]
)
def test_the_runs_fallback_feed_leaves_out_a_provenance_class_the_policy_shuts_out(
    treatment: dict[str, Any],
) -> None:
    # A share of 0 shuts a class out as surely as "exclude": served pages drop both, so the
    # fallback stored with the run (for members without a personal feed) must not hold either.
    garden = _community(policy_validate({"ranking": {"provenance": {"ai_generated": treatment}}}))
    run: FeedRun = garden["run"]
    ai = set(
        Item.objects.filter(community=garden["community"], provenance="ai_generated").values_list(
            "pk", flat=True
        )
    )
    assert run.fallback_item_ids and ai
    assert not ai & set(run.fallback_item_ids)
