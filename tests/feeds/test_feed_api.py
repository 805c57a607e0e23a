from __future__ import annotations

from typing import Any

import pytest
from django.test import Client
from django.urls import reverse
from rest_framework.renderers import JSONRenderer

from feeds.credentials.services import app_credential_create, app_credential_revoke
from feeds.models import AppCredential, FeedPointer, FeedRun, Interaction, Item
from feeds.runs.services import feed_run_execute, feed_run_request
from feeds.serving.api import FeedOutput, feed_data
from feeds.serving.selectors import feed_run_for_read, member_feed_get
from tests.factories import MembershipFactory, make_community, small_catalogue

pytestmark = pytest.mark.django_db


def _bearer(token: str) -> dict[str, str]:
    return {"HTTP_AUTHORIZATION": f"Bearer {token}"}


def _computed_community(slug: str = "alpha"):
    community = make_community(slug)
    data = small_catalogue(community)
    run = feed_run_request(community=community)
    feed_run_execute(run_id=run.pk)
    return community, data


def _url(slug: str, member: str) -> str:
    return reverse("api-member-feed", args=[slug, member])


def test_it_returns_a_members_feed_with_items_creators_and_scores(client: Client) -> None:
    community, data = _computed_community()
    _, token = app_credential_create(community=community, name="app", scopes=["feeds:read"])
    member = data["members"][0]

    response = client.get(_url(community.slug, member.external_id), **_bearer(token))

    assert response.status_code == 200
    body = response.json()
    assert body["member"] == member.external_id
    assert body["policy_version"] == 1
    assert len(body["policy_sha256"]) == 64
    assert [e["rank"] for e in body["items"]] == list(range(1, len(body["items"]) + 1))
    assert len(body["items"]) > 0
    seen = set(
        Interaction.objects.filter(member=member).values_list("item__external_id", flat=True)
    )
    assert not seen & {e["item"]["external_id"] for e in body["items"]}
    scores = [e["score"] for e in body["items"]]
    assert scores == sorted(scores, reverse=True)
    assert all(e["creators"] and e["creators"][0]["name"] for e in body["items"])


def test_it_cuts_the_feed_to_the_requested_limit(client: Client) -> None:
    community, data = _computed_community()
    _, token = app_credential_create(community=community, name="app", scopes=["feeds:read"])
    response = client.get(
        _url(community.slug, data["members"][0].external_id) + "?limit=3", **_bearer(token)
    )
    assert response.status_code == 200
    assert len(response.json()["items"]) == 3


@pytest.mark.parametrize("limit", ["zero", ""])
def test_it_answers_a_bad_limit_with_a_400_naming_the_field(client: Client, limit: str) -> None:
    # A blank ?limit= is a client bug too, not "no limit given".
    community, data = _computed_community()
    _, token = app_credential_create(community=community, name="app", scopes=["feeds:read"])
    response = client.get(
        _url(community.slug, data["members"][0].external_id) + f"?limit={limit}",
        **_bearer(token),
    )
    assert response.status_code == 400
    assert response.json()["error"] == "invalid"
    assert "limit" in response.json()["detail"]


def test_it_refuses_requests_without_a_credential(client: Client) -> None:
    community, data = _computed_community()
    response = client.get(_url(community.slug, data["members"][0].external_id))
    assert response.status_code == 401
    assert response.json()["error"] == "not_authenticated"


def test_it_refuses_a_forged_token(client: Client) -> None:
    community, data = _computed_community()
    _, token = app_credential_create(community=community, name="app", scopes=["feeds:read"])
    forged = token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")
    response = client.get(_url(community.slug, data["members"][0].external_id), **_bearer(forged))
    assert response.status_code == 401


def test_a_revoked_credential_fails_on_the_next_request(client: Client) -> None:
    community, data = _computed_community()
    credential, token = app_credential_create(
        community=community, name="app", scopes=["feeds:read"]
    )
    url = _url(community.slug, data["members"][0].external_id)
    assert client.get(url, **_bearer(token)).status_code == 200
    app_credential_revoke(credential=credential)
    assert client.get(url, **_bearer(token)).status_code == 401


def test_a_credential_without_the_scope_gets_403(client: Client) -> None:
    community, data = _computed_community()
    _, token = app_credential_create(community=community, name="app", scopes=["events:write"])
    response = client.get(_url(community.slug, data["members"][0].external_id), **_bearer(token))
    assert response.status_code == 403
    assert response.json()["error"] == "permission_denied"


