from __future__ import annotations

import json
import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.db import connection, transaction
from django.test import Client

from feeds.credentials.services import app_credential_create
from feeds.ingest import schemas as ingest_schemas
from feeds.ingest import services as ingest
from feeds.models import Creator, Interaction, Item, ItemCreator
from feeds.runs.services import feed_run_execute, feed_run_request
from governance.models import AuditEntry, Membership
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


def test_a_creator_is_linked_to_their_member_account_and_each_change_audited(
    app: App, client: Client
) -> None:
    _catalogue(app)

    def links() -> dict[str, str | None]:
        return {
            c.external_id: c.member.external_id if c.member else None
            for c in Creator.objects.filter(community=app.community).select_related("member")
        }

    def entries() -> list[dict[str, Any]]:
        return [
            json.loads(e.payload_json)
            for e in AuditEntry.objects.filter(
                community=app.community, action="creator.member_linked"
            ).order_by("seq")
        ]

    batch = [{"id": "c1", "name": "Ada", "member": "m1"}, {"id": "c2", "name": "Bo"}]
    assert app.post("creators", batch).json() == {"created": 0, "updated": 2}
    assert links() == {"c1": "m1", "c2": None}
    assert app.post("creators", batch).status_code == 200  # the same again: no change, no entry
    assert entries() == [{"creator": "c1", "member": "m1", "previous": None}]

    # The member's account now reads the creator's dashboard.
    user = get_user_model().objects.create_user("ada", password="a-long-password-1")
    Membership.objects.filter(community=app.community, external_id="m1").update(user=user)
    client.force_login(user)
    assert client.get("/c/alpha/creators/c1/").status_code == 200
    assert client.get("/c/alpha/creators/c2/").status_code == 403
    home = client.get("/").content.decode()
    assert 'href="/c/alpha/creators/c1/"' in home and "/c/alpha/creators/c2/" not in home

    # Left out, the link stays; another member takes it over; null unlinks.
    assert app.post("creators", [{"id": "c1", "name": "Ada L."}]).status_code == 200
    assert links()["c1"] == "m1"
    assert app.post("creators", [{"id": "c1", "name": "Ada", "member": "m2"}]).status_code == 200
    assert app.post("creators", [{"id": "c1", "name": "Ada", "member": None}]).status_code == 200
    assert links()["c1"] is None
    assert entries()[1:] == [
        {"creator": "c1", "member": "m2", "previous": "m1"},
        {"creator": "c1", "member": None, "previous": "m2"},
    ]


def test_linking_a_creator_in_the_admin_is_audited_too(app: App, client: Client) -> None:
    _catalogue(app)
    creator = Creator.objects.get(community=app.community, external_id="c2")
    Creator.objects.filter(pk=creator.pk).update(opted_out=True)  # the creator's own choice
    member = Membership.objects.get(community=app.community, external_id="m2")
    root = get_user_model().objects.create_superuser("root", "root@example.org", "pw")
    client.force_login(root)
    response = client.post(
        f"/admin/feeds/creator/{creator.pk}/change/",
        {"community": app.community.pk, "external_id": "c2", "name": "Bo", "member": member.pk},
    )
    assert response.status_code == 302, response.content.decode()[:2000]
    entry = AuditEntry.objects.get(community=app.community, action="creator.member_linked")
    assert json.loads(entry.payload_json) == {"creator": "c2", "member": "m2", "previous": None}
    assert entry.actor_id == root.pk
    assert Creator.objects.get(pk=creator.pk).opted_out  # only the creator changes that
    # Saving without changing the link writes no entry.
    client.post(
        f"/admin/feeds/creator/{creator.pk}/change/",
        {"community": app.community.pk, "external_id": "c2", "name": "Bo!", "member": member.pk},
    )
    assert AuditEntry.objects.filter(action="creator.member_linked").count() == 1
    # A member of another community is a form error, not a link.
    stranger = Membership.objects.create(community=make_community("beta"), external_id="x")
    refused = client.post(
        f"/admin/feeds/creator/{creator.pk}/change/",
        {"community": app.community.pk, "external_id": "c2", "name": "Bo", "member": stranger.pk},
    )
    assert refused.status_code == 200 and "belongs to another community" in refused.content.decode()
    creator.refresh_from_db()
    assert creator.member_id == member.pk


