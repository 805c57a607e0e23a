"""The Bluesky feed generator, checked against the lexicons in ../shared/specs/atproto."""

from __future__ import annotations

import time
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from django.core.cache import caches
from django.core.cache.backends.redis import RedisCache
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext

from feeds.bluesky.auth import did_key_of, service_jwt
from feeds.credentials.services import app_credential_create
from feeds.foldin.services import member_feeds_refresh
from feeds.models import BlueskyFeed, Interaction, Item
from feeds.runs.services import feed_run_execute, feed_run_request
from feeds.serving import cache as feedcache
from governance.models import Community
from tests.factories import (
    CreatorFactory,
    ItemFactory,
    MembershipFactory,
    app_call,
    interact,
    make_community,
)
from tests.lexicon import LexiconError, error_names, validate_output

pytestmark = pytest.mark.django_db

SKELETON = "app.bsky.feed.getFeedSkeleton"
DESCRIBE = "app.bsky.feed.describeFeedGenerator"
SERVICE = "did:web:feeds.example.org"
PUBLISHER = "did:plc:publisher0000000000000000"
FEED_URI = f"at://{PUBLISHER}/app.bsky.feed.generator/garden"


@pytest.fixture(autouse=True)
def generator(settings: Any) -> None:
    settings.BSKY_SERVICE_DID = SERVICE
    settings.BSKY_PUBLISHER_DID = PUBLISHER
    settings.BSKY_SERVICE_ENDPOINT = "https://feeds.example.org"
    settings.BSKY_DID_KEYS = {}


@pytest.fixture
def viewer_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256K1())


def _published(viewer_did: str | None, *, author: str, posts: int, members: int) -> dict[str, Any]:
    """A community ``garden`` whose items are Bluesky posts by ``did:plc:<author>N``, published
    as the feed ``garden``, with one run; its first member is ``viewer_did`` (if given)."""
    community = make_community("garden")
    creator = CreatorFactory(community=community)
    items = [
        ItemFactory(
            community=community,
            external_id=f"at://did:plc:{author}{i % 3}/app.bsky.feed.post/{i}",
            by=[creator],
        )
        for i in range(posts)
    ]
    # Items that are not posts must never reach a skeleton.
    ItemFactory(community=community, external_id="https://example.org/not-a-post", by=[creator])
    people = [MembershipFactory(community=community) for _ in range(members)]
    if viewer_did is not None:
        people.insert(0, MembershipFactory(community=community, external_id=viewer_did))
    for m, member in enumerate(people):
        for k in range(6):
            interact(member, items[(m * 5 + k * 3) % posts])
    feed_run_execute(run_id=feed_run_request(community=community).pk)
    BlueskyFeed.objects.create(community=community, rkey="garden", display_name="Garden")
    return {"community": community, "viewer": people[0], "posts": items}


@pytest.fixture
def garden(viewer_key: ec.EllipticCurvePrivateKey) -> dict[str, Any]:
    """A community whose items are Bluesky posts; one member is the viewer's DID."""
    return _published(did_key_of(viewer_key.public_key()), author="author", posts=40, members=15)


def _skeleton(client: Client, token: str | None = None, **params: Any) -> Any:
    headers = {"HTTP_AUTHORIZATION": f"Bearer {token}"} if token else {}
    return client.get(f"/xrpc/{SKELETON}", {"feed": FEED_URI, **params}, **headers)


def test_describe_lists_the_published_feeds_as_the_lexicon_says(
    client: Client, garden: dict[str, Any]
) -> None:
    body = client.get(f"/xrpc/{DESCRIBE}").json()
    validate_output(DESCRIBE, body)
    assert body == {"did": SERVICE, "feeds": [{"uri": FEED_URI}]}


def test_an_anonymous_viewer_gets_the_community_feed_of_posts_only(
    client: Client, garden: dict[str, Any]
) -> None:
    response = _skeleton(client, limit=100)
    assert response.status_code == 200
    body = response.json()
    validate_output(SKELETON, body)
    assert body["feed"]
    assert all(entry["post"].startswith("at://") for entry in body["feed"])
    assert all("community" in entry["feedContext"] for entry in body["feed"])
    assert "policy=v1;" in body["feed"][0]["feedContext"]


def test_a_member_with_a_valid_jwt_gets_their_own_feed_without_seen_posts(
    client: Client, garden: dict[str, Any], viewer_key: ec.EllipticCurvePrivateKey
) -> None:
    viewer = garden["viewer"]
    token = service_jwt(iss=viewer.external_id, private_key=viewer_key)
    body = _skeleton(client, token, limit=100).json()
    validate_output(SKELETON, body)
    assert all("personalised" in entry["feedContext"] for entry in body["feed"])
    seen = set(
        Interaction.objects.filter(member=viewer).values_list("item__external_id", flat=True)
    )
    assert body["feed"] and not seen & {entry["post"] for entry in body["feed"]}


