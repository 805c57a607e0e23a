from __future__ import annotations

import json
from typing import Any

import pytest
from django.test import Client

from feeds.models import Creator, Interaction, Item, ItemCreator
from feeds.services import app_credential_create, feed_run_execute, feed_run_request
from governance.models import Membership
from tests.factories import make_community, small_catalogue

pytestmark = pytest.mark.django_db

ALL_SCOPES = ["feeds:read", "events:write", "catalogue:write"]


class App:
    """A third-party app with a credential for one community."""

    def __init__(self, client: Client, slug: str, scopes: list[str] = ALL_SCOPES) -> None:
        self.community = make_community(slug)
        _, self.token = app_credential_create(community=self.community, name="app", scopes=scopes)
        self.client = client

    def post(self, what: str, rows: Any, *, slug: str | None = None) -> Any:
        return self.client.post(
            f"/api/v1/communities/{slug or self.community.slug}/{what}/",
            data=json.dumps({what: rows}),
            content_type="application/json",
            HTTP_AUTHORIZATION=f"Bearer {self.token}",
        )

    def get(self, path: str) -> Any:
        return self.client.get(
            f"/api/v1/communities/{self.community.slug}/{path}",
            HTTP_AUTHORIZATION=f"Bearer {self.token}",
        )


@pytest.fixture
def app(client: Client) -> App:
    return App(client, "alpha")


def _catalogue(app: App) -> None:
    assert (
        app.post("creators", [{"id": "c1", "name": "Ada"}, {"id": "c2", "name": "Bo"}]).status_code
        == 200
    )
    assert app.post("members", [{"id": f"m{i}"} for i in range(3)]).status_code == 200
    rows = [
        {"id": f"i{i}", "title": f"Item {i}", "creators": ["c1"] if i % 2 else ["c2", "c1"]}
        for i in range(6)
    ]
    assert app.post("items", rows).status_code == 200


def test_members_are_created_then_updated_by_external_id(app: App) -> None:
    first = app.post("members", [{"id": "m1"}, {"id": "m2", "display_name": "Two"}])
    assert first.status_code == 200
    assert first.json() == {"created": 2, "updated": 0}
    second = app.post("members", [{"id": "m2", "display_name": "Deux"}, {"id": "m3"}])
    assert second.json() == {"created": 1, "updated": 1}
    assert Membership.objects.get(external_id="m2").display_name == "Deux"
    assert Membership.objects.filter(community=app.community).count() == 3


def test_items_are_upserted_with_their_creators_in_credit_order(app: App) -> None:
    _catalogue(app)
    item = Item.objects.get(external_id="i0")
    assert [c.creator.external_id for c in item.credits.order_by("position")] == ["c2", "c1"]
    response = app.post(
        "items",
        [
            {
                "id": "i0",
                "title": "Renamed",
                "creators": ["c1"],
                "provenance": "ai_generated",
                "tags": ["a", "b"],
            }
        ],
    )
    assert response.json() == {"created": 0, "updated": 1}
    item.refresh_from_db()
    assert (item.title, item.provenance, item.tags) == ("Renamed", "ai_generated", ["a", "b"])
    assert [c.creator.external_id for c in item.credits.all()] == ["c1"]


def test_an_item_naming_an_unknown_creator_rejects_the_whole_batch(app: App) -> None:
    _catalogue(app)
    response = app.post(
        "items",
        [
            {"id": "new-ok", "title": "Fine", "creators": ["c1"]},
            {"id": "new-bad", "title": "Broken", "creators": ["c1", "ghost"]},
        ],
    )
    assert response.status_code == 400
    body = response.json()
    assert body["error"] == "invalid"
    assert body["rows"] == [
        {"index": 1, "field": "creators", "message": "unknown creator(s): ghost"}
    ]
    assert not Item.objects.filter(external_id__startswith="new-").exists()


def test_events_are_recorded_once_however_often_the_batch_is_sent(app: App) -> None:
    _catalogue(app)
    events = [
        {"id": "e1", "member": "m0", "item": "i1", "kind": "like"},
        {"id": "e2", "member": "m1", "item": "i2", "kind": "view", "weight": 2.5},
        {"id": "e3", "member": "m1", "item": "i3", "kind": "rating", "weight": 4},
    ]
    first = app.post("events", events)
    assert first.status_code == 200
    assert first.json() == {"accepted": 3, "duplicates": 0, "duplicate_ids": []}
    again = app.post("events", events)
    assert again.json() == {"accepted": 0, "duplicates": 3, "duplicate_ids": ["e1", "e2", "e3"]}
    assert Interaction.objects.filter(community=app.community).count() == 3
    weights = dict(Interaction.objects.values_list("idempotency_key", "weight"))
    assert weights == {"e1": 3.0, "e2": 2.5, "e3": 4.0}


