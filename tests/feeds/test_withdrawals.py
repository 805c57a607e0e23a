"""Refusals that arrive between runs reach the served feeds from the next request.

A run ranks the catalogue as it was; a creator's opt-out, an item deactivated or edited into a
refused one, and a member's mutes apply when the feed is served (feeds.serving.selectors),
through the caches (the pointer's revision, feeds.serving.cache.served_content_changed), without
a new run and whether or not fold-in is on.
"""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from django.core.cache import caches
from django.core.cache.backends.redis import RedisCache
from django.test import Client
from django.utils import timezone
from hypothesis import HealthCheck, given
from hypothesis import settings as hyp_settings
from hypothesis import strategies as st

from feeds.bluesky.auth import did_key_of, service_jwt
from feeds.credentials.services import app_credential_create
from feeds.foldin import services as foldin
from feeds.foldin.services import member_feeds_refresh
from feeds.models import (
    BlueskyFeed,
    Creator,
    FeedPointer,
    FeedRun,
    Item,
    MemberChoices,
    MemberFeed,
)
from feeds.runs import inputs
from feeds.runs.services import feed_run_execute, feed_run_request
from feeds.serving import api as serving_api
from feeds.serving import cache as feedcache
from feeds.serving.api import _etag_current
from feeds.serving.selectors import (
    feed_run_for_read,
    items_with_credits,
    member_feed_get,
    withdrawn_items,
)
from governance.models import Membership
from governance.services import community_create
from ranking.policy import PROVENANCE_CLASSES, policy_validate
from tests.factories import (
    CreatorFactory,
    ItemFactory,
    MembershipFactory,
    app_call,
    interact,
    members_who_interacted,
)

pytestmark = pytest.mark.django_db

POLICY = {
    "refusals": [
        {"kind": "tag", "tag": "banned", "reason": "Not here."},
        {"kind": "older_than", "days": 30, "reason": "Too old."},
    ]
}


@pytest.fixture(autouse=True)
def cache_reachable(settings: Any) -> None:
    """With Redis, cache hits and the database path; without, the database path."""
    feedcache._down_until = 0.0
    settings.COMMONFEED_FOLD_IN = False  # what is checked here must not wait for a refresh


@pytest.fixture
def garden(client: Client) -> dict[str, Any]:
    community = community_create(slug="garden", name="Garden", policy=policy_validate(POLICY))
    creators = [CreatorFactory(community=community, external_id=f"c{i}") for i in range(4)]
    now = timezone.now()
    items = [
        ItemFactory(
            community=community,
            external_id=f"i{i}",
            tags=["calm"],
            published_at=now - timedelta(days=i % 5),
            by=[creators[i % 4]],
        )
        for i in range(48)
    ]
    members_who_interacted(community, items)
    run = feed_run_execute(run_id=feed_run_request(community=community).pk)
    _, token = app_credential_create(
        community=community, name="app", scopes=["feeds:read", "events:write", "catalogue:write"]
    )
    return {"community": community, "token": token, "client": client, "run": run, "items": items}


def _call(garden: dict[str, Any], method: str, path: str, body: Any = None, **extra: Any) -> Any:
    return app_call(garden["client"], garden["token"], method, f"garden/{path}", body, **extra)


def _feed(garden: dict[str, Any], member: str, query: str = "") -> dict[str, Any]:
    response = _call(garden, "get", f"feeds/{member}/{query}")
    assert response.status_code == 200, response.content
    return response.json()  # type: ignore[no-any-return]


def _warm(garden: dict[str, Any], members: list[str]) -> None:
    # Twice: the first fills Redis from the database, the second is a cache hit.
    for member in members * 2:
        _feed(garden, member)


def _stored(garden: dict[str, Any], member: str) -> list[str]:
    row = MemberFeed.objects.get(run=garden["run"], member__external_id=member)
    by_pk = dict(Item.objects.values_list("pk", "external_id"))
    return [by_pk[pk] for pk in row.item_ids]


