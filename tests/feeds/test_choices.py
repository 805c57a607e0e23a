"""Members' and creators' own refusals, set over the API, honoured by the next feed run."""

from __future__ import annotations

import json
from typing import Any

import pytest
from django.test import Client

from feeds.credentials.services import app_credential_create
from feeds.models import Creator, FeedRun, Interaction, Item
from feeds.runs.services import feed_run_execute, feed_run_request
from governance.models import AuditEntry
from tests.factories import (
    CreatorFactory,
    ItemFactory,
    MembershipFactory,
    app_call,
    interact,
    make_community,
    members_who_interacted,
)

pytestmark = pytest.mark.django_db

PERSONALISED = "Members with similar taste engaged with this."


@pytest.fixture
def garden(client: Client) -> dict[str, Any]:
    community = make_community("garden")
    creators = [CreatorFactory(community=community, external_id=f"c{i}") for i in range(4)]
    items = [
        ItemFactory(
            community=community,
            external_id=f"i{i}",
            tags=["loud"] if i % 4 == 0 else ["calm"],
            by=[creators[i % 4]],
        )
        for i in range(48)
    ]
    members = members_who_interacted(community, items)
    _, token = app_credential_create(
        community=community,
        name="app",
        scopes=["feeds:read", "events:write", "catalogue:write"],
    )
    return {"community": community, "token": token, "client": client, "members": members}


def _call(garden: dict[str, Any], method: str, path: str, body: Any = None) -> Any:
    return app_call(garden["client"], garden["token"], method, f"garden/{path}", body)


def _recompute(garden: dict[str, Any]) -> FeedRun:
    return feed_run_execute(run_id=feed_run_request(community=garden["community"]).pk)


def _feed(garden: dict[str, Any], member: str) -> list[dict[str, Any]]:
    response = _call(garden, "get", f"feeds/{member}/")
    assert response.status_code == 200
    return response.json()["items"]  # type: ignore[no-any-return]


def test_choices_start_at_the_defaults_and_change_only_what_is_sent(garden: dict[str, Any]) -> None:
    assert _call(garden, "get", "members/m1/choices/").json() == {
        "personalise": True,
        "train_on_my_data": True,
        "muted_creators": [],
        "muted_tags": [],
    }
    response = _call(garden, "put", "members/m1/choices/", {"muted_tags": ["loud"]})
    assert response.status_code == 200
    assert response.json()["muted_tags"] == ["loud"]
    assert response.json()["personalise"] is True


def test_muted_creators_and_tags_never_reach_the_members_feed(garden: dict[str, Any]) -> None:
    _recompute(garden)
    before = _feed(garden, "m1")
    assert any(e["creators"][0]["external_id"] == "c1" for e in before)
    _call(garden, "put", "members/m1/choices/", {"muted_creators": ["c1"], "muted_tags": ["loud"]})
    _recompute(garden)
    after = _feed(garden, "m1")
    assert after
    assert not [e for e in after if "c1" in {c["external_id"] for c in e["creators"]}]
    assert not [e for e in after if "loud" in e["item"]["tags"]]
    # Other members are not affected by m1's mutes.
    assert any(e["creators"][0]["external_id"] == "c1" for e in _feed(garden, "m2"))


def test_a_member_who_refuses_personalisation_gets_the_community_feed(
    garden: dict[str, Any],
) -> None:
    _call(garden, "put", "members/m3/choices/", {"personalise": False})
    _recompute(garden)
    feed = _feed(garden, "m3")
    assert feed and not any(PERSONALISED in e["reasons"] for e in feed)
    assert any(PERSONALISED in e["reasons"] for e in _feed(garden, "m4"))


def test_a_member_who_refuses_training_is_left_out_of_the_model(garden: dict[str, Any]) -> None:
    trained_before = _recompute(garden).stats["n_members_trained"]
    _call(garden, "put", "members/m5/choices/", {"train_on_my_data": False})
    run = _recompute(garden)
    assert run.stats["n_members_trained"] == trained_before - 1
    assert _feed(garden, "m5"), "they still get a feed"


def test_a_creator_who_opts_out_disappears_from_every_feed(garden: dict[str, Any]) -> None:
    response = _call(garden, "put", "creators/c2/choices/", {"opted_out": True})
    assert response.status_code == 200
    run = _recompute(garden)
    for member in garden["members"]:
        feed = _feed(garden, member.external_id)
        assert not [e for e in feed if "c2" in {c["external_id"] for c in e["creators"]}]
    c2_items = set(
        Item.objects.filter(credits__creator__external_id="c2").values_list("pk", flat=True)
    )
    assert not c2_items & set(run.fallback_item_ids)


def test_deleting_a_members_data_removes_it_and_audits_only_the_request(
    garden: dict[str, Any],
) -> None:
    count = Interaction.objects.filter(member__external_id="m6").count()
    response = _call(garden, "post", "members/m6/data-deletion/")
    assert response.status_code == 200
    assert response.json() == {"interactions_deleted": count}
    assert not Interaction.objects.filter(member__external_id="m6").exists()
    entry = AuditEntry.objects.get(action="member.data_deleted")
    assert json.loads(entry.payload_json) == {"member": "m6", "interactions_deleted": count}


