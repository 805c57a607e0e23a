"""Fold-in: a member's new events and choices re-rank their served feed between feed runs.

The first tests call the service in this process (PostgreSQL or SQLite, Redis where the cache is
Redis); the ``integration`` ones post through the API and let a real Celery worker refresh.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable
from typing import Any

import pytest
from django.core.cache import caches
from django.core.cache.backends.redis import RedisCache
from django.test import Client

from feeds import enqueue
from feeds.choices.services import member_choices_set, member_data_delete
from feeds.credentials.services import app_credential_create
from feeds.foldin import services as foldin
from feeds.foldin.services import member_feeds_refresh
from feeds.models import FeedPointer, FeedRun, Interaction, MemberFeed
from feeds.runs.services import feed_run_execute, feed_run_request
from feeds.serving import cache as feedcache
from feeds.serving.selectors import feed_run_for_read
from governance.models import Membership
from tests.factories import (
    CreatorFactory,
    ItemFactory,
    MembershipFactory,
    interact,
    make_community,
    members_who_interacted,
    run_computed,
)

PERSONALISED = "Members with similar taste engaged with this."


def _garden(slug: str = "garden") -> dict[str, Any]:
    """20 members, 48 items by 4 creators; everyone liked 8 items; a finished run."""
    community = make_community(slug)
    creators = [CreatorFactory(community=community, external_id=f"c{i}") for i in range(4)]
    items = [
        ItemFactory(community=community, external_id=f"i{i}", by=[creators[i % 4]])
        for i in range(48)
    ]
    members = members_who_interacted(community, items)
    run = run_computed(community)
    _, token = app_credential_create(
        community=community, name="app", scopes=["feeds:read", "events:write"]
    )
    return {"community": community, "run": run, "token": token, "members": members, "items": items}


def _row(run: FeedRun, member: Membership) -> MemberFeed:
    return MemberFeed.objects.get(run=run, member=member)


def _creator_of(garden: dict[str, Any], item_pk: int) -> str:
    item = next(i for i in garden["items"] if i.pk == item_pk)
    return f"c{int(item.external_id[1:]) % 4}"


def _api(client: Client, garden: dict[str, Any], method: str, path: str, body: Any = None) -> Any:
    return getattr(client, method)(
        f"/api/v1/communities/{garden['community'].slug}/{path}",
        data=json.dumps(body) if body is not None else None,
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {garden['token']}",
    )


# --- The service, in this process ---------------------------------------------------------------


@pytest.mark.django_db
def test_a_refresh_drops_newly_seen_items_in_the_same_run_and_leaves_others_alone() -> None:
    garden = _garden()
    run, (me, other) = garden["run"], garden["members"][:2]
    before, other_before = _row(run, me), _row(run, other)
    liked = before.item_ids[:3]
    for item in garden["items"]:
        if item.pk in liked:
            interact(me, item, kind="like", weight=3.0)

    result = member_feeds_refresh(community=garden["community"], member_ids=[me.pk])

    after = _row(run, me)
    assert (result.run_id, result.written, result.skipped) == (run.pk, 1, "")
    assert after.pk != before.pk  # a new row: the feed's revision within the run
    assert not set(liked) & set(after.item_ids)
    assert len(after.item_ids) == len(before.item_ids) - 3  # 48 items: all but the seen
    seen = set(Interaction.objects.filter(member=me).values_list("item_id", flat=True))
    assert not seen & set(after.item_ids)
    assert _row(run, other).pk == other_before.pk
    assert FeedPointer.objects.get(community=garden["community"]).run_id == run.pk


@pytest.mark.django_db
def test_a_muted_creator_and_a_refusal_of_personalisation_hold_after_a_refresh() -> None:
    garden = _garden()
    run, me, refuser = garden["run"], garden["members"][0], garden["members"][1]
    creator = _creator_of(garden, _row(run, me).item_ids[0])
    muted_items = {i.pk for i in garden["items"] if _creator_of(garden, i.pk) == creator}
    member_choices_set(member=me, actor=None, muted_creators=[creator])
    member_choices_set(member=refuser, actor=None, personalise=False)

    member_feeds_refresh(community=garden["community"], member_ids=[me.pk, refuser.pk])

    mine = _row(run, me)
    assert mine.item_ids and not muted_items & set(mine.item_ids)
    assert all(mask & 1 for mask in mine.reasons)  # still personalised
    fallback = _row(run, refuser)
    assert fallback.item_ids and not any(mask & 1 for mask in fallback.reasons)
    seen = set(Interaction.objects.filter(member=refuser).values_list("item_id", flat=True))
    assert not seen & set(fallback.item_ids)


@pytest.mark.django_db
def test_after_a_data_deletion_the_refreshed_feed_no_longer_uses_the_members_history(
    django_capture_on_commit_callbacks: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    garden = _garden()
    run, me = garden["run"], garden["members"][5]
    assert all(mask & 1 for mask in _row(run, me).reasons)
    requested: list[list[int]] = []
    monkeypatch.setattr(
        enqueue,
        "member_feeds_refresh_request",
        lambda *, community_id, member_ids: requested.append(list(member_ids)),
    )

    with django_capture_on_commit_callbacks(execute=True):
        member_data_delete(member=me, actor=None)
    assert requested == [[me.pk]]  # the deletion asks for a refresh once it commits
    member_feeds_refresh(community=garden["community"], member_ids=requested[0])

    row = _row(run, me)
    assert row.item_ids and not any(mask & 1 for mask in row.reasons)  # the popular feed


@pytest.mark.django_db
def test_refreshing_twice_gives_the_same_feed() -> None:
    garden = _garden()
    run, me = garden["run"], garden["members"][3]
    interact(me, garden["items"][40])

    member_feeds_refresh(community=garden["community"], member_ids=[me.pk])
    first = _row(run, me)
    member_feeds_refresh(community=garden["community"], member_ids=[me.pk, me.pk])
    second = _row(run, me)

    assert MemberFeed.objects.filter(run=run, member=me).count() == 1
    assert (first.item_ids, first.scores, first.reasons) == (
        second.item_ids,
        second.scores,
        second.reasons,
    )


@pytest.mark.django_db
def test_a_refresh_writes_nothing_when_the_pointer_moved_to_another_run_meanwhile(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    garden = _garden()
    community, old, me = garden["community"], garden["run"], garden["members"][0]
    newer = feed_run_execute(run_id=feed_run_request(community=community).pk)
    assert FeedPointer.objects.get(community=community).run_id == newer.pk
    FeedPointer.objects.filter(community=community).update(run_id=old.pk)
    interact(me, garden["items"][0])
    rows_before = {
        (r.run_id, r.member_id): r.pk
        for r in MemberFeed.objects.filter(member__community=community)
    }
    load = foldin.artifact_load

    def swap_then_load(name: str) -> Any:
        # The refresh loaded the old run's artifact; the newer run is swapped in before it
        # takes the pointer's lock.
        FeedPointer.objects.filter(community=community).update(run_id=newer.pk)
        return load(name)

    monkeypatch.setattr(foldin, "artifact_load", swap_then_load)

    result = member_feeds_refresh(community=community, member_ids=[me.pk])

    assert (result.run_id, result.written, result.skipped) == (old.pk, 0, "pointer_moved")
    assert {
        (r.run_id, r.member_id): r.pk
        for r in MemberFeed.objects.filter(member__community=community)
    } == rows_before


@pytest.mark.django_db
def test_a_member_who_joined_after_the_run_gets_a_feed_and_an_unknown_id_is_ignored() -> None:
    garden = _garden()
    newcomer = MembershipFactory(community=garden["community"], external_id="late")
    interact(newcomer, garden["items"][0])
    interact(newcomer, garden["items"][5])
    outsider = MembershipFactory(community=make_community("elsewhere"))

    result = member_feeds_refresh(
        community=garden["community"], member_ids=[newcomer.pk, outsider.pk, 10**9]
    )

    assert result.written == 1
    row = _row(garden["run"], newcomer)
    assert row.item_ids and not {garden["items"][0].pk, garden["items"][5].pk} & set(row.item_ids)
    assert not MemberFeed.objects.filter(member=outsider).exists()


@pytest.mark.django_db
def test_before_the_first_run_a_refresh_does_nothing() -> None:
    community = make_community("fresh")
    member = MembershipFactory(community=community)

    result = member_feeds_refresh(community=community, member_ids=[member.pk])

    assert (result.run_id, result.written, result.skipped) == (None, 0, "no_run")
    assert not MemberFeed.objects.exists()


@pytest.mark.django_db
def test_a_missing_model_is_reported_and_leaves_the_feed_as_it_was() -> None:
    from feeds.runs import artifacts

    garden = _garden()
    run, me = garden["run"], garden["members"][0]
    before = _row(run, me).pk
    artifacts.artifact_storage().delete(run.artifact)
    artifacts._loaded.clear()

    result = member_feeds_refresh(community=garden["community"], member_ids=[me.pk])

    assert (result.written, result.skipped) == (0, "no_artifact")
    assert _row(run, me).pk == before


@pytest.mark.django_db
def test_events_after_a_runs_watermark_are_folded_in_once_it_swaps_in(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    garden = _garden()
    run, me = garden["run"], garden["members"][2]
    interact(me, garden["items"][1])  # arrives while the run "trains": after its watermark
    requested: list[list[int]] = []
    monkeypatch.setattr(
        enqueue,
        "member_feeds_refresh_request",
        lambda *, community_id, member_ids: requested.append(list(member_ids)),
    )

    foldin._refresh_after_swap(run)

    assert requested == [[me.pk]]


def test_without_fold_in_nothing_is_requested(
    settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings.COMMONFEED_FOLD_IN = False
    sent: list[Any] = []
    monkeypatch.setattr(feedcache, "foldin_mark", lambda **kw: sent.append(kw))
    enqueue.member_feeds_refresh_request(community_id=1, member_ids=[1, 2])
    assert sent == []


# --- API: ETag and the Redis page cache --------------------------------------------------------


@pytest.mark.django_db
def test_a_refreshed_feed_gets_a_new_etag_and_the_cached_pages_are_dropped(
    client: Client, django_capture_on_commit_callbacks: Callable[..., Any]
) -> None:
    garden = _garden()
    me = garden["members"][0]
    url = f"feeds/{me.external_id}/"
    first = _api(client, garden, "get", url)
    cached = _api(client, garden, "get", url)  # from the fast path where Redis is the cache
    assert first.content == cached.content
    top = first.json()["items"][0]["item"]["external_id"]
    interact(me, next(i for i in garden["items"] if i.external_id == top))

    with django_capture_on_commit_callbacks(execute=True):
        member_feeds_refresh(community=garden["community"], member_ids=[me.pk])
    after = _api(client, garden, "get", url, None)
    stale = client.get(
        f"/api/v1/communities/garden/{url}",
        HTTP_AUTHORIZATION=f"Bearer {garden['token']}",
        HTTP_IF_NONE_MATCH=first["ETag"],
    )

    assert after.status_code == stale.status_code == 200
    assert after["ETag"] != first["ETag"]
    assert after.json()["run"] == first.json()["run"]
    assert top not in [e["item"]["external_id"] for e in after.json()["items"]]


@pytest.mark.django_db
def test_a_cursor_keeps_its_generation_and_reads_on_from_the_refreshed_list(
    client: Client, django_capture_on_commit_callbacks: Callable[..., Any]
) -> None:
    garden = _garden()
    me = garden["members"][0]
    first = _api(client, garden, "get", f"feeds/{me.external_id}/?limit=5").json()
    shown = [e["item"]["external_id"] for e in first["items"]]
    for item in garden["items"]:
        if item.external_id in shown:
            interact(me, item)
    with django_capture_on_commit_callbacks(execute=True):
        member_feeds_refresh(community=garden["community"], member_ids=[me.pk])

    cursor = first["cursor"]
    second = _api(client, garden, "get", f"feeds/{me.external_id}/?limit=5&cursor={cursor}")

    assert second.status_code == 200
    assert second.json()["run"] == first["run"]
    refreshed = [e["item"]["external_id"] for e in second.json()["items"]]
    by_external = {i.external_id: i.pk for i in garden["items"]}
    assert [by_external[e] for e in refreshed] == _row(garden["run"], me).item_ids[5:10]
    assert not set(shown) & set(refreshed)


@pytest.mark.django_db
def test_a_page_rendered_before_a_refresh_is_never_cached_after_it() -> None:
    if not isinstance(caches["default"], RedisCache):
        pytest.skip("the page revision lives in Redis")
    feedcache._down_until = 0.0
    garden = _garden("racy")
    run = feed_run_for_read(community=garden["community"])  # as the API reads it
    key = feedcache.page_key(slug="racy", member="m0", pinned=None, offset=0, limit=None)
    guard = feedcache.page_guard(slug="racy", member="m0")  # a reader starts...
    feedcache.member_pages_invalidate(slug="racy", members=["m0"])  # ...a refresh commits...
    feedcache.page_set(key, run=run, etag='"old"', body=b"{}", guard=guard)  # ...it writes

    assert feedcache.page_get(key, run=run) is None
    fresh = feedcache.page_guard(slug="racy", member="m0")
    feedcache.page_set(key, run=run, etag='"new"', body=b"{}", guard=fresh)
    assert feedcache.page_get(key, run=run) == ('"new"', b"{}")
    feedcache.member_pages_invalidate(slug="racy", members=["m0"])
    assert feedcache.page_get(key, run=run) is None


@pytest.mark.django_db
def test_bursts_of_marks_send_one_task_and_a_member_marked_again_stays_queued() -> None:
    if not isinstance(caches["default"], RedisCache):
        pytest.skip("the fold-in queue lives in Redis")
    feedcache._down_until = 0.0
    community = 987_654  # no such community: only the queue is exercised
    feedcache.foldin_done(
        community_id=community,
        taken=feedcache.foldin_take(community_id=community, limit=1000) or [],
    )
    client, backend = feedcache.redis_store()  # type: ignore[misc]
    client.delete(backend.make_key(f"cf:foldin:dirty:{community}"))
    client.delete(backend.make_key(f"cf:foldin:queued:{community}"))

    assert feedcache.foldin_mark(community_id=community, member_ids=[1, 2]) is True
    assert feedcache.foldin_mark(community_id=community, member_ids=[2, 3]) is False
    taken = feedcache.foldin_take(community_id=community, limit=10)
    assert taken is not None and sorted(m for m, _ in taken) == [1, 2, 3]
    feedcache.foldin_mark(community_id=community, member_ids=[3])  # an event during the refresh
    assert feedcache.foldin_done(community_id=community, taken=taken) == 1
    assert community not in feedcache.foldin_stranded()  # the drain task holds the flag
    again = feedcache.foldin_take(community_id=community, limit=10)
    assert again is not None and [m for m, _ in again] == [3]
    assert feedcache.foldin_done(community_id=community, taken=again) == 0
    assert feedcache.foldin_mark(community_id=community, member_ids=[4]) is True  # flag released
    client.delete(backend.make_key(f"cf:foldin:queued:{community}"))
    assert community in feedcache.foldin_stranded()  # a lost task is re-sent by the reconciler
    feedcache.foldin_done(
        community_id=community, taken=feedcache.foldin_take(community_id=community, limit=10) or []
    )


# --- Through the API, refreshed by a real worker -----------------------------------------------


def _wait_for(check: Callable[[], Any], timeout: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError("the feed was not refreshed in time")


@pytest.mark.integration
def test_posted_events_refresh_the_members_feed_through_the_worker(
    transactional_db: None, celery_worker: subprocess.Popen[bytes], client: Client
) -> None:
    garden = _garden("live")
    run = garden["run"]
    url = "feeds/m0/"
    first = _api(client, garden, "get", url).json()
    _api(client, garden, "get", url)  # warm the fast path's page where Redis is the cache
    shown = [e["item"]["external_id"] for e in first["items"]]
    events = [
        {"id": f"e{n}", "member": "m0", "item": item, "kind": "like"}
        for n, item in enumerate(shown[:3])
    ]

    posted = _api(client, garden, "post", "events/", {"events": events})
    assert posted.status_code == 200 and posted.json()["accepted"] == 3

    def refreshed() -> Any:
        body = _api(client, garden, "get", url).json()
        items = [e["item"]["external_id"] for e in body["items"]]
        return body if not set(shown[:3]) & set(items) else None

    after = _wait_for(refreshed)
    assert after["run"] == first["run"] == run.pk
    assert len(after["items"]) == len(first["items"]) - 3  # 48 items: all but the seen

    # The same batch again is all duplicates and changes nothing.
    revision = _row(run, garden["members"][0]).pk
    assert _api(client, garden, "post", "events/", {"events": events}).json()["duplicates"] == 3
    time.sleep(1.0)
    assert _row(run, garden["members"][0]).pk == revision

    # A mute set through the API reaches the feed without a feed run.
    creator = after["items"][0]["creators"][0]["external_id"]
    response = _api(client, garden, "put", "members/m0/choices/", {"muted_creators": [creator]})
    assert response.status_code == 200
    muted = _wait_for(
        lambda: (
            (body := _api(client, garden, "get", url).json())
            and not any(c["external_id"] == creator for e in body["items"] for c in e["creators"])
            and body
        )
    )
    assert muted["items"] and muted["run"] == run.pk

    # So does a refusal of personalisation.
    _api(client, garden, "put", "members/m0/choices/", {"personalise": False})
    _wait_for(
        lambda: (
            (body := _api(client, garden, "get", url).json())
            and not any(PERSONALISED in e["reasons"] for e in body["items"])
            and body["items"]
        )
    )
    assert FeedRun.objects.filter(community=garden["community"]).count() == 1


@pytest.mark.integration
def test_a_duplicate_delivery_of_the_refresh_task_is_harmless(
    transactional_db: None, celery_worker: subprocess.Popen[bytes]
) -> None:
    from feeds.tasks import refresh_member_feeds

    garden = _garden("twice")
    run, me = garden["run"], garden["members"][4]
    top = _row(run, me).item_ids[0]
    interact(me, next(i for i in garden["items"] if i.pk == top))
    before = _row(run, me).pk
    community_id = garden["community"].pk

    refresh_member_feeds.delay(community_id, [me.pk])
    refresh_member_feeds.delay(community_id, [me.pk])
    _wait_for(lambda: _row(run, me).pk != before)
    time.sleep(1.0)  # time for the second delivery to land too

    row = MemberFeed.objects.get(run=run, member=me)
    assert top not in row.item_ids
    # The same data gives the same feed, however many times the task ran.
    member_feeds_refresh(community=garden["community"], member_ids=[me.pk])
    assert _row(run, me).item_ids == row.item_ids
    assert FeedPointer.objects.get(community_id=community_id).run_id == run.pk