def test_a_did_plc_viewer_is_verified_with_the_configured_key(
    client: Client, garden: dict[str, Any], settings: Any
) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    did = "did:plc:viewer00000000000000000"
    settings.BSKY_DID_KEYS = {did: did_key_of(key.public_key())}
    MembershipFactory(community=garden["community"], external_id=did)
    response = _skeleton(client, service_jwt(iss=did, private_key=key, alg="ES256"))
    assert response.status_code == 200
    validate_output(SKELETON, response.json())


@pytest.mark.parametrize(
    ("claims", "error"),
    [
        ({"exp": int(time.time()) - 3600}, "JwtExpired"),
        ({"aud": "did:web:someone-else.example"}, "BadJwtAudience"),
        ({"lxm": "app.bsky.feed.getTimeline"}, "BadJwtLexiconMethod"),
    ],
)
def test_a_jwt_with_wrong_claims_is_refused(
    client: Client,
    garden: dict[str, Any],
    viewer_key: ec.EllipticCurvePrivateKey,
    claims: dict[str, Any],
    error: str,
) -> None:
    token = service_jwt(iss=garden["viewer"].external_id, private_key=viewer_key, **claims)
    response = _skeleton(client, token)
    assert response.status_code == 401
    assert response.json()["error"] == error


def test_a_jwt_signed_by_another_key_is_refused(client: Client, garden: dict[str, Any]) -> None:
    forger = ec.generate_private_key(ec.SECP256K1())
    token = service_jwt(iss=garden["viewer"].external_id, private_key=forger)
    response = _skeleton(client, token)
    assert response.status_code == 401
    assert response.json()["error"] == "BadJwtSignature"


def test_a_jwt_from_an_unknown_did_or_not_a_jwt_is_refused(
    client: Client, garden: dict[str, Any]
) -> None:
    key = ec.generate_private_key(ec.SECP256K1())
    unknown = service_jwt(iss="did:plc:nobody000000000000000000", private_key=key)
    assert _skeleton(client, unknown).json()["error"] == "BadJwt"
    assert _skeleton(client, "not-a-jwt").status_code == 401


def test_an_unknown_feed_is_the_lexicons_unknownfeed_error(
    client: Client, garden: dict[str, Any]
) -> None:
    for uri in (
        f"at://{PUBLISHER}/app.bsky.feed.generator/nope",
        "at://did:plc:other000000000000000000/app.bsky.feed.generator/garden",
    ):
        response = client.get(f"/xrpc/{SKELETON}", {"feed": uri})
        assert response.status_code == 400
        assert response.json()["error"] == "UnknownFeed"
        assert response.json()["error"] in error_names(SKELETON)


@pytest.mark.parametrize(
    "params",
    [
        {},
        {"feed": "not-an-at-uri"},
        {"feed": FEED_URI, "limit": "0"},
        {"feed": FEED_URI, "limit": "101"},
        {"feed": FEED_URI, "limit": "x"},
        {"feed": FEED_URI, "cursor": "garbage"},
        {"feed": FEED_URI, "limit": ["5", "6"]},
        {"feed": [FEED_URI, FEED_URI]},
    ],
)
def test_bad_parameters_are_400_invalid_request(
    client: Client, garden: dict[str, Any], params: dict[str, Any]
) -> None:
    response = client.get(f"/xrpc/{SKELETON}", params)
    assert response.status_code == 400
    assert response.json()["error"] == "InvalidRequest"
    assert response.json()["message"]


def test_the_cursor_walks_the_whole_feed_without_repeats(
    client: Client, garden: dict[str, Any]
) -> None:
    whole = [e["post"] for e in _skeleton(client, limit=100).json()["feed"]]
    seen: list[str] = []
    cursor = None
    for _ in range(50):
        body = _skeleton(client, limit=7, **({"cursor": cursor} if cursor else {})).json()
        validate_output(SKELETON, body)
        seen += [e["post"] for e in body["feed"]]
        cursor = body.get("cursor")
        if cursor is None:
            break
    assert seen == whole


def test_without_configuration_the_endpoints_say_not_implemented(
    client: Client, settings: Any
) -> None:
    settings.BSKY_SERVICE_DID = None
    response = client.get(f"/xrpc/{DESCRIBE}")
    assert response.status_code == 501
    assert response.json()["error"] == "MethodNotImplemented"


def test_the_did_web_document_names_the_feed_generator_service(client: Client) -> None:
    body = client.get("/.well-known/did.json").json()
    assert body["id"] == SERVICE
    assert body["service"][0]["type"] == "BskyFeedGenerator"