def test_an_app_of_one_community_cannot_read_another(client: Client) -> None:
    community, data = _computed_community("alpha")
    other = make_community("beta")
    _, token = app_credential_create(community=other, name="app", scopes=["feeds:read"])
    response = client.get(_url(community.slug, data["members"][0].external_id), **_bearer(token))
    assert response.status_code == 404


def test_an_unknown_member_is_404(client: Client) -> None:
    community, _ = _computed_community()
    _, token = app_credential_create(community=community, name="app", scopes=["feeds:read"])
    response = client.get(_url(community.slug, "nobody"), **_bearer(token))
    assert response.status_code == 404
    assert response.json()["error"] == "not_found"


def test_a_community_without_computed_feeds_answers_409(client: Client) -> None:
    community = make_community("fresh")
    member = MembershipFactory(community=community)
    _, token = app_credential_create(community=community, name="app", scopes=["feeds:read"])
    response = client.get(_url(community.slug, member.external_id), **_bearer(token))
    assert response.status_code == 409


def test_the_database_stores_no_issued_secret() -> None:
    community = make_community()
    _, token = app_credential_create(community=community, name="app", scopes=["feeds:read"])
    secret = token.split("_", 2)[2]
    for row in AppCredential.objects.values():
        assert not any(secret in str(value) for value in row.values())


def test_feed_reads_take_a_fixed_number_of_queries(
    client: Client, django_assert_max_num_queries
) -> None:
    community, data = _computed_community()
    _, token = app_credential_create(community=community, name="app", scopes=["feeds:read"])
    # The same 6 as before refusals were checked when serving, plus the run's policy document
    # once per process (feeds.serving.selectors._policy_refusals); a member without choices has no
    # mutes to read.
    with django_assert_max_num_queries(7):
        response = client.get(
            _url(community.slug, data["members"][0].external_id), **_bearer(token)
        )
    assert response.status_code == 200


def test_a_stale_run_finishing_late_does_not_replace_newer_feeds() -> None:
    community = make_community()
    small_catalogue(community)
    older = feed_run_request(community=community)
    newer = feed_run_request(community=community)
    feed_run_execute(run_id=newer.pk)
    feed_run_execute(run_id=older.pk)

    assert FeedPointer.objects.get(community=community).run_id == newer.pk
    assert FeedRun.objects.get(pk=older.pk).status == FeedRun.Status.FINISHED


def test_running_a_finished_run_again_changes_nothing() -> None:
    community = make_community()
    small_catalogue(community)
    run = feed_run_request(community=community)
    feed_run_execute(run_id=run.pk)
    finished_at = FeedRun.objects.get(pk=run.pk).finished_at
    feed_run_execute(run_id=run.pk)
    assert FeedRun.objects.get(pk=run.pk).finished_at == finished_at
    assert FeedRun.objects.filter(community=community).count() == 1


def _page(client: Client, token: str, slug: str, member: str, **params: object) -> Any:
    query = "&".join(f"{k}={v}" for k, v in params.items())
    return client.get(f"{_url(slug, member)}?{query}", **_bearer(token))


def test_pages_follow_the_cursor_to_the_end_of_the_feed(client: Client) -> None:
    community, data = _computed_community()
    _, token = app_credential_create(community=community, name="app", scopes=["feeds:read"])
    member = data["members"][0].external_id
    whole = _page(client, token, community.slug, member).json()
    assert whole["cursor"] is None

    ranks, cursor = [], None
    while True:
        params = {"limit": 4, **({"cursor": cursor} if cursor else {})}
        body = _page(client, token, community.slug, member, **params).json()
        ranks += [e["rank"] for e in body["items"]]
        cursor = body["cursor"]
        if cursor is None:
            break
    assert ranks == [e["rank"] for e in whole["items"]]


def test_a_cursor_stays_on_its_generation_after_a_swap(client: Client) -> None:
    community, data = _computed_community()
    _, token = app_credential_create(community=community, name="app", scopes=["feeds:read"])
    member = data["members"][0].external_id
    first = _page(client, token, community.slug, member, limit=3).json()
    newer = feed_run_request(community=community)
    feed_run_execute(run_id=newer.pk)

    second = _page(client, token, community.slug, member, limit=3, cursor=first["cursor"]).json()
    assert second["run"] == first["run"] != newer.pk
    assert [e["rank"] for e in second["items"]] == [4, 5, 6]
    assert _page(client, token, community.slug, member).json()["run"] == newer.pk