def test_linking_a_creator_to_an_unknown_member_rejects_the_whole_batch(app: App) -> None:
    _catalogue(app)
    response = app.post(
        "creators",
        [
            {"id": "c1", "name": "Renamed", "member": "m0"},
            {"id": "c3", "name": "New", "member": "ghost"},
            {"id": "c4", "name": "Bad", "member": 7},
        ],
    )
    assert response.status_code == 400
    rows = response.json()["rows"]
    assert {(r["index"], r["field"]) for r in rows} == {(2, "member")}
    assert app.post("creators", [{"id": "c3", "name": "New", "member": "ghost"}]).json()[
        "rows"
    ] == [{"index": 0, "field": "member", "message": "unknown member 'ghost'"}]
    assert Creator.objects.get(external_id="c1").name == "Ada"
    assert Creator.objects.get(external_id="c1").member is None
    assert not Creator.objects.filter(external_id="c3").exists()
    assert not AuditEntry.objects.filter(action="creator.member_linked").exists()


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


def test_a_thousand_items_take_a_fixed_number_of_queries(
    app: App, django_assert_max_num_queries: Any
) -> None:
    _catalogue(app)
    items = [
        {"id": f"bulk{i}", "title": f"Bulk {i}", "creators": ["c1", "c2"], "tags": ["t"]}
        for i in range(1000)
    ]
    # Constant in the number of items (SQLite splits each INSERT by its parameter limit).
    with django_assert_max_num_queries(40):
        assert app.post("items", items).json() == {"created": 1000, "updated": 0}
    with django_assert_max_num_queries(40):
        assert app.post("items", items).json() == {"created": 0, "updated": 1000}
    assert ItemCreator.objects.filter(item__external_id__startswith="bulk").count() == 2000


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


def test_new_and_already_recorded_events_in_one_batch_are_counted_apart(app: App) -> None:
    _catalogue(app)
    first = [
        {"id": "e1", "member": "m0", "item": "i1", "kind": "like"},
        {"id": "e2", "member": "m1", "item": "i2", "kind": "view"},
    ]
    assert app.post("events", first).json()["accepted"] == 2
    mixed = [
        {"id": "e3", "member": "m2", "item": "i3", "kind": "save"},
        # Same id, different content: still the event already recorded, left as it was.
        {"id": "e2", "member": "m0", "item": "i5", "kind": "share", "weight": 9},
        {"id": "e4", "member": "m0", "item": "i4", "kind": "skip"},
        {"id": "e1", "member": "m0", "item": "i1", "kind": "like"},
    ]
    response = app.post("events", mixed)
    assert response.status_code == 200
    assert response.json() == {"accepted": 2, "duplicates": 2, "duplicate_ids": ["e1", "e2"]}
    stored = {
        key: (member, item, kind, weight)
        for key, member, item, kind, weight in Interaction.objects.values_list(
            "idempotency_key", "member__external_id", "item__external_id", "kind", "weight"
        )
    }
    assert stored == {
        "e1": ("m0", "i1", "like", 3.0),
        "e2": ("m1", "i2", "view", 1.0),
        "e3": ("m2", "i3", "save", 4.0),
        "e4": ("m0", "i4", "skip", 0.0),
    }


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"occured_at": "2026-01-01T00:00:00Z"}, "occured_at"),  # unknown (misspelt) field
        ({"weight": "2"}, "weight"),  # a string is not a number
        ({"weight": True}, "weight"),
        ({"weight": 101}, "weight"),
        ({"id": 7}, "id"),  # a number is not an id
        ({"id": "has space"}, "id"),
        ({"id": "x" * 256}, "id"),
        ({"member": None}, "member"),
        ({"kind": "View"}, "kind"),
        ({"occurred_at": 1_700_000_000}, "occurred_at"),  # ISO 8601 strings only
        ({"occurred_at": "yesterday"}, "occurred_at"),
        ({"occurred_at": "9999-12-31T23:59:59-14:00"}, "occurred_at"),  # past year 9999 in UTC
    ],
)
def test_an_event_of_the_wrong_shape_rejects_the_batch(
    app: App, change: dict[str, Any], field: str
) -> None:
    _catalogue(app)
    good = {"id": "fine", "member": "m0", "item": "i1", "kind": "like"}
    response = app.post("events", [good, {**good, "id": "bad", **change}])
    assert response.status_code == 400
    body = response.json()
    assert body["error"] == "invalid"
    assert [(r["index"], r["field"]) for r in body["rows"]] == [(1, field)]
    assert body["rows"][0]["message"]
    assert not Interaction.objects.exists()