def test_the_validator_rejects_what_the_lexicon_forbids() -> None:
    with pytest.raises(LexiconError):
        validate_output(SKELETON, {"feed": [{"post": "https://not-an-at-uri"}]})
    with pytest.raises(LexiconError):
        validate_output(SKELETON, {"feed": [{"post": "at://a/b/c", "feedContext": "x" * 2001}]})
    with pytest.raises(LexiconError):
        validate_output(DESCRIBE, {"feeds": []})


# --- The skeleton cache ---------------------------------------------------------------------


def _posts(response: Any) -> list[str]:
    assert response.status_code == 200, response.content
    return [entry["post"] for entry in response.json()["feed"]]


def _queries(client: Client, token: str | None = None, **params: Any) -> tuple[Any, int]:
    with CaptureQueriesContext(connection) as queries:
        response = _skeleton(client, token, **params)
    return response, len(queries)


@pytest.mark.parametrize("signed_in", [False, True])
def test_a_repeated_skeleton_comes_from_the_cache_with_the_same_bytes(
    client: Client, garden: dict[str, Any], viewer_key: ec.EllipticCurvePrivateKey, signed_in: bool
) -> None:
    token = (
        service_jwt(iss=garden["viewer"].external_id, private_key=viewer_key) if signed_in else None
    )
    cold, cold_queries = _queries(client, token, limit=10)
    warm, warm_queries = _queries(client, token, limit=10)
    assert warm.content == cold.content and warm["Content-Type"] == "application/json"
    # The feed record and the viewer's membership; the run too without Redis, where the page
    # is checked against the database (with Redis, against the pointer Redis holds).
    expected = 1 + signed_in + (not isinstance(caches["default"], RedisCache))
    assert warm_queries == expected < cold_queries
    validate_output(SKELETON, warm.json())


def test_a_cached_skeleton_follows_a_refresh_of_the_viewers_feed(
    client: Client,
    garden: dict[str, Any],
    viewer_key: ec.EllipticCurvePrivateKey,
    django_capture_on_commit_callbacks: Any,
) -> None:
    viewer = garden["viewer"]
    token = service_jwt(iss=viewer.external_id, private_key=viewer_key)
    top = _posts(_skeleton(client, token, limit=10))[0]
    assert _posts(_skeleton(client, token, limit=10))[0] == top  # cached now
    # The viewer engages with the top post; their refreshed feed no longer offers it.
    interact(viewer, Item.objects.get(community=garden["community"], external_id=top))
    with django_capture_on_commit_callbacks(execute=True):
        member_feeds_refresh(community=garden["community"], member_ids=[viewer.pk])
    assert top not in _posts(_skeleton(client, token, limit=10))


def test_a_cached_skeleton_follows_the_viewers_mutes_and_an_opt_out(
    client: Client,
    garden: dict[str, Any],
    viewer_key: ec.EllipticCurvePrivateKey,
    django_capture_on_commit_callbacks: Any,
) -> None:
    community = garden["community"]
    token = service_jwt(iss=garden["viewer"].external_id, private_key=viewer_key)
    _, app = app_credential_create(community=community, name="app", scopes=["events:write"])
    creator = garden["posts"][0].credits.get().creator  # every post's creator
    for auth in (token, None):
        assert _posts(_skeleton(client, auth)) == _posts(_skeleton(client, auth))  # cached
    with django_capture_on_commit_callbacks(execute=True):
        response = app_call(
            client,
            app,
            "put",
            f"garden/members/{garden['viewer'].external_id}/choices/",
            {"muted_creators": [creator.external_id]},
        )
    assert response.status_code == 200, response.content
    assert _posts(_skeleton(client, token)) == []
    assert _posts(_skeleton(client)), "the community skeleton is not the viewer's"
    creator.opted_out = True
    creator.save()
    assert _posts(_skeleton(client)) == []


def test_a_community_that_takes_over_a_slug_never_gets_the_old_ones_cached_skeleton(
    client: Client, garden: dict[str, Any]
) -> None:
    before = _posts(_skeleton(client))
    assert before == _posts(_skeleton(client))  # cached, with the community's pointer record
    pointer_key = caches["default"].make_key(feedcache.pointer_key("garden"))
    store = feedcache.redis_store()
    old_pointer = store[0].get(pointer_key) if store else None
    # As after a database restore: the slug belongs to another community, while Redis still
    # holds what it held for the old one.
    Community.objects.filter(pk=garden["community"].pk).update(slug="old-garden")
    BlueskyFeed.objects.filter(rkey="garden").delete()
    _published(None, author="newcomer", posts=12, members=6)
    if store and old_pointer:
        store[0].set(pointer_key, old_pointer)

    after = _posts(_skeleton(client))
    assert after and all("did:plc:newcomer" in post for post in after)