def test_one_bad_event_rejects_the_batch_and_names_every_bad_row(app: App) -> None:
    _catalogue(app)
    response = app.post(
        "events",
        [
            {"id": "ok", "member": "m0", "item": "i1", "kind": "like"},
            {"id": "bad-member", "member": "stranger", "item": "i1", "kind": "like"},
            {"id": "bad-kind", "member": "m0", "item": "i1", "kind": "poke"},
            {"id": "bad-item", "member": "m0", "item": "nothing", "kind": "view"},
        ],
    )
    assert response.status_code == 400
    # Shape errors are reported first; reference errors only once every row is well formed.
    assert [(r["index"], r["field"]) for r in response.json()["rows"]] == [(2, "kind")]
    response = app.post(
        "events",
        [
            {"id": "ok", "member": "m0", "item": "i1", "kind": "like"},
            {"id": "bad-member", "member": "stranger", "item": "i1", "kind": "like"},
            {"id": "bad-item", "member": "m0", "item": "nothing", "kind": "view"},
        ],
    )
    assert [(r["index"], r["field"]) for r in response.json()["rows"]] == [
        (1, "member"),
        (2, "item"),
    ]
    assert not Interaction.objects.exists()


def test_a_rating_without_a_weight_is_rejected(app: App) -> None:
    _catalogue(app)
    response = app.post("events", [{"id": "r", "member": "m0", "item": "i1", "kind": "rating"}])
    assert response.status_code == 400
    assert response.json()["rows"][0]["field"] == "weight"


def test_the_same_event_id_twice_in_one_batch_is_rejected(app: App) -> None:
    _catalogue(app)
    row = {"id": "e", "member": "m0", "item": "i1", "kind": "like"}
    response = app.post("events", [row, row])
    assert response.status_code == 400
    assert response.json()["rows"][0]["index"] == 1


def test_more_than_a_thousand_rows_is_rejected_with_the_limit_named(app: App) -> None:
    rows = [{"id": f"m{i}"} for i in range(1001)]
    response = app.post("members", rows)
    assert response.status_code == 400
    assert "At most 1000 per request" in response.json()["detail"]["members"]
    assert not Membership.objects.filter(community=app.community).exists()


def test_a_body_over_the_size_limit_is_413(app: App, settings: Any) -> None:
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 2_000
    response = app.post("members", [{"id": f"member-{i:05d}"} for i in range(200)])
    assert response.status_code == 413
    assert not Membership.objects.filter(community=app.community).exists()


def test_a_body_that_is_not_a_batch_is_400(app: App) -> None:
    response = app.client.post(
        "/api/v1/communities/alpha/members/",
        data="[1, 2]",
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {app.token}",
    )
    assert response.status_code == 400
    assert response.json()["error"] == "invalid"
    broken = app.client.post(
        "/api/v1/communities/alpha/members/",
        data="{not json",
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {app.token}",
    )
    assert broken.status_code == 400
    assert broken.json()["error"] == "parse_error"


def test_writing_needs_the_right_scope(client: Client) -> None:
    reader = App(client, "reader", scopes=["feeds:read"])
    assert reader.post("members", [{"id": "m1"}]).status_code == 403
    assert reader.post("items", [{"id": "i", "title": "t", "creators": ["c"]}]).status_code == 403
    events_only = App(client, "events-only", scopes=["events:write"])
    assert events_only.post("creators", [{"id": "c", "name": "C"}]).status_code == 403


def test_an_app_cannot_write_into_another_community(client: Client) -> None:
    alpha = App(client, "alpha")
    make_community("beta")
    assert alpha.post("members", [{"id": "m1"}], slug="beta").status_code == 404
    assert not Membership.objects.filter(community__slug="beta").exists()


def test_a_thousand_events_take_a_fixed_number_of_queries(
    app: App, django_assert_max_num_queries: Any
) -> None:
    _catalogue(app)
    events = [
        {"id": f"e{i}", "member": f"m{i % 3}", "item": f"i{i % 6}", "kind": "view"}
        for i in range(1000)
    ]
    # Constant in the number of events: SQLite splits the INSERT by its parameter limit.
    with django_assert_max_num_queries(20):
        response = app.post("events", events)
    assert response.json()["accepted"] == 1000


def test_events_sent_over_the_api_shape_the_next_feed(app: App) -> None:
    small_catalogue(app.community)
    _catalogue(app)
    app.post(
        "events",
        [{"id": f"x{i}", "member": "m0", "item": f"i{i}", "kind": "like"} for i in range(3)],
    )
    feed_run_execute(run_id=feed_run_request(community=app.community).pk)
    feed = app.get("feeds/m0/").json()
    assert feed["items"]
    assert not {"i0", "i1", "i2"} & {e["item"]["external_id"] for e in feed["items"]}
    assert Creator.objects.filter(community=app.community).count() == 7
    assert ItemCreator.objects.filter(item__external_id="i0").count() == 2