def _item_row(item: Item, **changes: Any) -> dict[str, Any]:
    row = {
        "id": item.external_id,
        "title": item.title,
        "tags": item.tags,
        "provenance": item.provenance,
        "published_at": item.published_at.isoformat() if item.published_at else None,
        "creators": [c.creator.external_id for c in item.credits.order_by("position")],
    }
    return {**row, **changes}


MEMBERS = [f"m{j}" for j in range(20)]


def test_a_creator_who_opts_out_leaves_every_served_feed_at_once_and_can_come_back(
    garden: dict[str, Any],
) -> None:
    _warm(garden, MEMBERS)
    shown = {m: [e["item"]["external_id"] for e in _feed(garden, m)["items"]] for m in MEMBERS}
    c2 = {f"i{k}" for k in range(2, 48, 4)}  # the items of creator c2
    assert any(c2 & set(items) for items in shown.values()), "c2 must be in some feed first"

    assert _call(garden, "put", "creators/c2/choices/", {"opted_out": True}).status_code == 200
    for member in MEMBERS:
        feed = _feed(garden, member)
        assert feed["run"] == garden["run"].pk, "no new run was needed"
        items = [e["item"]["external_id"] for e in feed["items"]]
        assert not c2 & set(items)
        assert items == [i for i in shown[member] if i not in c2]

    assert _call(garden, "put", "creators/c2/choices/", {"opted_out": False}).status_code == 200
    for member in MEMBERS:
        assert [e["item"]["external_id"] for e in _feed(garden, member)["items"]] == shown[member]
    assert FeedRun.objects.filter(community=garden["community"]).count() == 1


def test_a_deactivated_item_is_withdrawn_and_pages_are_filled_from_the_next_entries(
    garden: dict[str, Any],
) -> None:
    stored = _stored(garden, "m0")
    first = _feed(garden, "m0", "?limit=5")
    _feed(garden, "m0", "?limit=5")  # cached
    assert [e["item"]["external_id"] for e in first["items"]] == stored[:5]
    gone = Item.objects.get(external_id=stored[1])

    response = _call(garden, "post", "items/", {"items": [_item_row(gone, active=False)]})
    assert response.json() == {"created": 0, "updated": 1}

    page = _feed(garden, "m0", "?limit=5")
    assert [e["item"]["external_id"] for e in page["items"]] == stored[:1] + stored[2:6]
    assert [e["rank"] for e in page["items"]] == [1, 3, 4, 5, 6]  # positions in the stored feed
    # Walking the cursors covers the rest once; the cursor taken before the change too.
    walked = [e["item"]["external_id"] for e in page["items"]]
    cursor = page["cursor"]
    while cursor:
        page = _feed(garden, "m0", f"?limit=5&cursor={cursor}")
        walked += [e["item"]["external_id"] for e in page["items"]]
        cursor = page["cursor"]
    assert walked == [i for i in stored if i != gone.external_id]
    after_old_cursor = _feed(garden, "m0", f"?limit=5&cursor={first['cursor']}")
    assert [e["item"]["external_id"] for e in after_old_cursor["items"]] == stored[5:10]


def test_an_item_edited_into_a_refused_tag_is_withdrawn_by_the_served_policy(
    garden: dict[str, Any],
) -> None:
    stored = _stored(garden, "m3")
    _warm(garden, ["m3"])
    edited = Item.objects.get(external_id=stored[0])
    _call(garden, "post", "items/", {"items": [_item_row(edited, tags=["calm", "banned"])]})
    assert edited.external_id not in [
        e["item"]["external_id"] for e in _feed(garden, "m3")["items"]
    ]