def test_a_nul_in_a_row_is_refused_by_the_input_gate_before_the_rows_are_checked(
    app: App,
) -> None:
    _catalogue(app)
    good = {"id": "fine", "member": "m0", "item": "i1", "kind": "like"}
    response = app.post("events", [good, {**good, "id": "nul\x00"}])
    assert response.status_code == 400
    assert response.json() == {
        "error": "invalid",
        "detail": "NUL characters (\\u0000) are not accepted.",
    }
    assert not Interaction.objects.exists()


def test_a_row_that_is_not_an_object_is_named_by_its_index(app: App) -> None:
    _catalogue(app)
    response = app.post("events", [{"id": "e", "member": "m0", "item": "i1", "kind": "view"}, 3])
    assert response.status_code == 400
    assert [(r["index"], r["field"]) for r in response.json()["rows"]] == [(1, "row")]


def test_event_times_are_read_with_their_offset_and_stored_in_utc(app: App) -> None:
    _catalogue(app)
    response = app.post(
        "events",
        [
            {
                "id": "a",
                "member": "m0",
                "item": "i1",
                "kind": "view",
                "occurred_at": "2026-01-02T03:04:05+02:00",
            },
            # No offset: the server's time zone (UTC in settings), as DRF read it.
            {
                "id": "b",
                "member": "m0",
                "item": "i2",
                "kind": "view",
                "occurred_at": "2026-01-02T03:04:05",
            },
            {"id": "c", "member": "m0", "item": "i3", "kind": "view", "occurred_at": None},
        ],
    )
    assert response.status_code == 200
    times = dict(Interaction.objects.values_list("idempotency_key", "occurred_at"))
    assert times["a"] == datetime(2026, 1, 2, 1, 4, 5, tzinfo=UTC)
    assert times["b"] == datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert abs(times["c"] - datetime.now(UTC)) < timedelta(minutes=1)


def test_an_event_from_the_future_is_rejected(app: App) -> None:
    _catalogue(app)
    soon = (datetime.now(UTC) + timedelta(minutes=1)).isoformat()
    later = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    response = app.post(
        "events",
        [
            {"id": "clock-skew", "member": "m0", "item": "i1", "kind": "view", "occurred_at": soon},
            {"id": "future", "member": "m0", "item": "i1", "kind": "view", "occurred_at": later},
        ],
    )
    assert response.status_code == 400
    assert response.json()["rows"] == [
        {"index": 1, "field": "occurred_at", "message": "is in the future"}
    ]
    assert not Interaction.objects.exists()


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"url": "not a url"}, "url"),
        ({"url": "javascript:alert(1)"}, "url"),
        ({"title": "   "}, "title"),
        ({"tags": ["ok", ""]}, "tags.1"),
        ({"tags": ["x"] * 51}, "tags"),
        ({"creators": []}, "creators"),
        ({"active": "yes"}, "active"),
        ({"provenance": "robot"}, "provenance"),
        ({"published_at": 0}, "published_at"),
    ],
)
def test_an_item_of_the_wrong_shape_rejects_the_batch(
    app: App, change: dict[str, Any], field: str
) -> None:
    _catalogue(app)
    row = {"id": "new", "title": "New", "creators": ["c1"], **change}
    response = app.post("items", [row])
    assert response.status_code == 400
    assert [(r["index"], r["field"]) for r in response.json()["rows"]] == [(0, field)]
    assert not Item.objects.filter(external_id="new").exists()