def test_every_choice_change_is_audited(garden: dict[str, Any]) -> None:
    _call(garden, "put", "members/m1/choices/", {"personalise": False})
    _call(garden, "put", "creators/c0/choices/", {"opted_out": True})
    actions = set(AuditEntry.objects.values_list("action", flat=True))
    assert {"member.choices_changed", "creator.choices_changed"} <= actions


def test_bad_choices_are_rejected_with_the_field_named(garden: dict[str, Any]) -> None:
    unknown = _call(garden, "put", "members/m1/choices/", {"muted_creators": ["ghost"]})
    assert unknown.status_code == 400
    assert "ghost" in unknown.json()["detail"]["muted_creators"]
    wrong_type = _call(garden, "put", "members/m1/choices/", {"personalise": "no"})
    assert wrong_type.status_code == 400
    assert "personalise" in wrong_type.json()["detail"]
    assert _call(garden, "put", "members/nobody/choices/", {}).status_code == 404
    assert _call(garden, "put", "creators/nobody/choices/", {"opted_out": True}).status_code == 404


def test_changing_choices_needs_the_write_scope(client: Client) -> None:
    community = make_community("readonly")
    MembershipFactory(community=community, external_id="m1")
    _, token = app_credential_create(community=community, name="reader", scopes=["feeds:read"])
    response = client.put(
        "/api/v1/communities/readonly/members/m1/choices/",
        data=json.dumps({"personalise": False}),
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {token}",
    )
    assert response.status_code == 403


def _logged_in_member(client: Client, garden: dict[str, Any]) -> Any:
    from django.contrib.auth import get_user_model

    user = get_user_model().objects.create_user("ada", password="a-long-password-1")
    member = garden["members"][0]
    member.user = user
    member.save()
    client.force_login(user)
    return member


def test_a_member_sets_their_choices_on_their_settings_page(
    client: Client, garden: dict[str, Any]
) -> None:
    member = _logged_in_member(client, garden)
    page = client.get("/c/garden/settings/")
    assert page.status_code == 200
    assert b"Personalise my feed" in page.content
    # No feed served yet: only creators the member has met are offered.
    offered = set(
        page.context["form"].fields["muted_creators"].queryset.values_list("external_id", flat=True)
    )
    assert offered and offered <= {"c0", "c1", "c2", "c3"}
    c1 = page.context["form"].fields["muted_creators"].queryset.get(external_id="c1")
    response = client.post(
        "/c/garden/settings/",
        {"train_on_my_data": "on", "muted_creators": [c1.pk], "muted_tags": "loud, sad"},
    )
    assert response.status_code == 302
    saved = _call(garden, "get", f"members/{member.external_id}/choices/").json()
    assert saved == {
        "personalise": False,
        "train_on_my_data": True,
        "muted_creators": ["c1"],
        "muted_tags": ["loud", "sad"],
    }


def test_the_settings_page_offers_to_mute_the_creators_of_the_feed_served_now(
    client: Client, garden: dict[str, Any], django_capture_on_commit_callbacks: Any
) -> None:
    member = _logged_in_member(client, garden)
    # A creator this member never met, whom the others like: the feed recommends them.
    stranger = CreatorFactory(community=garden["community"], external_id="c9", name="Stranger")
    for n in range(3):
        item = ItemFactory(community=garden["community"], external_id=f"s{n}", by=[stranger])
        for other in garden["members"][1:]:
            interact(other, item)
    offered = _offered(client)
    assert "c9" not in offered and offered <= {"c0", "c1", "c2", "c3"}

    _recompute(garden)
    assert {"external_id": "c9", "name": "Stranger"} in [
        c for entry in _feed(garden, member.external_id) for c in entry["creators"]
    ]
    assert "c9" in _offered(client)
    c9 = Creator.objects.get(community=garden["community"], external_id="c9")
    with django_capture_on_commit_callbacks(execute=True):  # drops the cached pages
        response = client.post(
            "/c/garden/settings/", {"personalise": "on", "muted_creators": [c9.pk]}
        )
    assert response.status_code == 302
    assert all(
        "c9" not in [c["external_id"] for c in entry["creators"]]
        for entry in _feed(garden, member.external_id)
    )


def _offered(client: Client) -> set[str]:
    page = client.get("/c/garden/settings/")
    assert page.status_code == 200
    field = page.context["form"].fields["muted_creators"]
    return set(field.queryset.values_list("external_id", flat=True))


def test_deleting_activity_on_the_page_needs_confirmation(
    client: Client, garden: dict[str, Any]
) -> None:
    member = _logged_in_member(client, garden)
    refused = client.post("/c/garden/settings/", {"delete": "1"})
    assert refused.status_code == 200
    assert Interaction.objects.filter(member=member).exists()
    done = client.post("/c/garden/settings/", {"delete": "1", "confirm": "on"})
    assert done.status_code == 302
    assert not Interaction.objects.filter(member=member).exists()


def test_the_settings_page_needs_a_login_and_a_membership(
    client: Client, garden: dict[str, Any]
) -> None:
    from django.contrib.auth import get_user_model

    anonymous = client.get("/c/garden/settings/")
    assert anonymous.status_code == 302
    outsider = get_user_model().objects.create_user("bo", password="a-long-password-2")
    client.force_login(outsider)
    assert client.get("/c/garden/settings/").status_code == 404