def test_resending_an_unchanged_catalogue_keeps_the_cache_and_an_edit_is_shown_at_once(
    garden: dict[str, Any],
) -> None:
    pointer = FeedPointer.objects.get(community=garden["community"])
    items = list(Item.objects.filter(community=garden["community"]).order_by("pk"))
    assert _call(garden, "post", "items/", {"items": [_item_row(i) for i in items]}).json() == {
        "created": 0,
        "updated": 48,
    }
    pointer.refresh_from_db()
    assert pointer.revision == 0

    stored = _stored(garden, "m4")
    _warm(garden, ["m4"])
    top = Item.objects.get(external_id=stored[0])
    _call(garden, "post", "items/", {"items": [_item_row(top, title="A new title")]})
    assert _feed(garden, "m4")["items"][0]["item"]["title"] == "A new title"
    _call(garden, "post", "creators/", {"creators": [{"id": "c0", "name": "Renamed"}]})
    _call(garden, "post", "creators/", {"creators": [{"id": "c0", "name": "Renamed"}]})
    pointer.refresh_from_db()
    assert pointer.revision == 2  # the title, the name once
    assert "Renamed" in json.dumps(_feed(garden, "m4"))


def test_editing_an_item_added_since_the_run_leaves_the_cache_alone(
    garden: dict[str, Any],
) -> None:
    pointer = FeedPointer.objects.get(community=garden["community"])
    fresh = {"id": "fresh", "title": "Fresh", "creators": ["c0"], "tags": ["calm"]}
    assert _call(garden, "post", "items/", {"items": [fresh]}).json()["created"] == 1
    Item.objects.filter(external_id="fresh").update(
        created_at=garden["run"].finished_at + timedelta(minutes=2)
    )
    _call(garden, "post", "items/", {"items": [{**fresh, "title": "Fresh, edited"}]})
    pointer.refresh_from_db()
    assert pointer.revision == 0  # no stored feed can hold it
    old = Item.objects.get(external_id="i0")
    _call(garden, "post", "items/", {"items": [_item_row(old, title="Edited")]})
    pointer.refresh_from_db()
    assert pointer.revision == 1


def test_an_edit_in_the_admin_counts_like_one_over_the_api(garden: dict[str, Any]) -> None:
    stored = _stored(garden, "m5")
    _warm(garden, ["m5"])
    item = Item.objects.get(external_id=stored[0])
    item.active = False
    item.save()
    assert item.external_id not in [e["item"]["external_id"] for e in _feed(garden, "m5")["items"]]


def test_an_item_deleted_in_the_admin_leaves_the_cached_pages(
    garden: dict[str, Any], django_user_model: Any
) -> None:
    stored = _stored(garden, "m8")
    _warm(garden, ["m8"])
    item = Item.objects.get(external_id=stored[0])
    admin = Client()
    admin.force_login(django_user_model.objects.create_superuser("root", "root@example.org"))
    response = admin.post(f"/admin/feeds/item/{item.pk}/delete/", {"post": "yes"})
    assert response.status_code == 302 and not Item.objects.filter(pk=item.pk).exists()
    shown = [e["item"]["external_id"] for e in _feed(garden, "m8")["items"]]
    assert shown == stored[1:]


def test_a_mute_applies_from_the_next_request_without_a_refresh(
    garden: dict[str, Any], django_capture_on_commit_callbacks: Any
) -> None:
    _warm(garden, ["m1"])
    response = _call(garden, "get", "feeds/m1/")
    before, etag = response.json()["items"], response["ETag"]
    assert any(e["creators"][0]["external_id"] == "c1" for e in before)
    with django_capture_on_commit_callbacks(execute=True):
        _call(garden, "put", "members/m1/choices/", {"muted_creators": ["c1"]})
    again = _call(garden, "get", "feeds/m1/", HTTP_IF_NONE_MATCH=etag)
    assert again.status_code == 200, "the old ETag named the page before the mute"
    after = again.json()["items"]
    assert after and not any(e["creators"][0]["external_id"] == "c1" for e in after)
    assert [e for e in before if e["creators"][0]["external_id"] != "c1"] == after
    assert any(e["creators"][0]["external_id"] == "c1" for e in _feed(garden, "m2")["items"])