def test_item_text_is_trimmed_and_optional_fields_take_their_defaults(app: App) -> None:
    _catalogue(app)
    response = app.post(
        "items",
        [
            {"id": "plain", "title": "  Plain  ", "creators": ["c1"]},
            {
                "id": "full",
                "title": "Full",
                "url": "https://example.org/a",
                "tags": [" x "],
                "provenance": "human",
                "published_at": "2026-03-04T05:06:07Z",
                "active": False,
                "creators": ["c2", "c1"],
            },
        ],
    )
    assert response.json() == {"created": 2, "updated": 0}
    plain = Item.objects.get(external_id="plain")
    assert (plain.title, plain.url, plain.tags, plain.provenance, plain.active) == (
        "Plain",
        "",
        [],
        "unknown",
        True,
    )
    full = Item.objects.get(external_id="full")
    assert (full.url, full.tags, full.active) == ("https://example.org/a", ["x"], False)
    assert full.published_at == datetime(2026, 3, 4, 5, 6, 7, tzinfo=UTC)


needs_postgresql = pytest.mark.skipif(
    connection.vendor != "postgresql", reason="concurrent writers need PostgreSQL"
)


def _events(prefix: str, count: int) -> list[dict[str, Any]]:
    return [
        {"id": f"{prefix}{i:03d}", "member": f"m{i % 3}", "item": f"i{i % 6}", "kind": "view"}
        for i in range(count)
    ]


def _waiting_on_a_lock() -> bool:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_stat_activity "
            "WHERE datname = current_database() AND wait_event_type = 'Lock'"
        )
        return bool(cursor.fetchone()[0])


@needs_postgresql
@pytest.mark.django_db(transaction=True)
def test_a_batch_sent_again_while_the_first_is_uncommitted_is_recorded_once(
    app: App,
) -> None:
    _catalogue(app)
    events = _events("e", 50)
    first_written, release = threading.Event(), threading.Event()
    results: dict[str, Any] = {}

    def first() -> None:
        try:
            with transaction.atomic():
                results["first"] = ingest.events_ingest(
                    community=app.community, rows=ingest_schemas.events(events)
                )
                first_written.set()
                release.wait(30)
        finally:
            connection.close()

    def second() -> None:
        try:
            # Blocks on the first transaction's uncommitted rows until it commits.
            results["second"] = _AppIn(Client(), app).post("events", events)
        finally:
            connection.close()

    one = threading.Thread(target=first)
    one.start()
    assert first_written.wait(30)
    two = threading.Thread(target=second)
    two.start()
    deadline = time.monotonic() + 30
    while not _waiting_on_a_lock():
        assert time.monotonic() < deadline, "the second request never waited for the first"
        time.sleep(0.02)
    release.set()
    one.join(30)
    two.join(30)
    assert results["first"].accepted == 50
    response = results["second"]
    assert response.status_code == 200
    assert response.json()["accepted"] == 0
    assert response.json()["duplicates"] == 50
    assert Interaction.objects.filter(community=app.community).count() == 50


@needs_postgresql
@pytest.mark.django_db(transaction=True)
def test_overlapping_batches_sent_at_once_in_opposite_orders_all_succeed(app: App) -> None:
    _catalogue(app)
    total = 0
    for round_ in range(5):
        events = _events(f"r{round_}-", 300)
        # Overlap of 200 events; one sender has them in reverse order.
        batches = [events[:250], list(reversed(events[50:]))]
        total += len(events)
        start = threading.Barrier(2)
        responses: list[Any] = [None, None]

        def send(
            which: int,
            batches: list[Any] = batches,
            start: Any = start,
            responses: list[Any] = responses,
        ) -> None:
            try:
                start.wait(10)
                responses[which] = _AppIn(Client(), app).post("events", batches[which])
            finally:
                connection.close()

        threads = [threading.Thread(target=send, args=(i,)) for i in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert [r.status_code for r in responses] == [200, 200]
        bodies = [r.json() for r in responses]
        assert sum(b["accepted"] for b in bodies) == len(events)
        assert sum(b["duplicates"] for b in bodies) == 200
        assert Interaction.objects.filter(community=app.community).count() == total


class _AppIn(App):
    """The same app's credential, with a client of its own (one per thread)."""

    def __init__(self, client: Client, app: App) -> None:
        self.community, self.token, self.client = app.community, app.token, client