def test_a_cursor_whose_generation_was_deleted_gets_410(client: Client) -> None:
    community, data = _computed_community()
    _, token = app_credential_create(community=community, name="app", scopes=["feeds:read"])
    member = data["members"][0].external_id
    cursor = _page(client, token, community.slug, member, limit=3).json()["cursor"]
    for _ in range(2):  # two newer runs: the first generation's feeds are pruned
        feed_run_execute(run_id=feed_run_request(community=community).pk)
    response = _page(client, token, community.slug, member, limit=3, cursor=cursor)
    assert response.status_code == 410
    assert response.json()["error"] == "gone"


@pytest.mark.parametrize("cursor", ["nonsense", "W10", "WzEsLTFd", "eyJhIjoxfQ"])
def test_a_cursor_the_server_did_not_issue_is_400(client: Client, cursor: str) -> None:
    community, data = _computed_community()
    _, token = app_credential_create(community=community, name="app", scopes=["feeds:read"])
    response = _page(client, token, community.slug, data["members"][0].external_id, cursor=cursor)
    assert response.status_code == 400
    assert "cursor" in response.json()["detail"]


def test_an_unchanged_feed_answers_304_to_its_etag(client: Client) -> None:
    community, data = _computed_community()
    _, token = app_credential_create(community=community, name="app", scopes=["feeds:read"])
    member = data["members"][0].external_id
    first = _page(client, token, community.slug, member)
    etag = first["ETag"]
    again = client.get(_url(community.slug, member), HTTP_IF_NONE_MATCH=etag, **_bearer(token))
    assert again.status_code == 304
    feed_run_execute(run_id=feed_run_request(community=community).pk)
    changed = client.get(_url(community.slug, member), HTTP_IF_NONE_MATCH=etag, **_bearer(token))
    assert changed.status_code == 200
    assert changed["ETag"] != etag


def test_a_second_read_is_served_from_the_cache_with_fewer_queries(
    client: Client, django_assert_max_num_queries: Any
) -> None:
    community, data = _computed_community()
    _, token = app_credential_create(community=community, name="app", scopes=["feeds:read"])
    url = _url(community.slug, data["members"][0].external_id)
    first = client.get(url, **_bearer(token))
    # Without Redis, credential, member and pointer lookups remain; the feed row, items and
    # credits do not. With Redis the fast path needs none (test_feed_fastpath.py).
    with django_assert_max_num_queries(3):
        second = client.get(url, **_bearer(token))
    assert second.content == first.content


def test_feeds_are_still_served_when_the_cache_is_down(client: Client, settings: Any) -> None:
    from feeds.credentials import throttling
    from feeds.serving import cache as feedcache

    community, data = _computed_community()
    _, token = app_credential_create(community=community, name="app", scopes=["feeds:read"])
    settings.CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": "redis://127.0.0.1:1/0",  # nothing listens there
        }
    }
    feedcache._down_until = 0.0
    try:
        for _ in range(3):
            response = client.get(
                _url(community.slug, data["members"][0].external_id), **_bearer(token)
            )
            assert response.status_code == 200
            assert response.json()["items"]
        assert feedcache._down_until > 0  # it noticed, and backs off
    finally:
        feedcache._down_until = throttling._down_until = 0.0


def test_the_page_built_directly_is_what_the_documented_serializer_makes() -> None:
    community, data = _computed_community()
    members = data["members"]
    Item.objects.filter(pk=data["items"][0].pk).update(
        tags=["a", "ß"], url="https://example.org/x", provenance="ai_generated", title="Ünï"
    )
    run = feed_run_for_read(community=community)
    render = JSONRenderer().render
    compared = 0
    for member in [*members, MembershipFactory(community=community)]:  # the last has no row
        for limit, offset in ((None, 0), (3, 0), (3, 3), (1000, 7)):
            feed = member_feed_get(
                community=community, member=member, run=run, limit=limit, offset=offset
            )
            assert render(feed_data(feed)) == render(FeedOutput(feed).data)
            compared += len(feed.entries)
    assert compared > 100