def test_an_etag_sent_back_after_an_opt_out_gets_the_new_page_not_304(
    garden: dict[str, Any],
) -> None:
    first = _call(garden, "get", "feeds/m0/")
    etag = first["ETag"]
    assert _call(garden, "get", "feeds/m0/", HTTP_IF_NONE_MATCH=etag).status_code == 304
    creator = first.json()["items"][0]["creators"][0]["external_id"]
    _call(garden, "put", f"creators/{creator}/choices/", {"opted_out": True})
    again = _call(garden, "get", "feeds/m0/", HTTP_IF_NONE_MATCH=etag)
    assert again.status_code == 200 and again["ETag"] != etag


def test_entries_age_out_under_an_older_than_refusal() -> None:
    community = community_create(slug="aging", name="Aging", policy=policy_validate(POLICY))
    creator = CreatorFactory(community=community)
    now = timezone.now()
    young = ItemFactory(community=community, published_at=now - timedelta(days=29), by=[creator])
    old = ItemFactory(community=community, published_at=now - timedelta(days=31), by=[creator])
    undated = ItemFactory(community=community, published_at=None, by=[creator])
    member = MembershipFactory(community=community)
    for item in (young, old, undated):
        interact(member, item)
    run = feed_run_execute(run_id=feed_run_request(community=community).pk)
    run.policy_version.refresh_from_db()
    items = list(items_with_credits([young.pk, old.pk, undated.pk]))
    withdrawn = withdrawn_items(run=run, items=items)
    assert withdrawn.items == {old.pk}
    assert withdrawn.until == young.published_at + timedelta(days=30)


def test_a_page_that_changes_when_an_entry_ages_out_is_cached_only_until_then() -> None:
    base = '"1.abc.0.7.9.0.0.0"'
    soon = int(timezone.now().timestamp()) + 60
    assert _etag_current(base, base)
    assert _etag_current(f'"1.abc.0.7.9.0.0.0.{soon}"', base)
    assert not _etag_current(f'"1.abc.0.7.9.0.0.0.{soon - 120}"', base)
    assert not _etag_current('"1.abc.0.7.9.0.0.0x"', base)
    assert not _etag_current('"1.abc.0.7.10.0.0.0"', base)


def test_the_bluesky_skeleton_leaves_out_a_creator_who_opted_out(
    client: Client, settings: Any
) -> None:
    publisher = "did:plc:publisher0000000000000000"
    settings.BSKY_SERVICE_DID = "did:web:feeds.example.org"
    settings.BSKY_PUBLISHER_DID = publisher
    settings.BSKY_SERVICE_ENDPOINT = "https://feeds.example.org"
    settings.BSKY_DID_KEYS = {}
    community = community_create(slug="sky", name="Sky", policy=policy_validate({}))
    authors = [CreatorFactory(community=community, external_id=f"a{i}") for i in range(2)]
    posts = [
        ItemFactory(
            community=community,
            external_id=f"at://did:plc:author{i % 2}/app.bsky.feed.post/{i}",
            by=[authors[i % 2]],
        )
        for i in range(30)
    ]
    key = ec.generate_private_key(ec.SECP256K1())
    viewer = MembershipFactory(community=community, external_id=did_key_of(key.public_key()))
    for m, member in enumerate(
        [viewer, *[MembershipFactory(community=community) for _ in range(9)]]
    ):
        for k in range(5):
            interact(member, posts[(m * 4 + k * 3) % 30])
    feed_run_execute(run_id=feed_run_request(community=community).pk)
    BlueskyFeed.objects.create(community=community, rkey="sky", display_name="Sky")
    uri = f"at://{publisher}/app.bsky.feed.generator/sky"
    token = service_jwt(iss=viewer.external_id, private_key=key)

    def skeleton_list(auth: str | None) -> list[str]:
        headers = {"HTTP_AUTHORIZATION": f"Bearer {auth}"} if auth else {}
        body = client.get(
            "/xrpc/app.bsky.feed.getFeedSkeleton", {"feed": uri, "limit": 100}, **headers
        ).json()
        return [entry["post"] for entry in body["feed"]]

    def skeleton(auth: str | None) -> set[str]:
        return set(skeleton_list(auth))

    def page(auth: str | None, cursor: str | None) -> tuple[list[str], str | None]:
        params: dict[str, Any] = {"feed": uri, "limit": 4}
        if cursor:
            params["cursor"] = cursor
        headers = {"HTTP_AUTHORIZATION": f"Bearer {auth}"} if auth else {}
        body = client.get("/xrpc/app.bsky.feed.getFeedSkeleton", params, **headers).json()
        return [entry["post"] for entry in body["feed"]], body.get("cursor")

    whole = {auth: list(skeleton_list(auth)) for auth in (None, token)}
    assert any("author1" in p for posts in whole.values() for p in posts)
    first = {auth: page(auth, None) for auth in (None, token)}
    authors[1].opted_out = True
    authors[1].save()
    for auth in (None, token):
        # Walking on from a cursor taken before the opt-out skips and repeats nothing.
        walked, cursor = list(first[auth][0]), first[auth][1]
        while cursor:
            posts, cursor = page(auth, cursor)
            walked += posts
        rest = [p for p in whole[auth][len(first[auth][0]) :] if "author1" not in p]
        assert walked == first[auth][0] + rest
        posts_now = skeleton(auth)
        assert posts_now and not any("author1" in p for p in posts_now)


def test_without_redis_the_database_path_applies_the_same_withdrawals(
    garden: dict[str, Any], settings: Any
) -> None:
    if isinstance(caches["default"], RedisCache):
        settings.CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
    _warm(garden, ["m6"])
    top = _feed(garden, "m6")["items"][0]
    _call(
        garden, "put", f"creators/{top['creators'][0]['external_id']}/choices/", {"opted_out": True}
    )
    assert top["item"]["external_id"] not in [
        e["item"]["external_id"] for e in _feed(garden, "m6")["items"]
    ]


@hyp_settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    gone=st.sets(st.integers(min_value=0, max_value=47), max_size=20),
    limit=st.integers(min_value=1, max_value=12),
    muted=st.sampled_from([None, "c1"]),
)
def test_walking_the_pages_yields_the_stored_feed_less_what_is_withdrawn_once_in_order(
    garden: dict[str, Any], gone: set[int], limit: int, muted: str | None
) -> None:
    community = garden["community"]
    Item.objects.filter(community=community).update(active=True)
    Item.objects.filter(community=community, external_id__in=[f"i{k}" for k in gone]).update(
        active=False
    )
    member = Membership.objects.get(community=community, external_id="m7")
    MemberChoices.objects.filter(member=member).delete()
    if muted:
        MemberChoices.objects.create(member=member).muted_creators.add(
            Creator.objects.get(community=community, external_id=muted)
        )
    run = feed_run_for_read(community=community)
    row = MemberFeed.objects.get(run=run, member=member)
    by_pk = {i.pk: i for i in items_with_credits(row.item_ids)}
    expected = [
        (position + 1, pk)
        for position, pk in enumerate(row.item_ids)
        if by_pk[pk].active
        and not (muted and by_pk[pk].credits.all()[0].creator.external_id == muted)
    ]

    walked: list[tuple[int, int]] = []
    offset: int | None = 0
    while offset is not None:
        page = member_feed_get(
            community=community, member=member, run=run, limit=limit, offset=offset
        )
        assert len(page.entries) == limit or page.next_offset is None
        walked += [(entry.rank, entry.item.pk) for entry in page.entries]
        assert page.next_offset is None or page.next_offset > offset
        offset = page.next_offset
    assert walked == expected


def test_a_page_that_withdrew_entries_has_the_feed_refreshed_without_them_once(
    garden: dict[str, Any],
    settings: Any,
    monkeypatch: pytest.MonkeyPatch,
    django_capture_on_commit_callbacks: Any,
) -> None:
    settings.COMMONFEED_FOLD_IN = True
    requested: list[list[int]] = []
    monkeypatch.setattr(
        serving_api,
        "member_feeds_refresh_request",
        lambda **kw: requested.append(kw["member_ids"]),
    )
    community, member = garden["community"], Membership.objects.get(external_id="m9")
    stored = _stored(garden, "m9")
    _feed(garden, "m9")
    assert requested == []  # nothing withdrawn, nothing asked

    # Refused by what changed in an item (a tag the policy refuses), and by an opt-out.
    tagged = Item.objects.get(external_id=stored[0])
    _call(garden, "post", "items/", {"items": [_item_row(tagged, tags=["banned"])]})
    c2 = {f"i{k}" for k in range(2, 48, 4)}
    _call(garden, "put", "creators/c2/choices/", {"opted_out": True})
    shown = [e["item"]["external_id"] for e in _feed(garden, "m9")["items"]]
    assert shown == [i for i in stored[1:] if i not in c2]
    assert requested == [[member.pk]]

    # The refresh applies the same refusals: the stored feed no longer holds them...
    with django_capture_on_commit_callbacks(execute=True):
        member_feeds_refresh(community=community, member_ids=[member.pk])
    refreshed = _stored(garden, "m9")
    assert refreshed and not (c2 | {tagged.external_id}) & set(refreshed)
    # ...so the page shows it whole, and asks for nothing more.
    shown = [e["item"]["external_id"] for e in _feed(garden, "m9")["items"]]
    assert shown == refreshed
    assert requested == [[member.pk]]


def test_a_refresh_refuses_by_the_same_rules_as_the_ranking_core() -> None:
    policy = policy_validate(
        {
            "refusals": [
                {"kind": "tag", "tag": "banned", "reason": "r"},
                {"kind": "tag", "tag": "also banned", "reason": "r"},
                {"kind": "creator", "creator": "c1", "reason": "r"},
                {"kind": "item", "item": "i7", "reason": "r"},
                {"kind": "provenance", "provenance": "ai_assisted", "reason": "r"},
                {"kind": "older_than", "days": 30, "reason": "r"},
                {"kind": "older_than", "days": 90, "reason": "r"},
            ],
            "ranking": {"provenance": {"unknown": {"action": "cap_share", "max_share": 0}}},
        }
    )
    community = community_create(slug="rules", name="Rules", policy=policy)
    creators = [CreatorFactory(community=community, external_id=f"c{i}") for i in range(3)]
    now = timezone.now()
    tag_sets = [["banned"], ["ok"], ["also banned", "ok"], [], ["bannedx"]]
    classes = ["human", "ai_assisted", "ai_generated", "unknown"]
    for i in range(60):
        ItemFactory(
            community=community,
            external_id=f"i{i}",
            tags=tag_sets[i % 5],
            provenance=classes[i % 4],
            published_at=None if i % 7 == 0 else now - timedelta(days=i),
            active=i % 11 != 0,
            # c1 refused as primary creator only: second credits of c1 stay.
            by=[creators[i % 3], creators[(i + 1) % 3]],
        )
    attributes, _ = inputs._load_item_attributes(community)
    excluded = [code for code, name in enumerate(PROVENANCE_CLASSES) if name == "unknown"]
    expected = attributes.refused_by(policy.refusals) | np.isin(attributes.provenance, excluded)
    got = foldin._refused_by_policy_now(community, policy)
    assert sorted(got.tolist()) == sorted(attributes.item_ids[expected].tolist())
    assert 0 < got.size < 60
