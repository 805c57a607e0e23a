"""XRPC endpoints of the Bluesky feed generator (plain Django views: XRPC has its own errors)."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime
from functools import wraps
from typing import Any

from django.conf import settings
from django.core.serializers.json import DjangoJSONEncoder
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.utils import timezone
from django.views.decorators.http import require_GET

from feeds.bluesky import auth as bsky
from feeds.enqueue import member_feeds_refresh_request
from feeds.models import BlueskyFeed, FeedRun
from feeds.serving import cache as feedcache
from feeds.serving.cursors import cursor_decode, cursor_encode
from feeds.serving.selectors import (
    FeedNotReady,
    FeedRunGone,
    feed_run_for_read,
    items_with_credits,
    member_feed_row,
    member_mutes,
    withdrawn_items,
)
from governance.models import Membership

View = Callable[..., HttpResponse]


def xrpc(view: View) -> View:
    @wraps(view)
    def wrapped(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        if not settings.BSKY_SERVICE_DID:
            return _error(501, "MethodNotImplemented", "This server publishes no Bluesky feeds.")
        try:
            return view(request, *args, **kwargs)
        except bsky.XrpcError as exc:
            return _error(exc.status, exc.name, exc.message)

    return wrapped


def _error(status: int, name: str, message: str) -> JsonResponse:
    return JsonResponse({"error": name, "message": message}, status=status)


@require_GET
@xrpc
def describe_feed_generator(request: HttpRequest) -> JsonResponse:
    feeds = [
        {"uri": bsky.feed_uri(rkey)} for rkey in BlueskyFeed.objects.values_list("rkey", flat=True)
    ]
    return JsonResponse({"did": settings.BSKY_SERVICE_DID, "feeds": feeds})


@require_GET
@xrpc
def get_feed_skeleton(request: HttpRequest) -> HttpResponse:
    for name in ("feed", "limit", "cursor"):
        if len(request.GET.getlist(name)) > 1:
            raise bsky.XrpcError(400, "InvalidRequest", f"Give {name} once.")
    uri = request.GET.get("feed")
    if not uri:
        raise bsky.XrpcError(400, "InvalidRequest", "The feed parameter is required.")
    try:
        limit = int(request.GET.get("limit", "50"))
    except ValueError:
        raise bsky.XrpcError(400, "InvalidRequest", "limit must be an integer.") from None
    if not 1 <= limit <= 100:
        raise bsky.XrpcError(400, "InvalidRequest", "limit must be between 1 and 100.")
    parsed = bsky.feed_uri_parse(uri)
    feed = (
        BlueskyFeed.objects.filter(rkey=parsed.rkey).select_related("community").first()
        if parsed.publisher == settings.BSKY_PUBLISHER_DID
        else None
    )
    if feed is None:
        raise bsky.XrpcError(400, "UnknownFeed", f"No feed {uri} here.")
    community = feed.community

    viewer_did = None
    auth = request.headers.get("Authorization", "")
    if auth:
        scheme, _, token = auth.partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise bsky.XrpcError(401, "BadJwt", "Authorization must be 'Bearer <JWT>'.")
        viewer_did = bsky.viewer_did_verify(token.strip())

    try:
        run_id, offset = cursor_decode(request.GET.get("cursor"))
    except ValueError:
        raise bsky.XrpcError(400, "InvalidRequest", "Not a cursor this feed issued.") from None
    member = (
        Membership.objects.filter(community=community, external_id=viewer_did).first()
        if viewer_did
        else None
    )
    # Everyone who is not a member (or not signed in) gets the same community skeleton, cached
    # under an empty viewer (no member's external id is empty).
    viewer = member.external_id if member is not None else ""
    key = feedcache.skeleton_key(
        slug=community.slug, viewer=viewer, pinned=run_id, offset=offset, limit=limit
    )
    cached = feedcache.skeleton_cached(community=community, key=key)
    if cached is not None:  # current by the pointer Redis holds: no query for the run
        return HttpResponse(cached, content_type="application/json")

    # Read before the feed row, as the feed API does: a skeleton rendered from a row that a
    # fold-in refresh (or a change of mutes) replaces meanwhile is then never cached.
    guard = feedcache.page_guard(slug=community.slug, member=viewer)
    try:
        run = feed_run_for_read(community=community, run_id=run_id, member=member)
    except FeedNotReady:
        return JsonResponse({"feed": []})
    except FeedRunGone:
        raise bsky.XrpcError(400, "InvalidRequest", "This cursor has expired.") from None
    if run_id is None:  # the record skeleton_cached checks pages against
        feedcache.pointer_publish(community=community, run=run)

    # What the skeleton depends on besides the run and the pointer's revision (which the
    # cache's stamp names): the member's feed row and the time they last changed choices.
    choices_at = getattr(run, "member_choices_at", None)
    validator = (
        f"{getattr(run, 'member_feed_id', None) or 0}."
        f"{int(choices_at.timestamp() * 1_000_000) if choices_at else 0}"
    )
    page = feedcache.page_get(key, run=run)
    if page is not None and page[0] == validator:
        return HttpResponse(page[1], content_type="application/json")

    body, until = _skeleton(
        run=run, community_id=community.pk, member=member, offset=offset, limit=limit
    )
    rendered = json.dumps(body, cls=DjangoJSONEncoder).encode()
    ttl = feedcache.TIMEOUT_SECONDS
    if until is not None:
        ttl = int((until - timezone.now()).total_seconds())
    feedcache.page_set(key, run=run, etag=validator, body=rendered, guard=guard, ttl=ttl)
    return HttpResponse(rendered, content_type="application/json")


def _skeleton(
    *, run: FeedRun, community_id: int, member: Membership | None, offset: int, limit: int
) -> tuple[dict[str, Any], datetime | None]:
    """The skeleton page from position ``offset`` of the member's stored feed (the community's
    without one), and when it changes by itself (an entry ageing out), or None."""
    row = member_feed_row(run=run, member=member) if member is not None else None
    personal = row is not None and bool(row.item_ids)
    item_ids: list[int] = row.item_ids if personal else run.fallback_item_ids  # type: ignore[union-attr]
    # Only items that are Bluesky posts can go into a skeleton, and none refused since the run.
    items = list(items_with_credits(item_ids).filter(external_id__startswith="at://"))
    withdrawn = withdrawn_items(
        run=run, items=items, mutes=member_mutes(member=member) if member else None
    )
    if personal and member is not None and withdrawn.items:
        member_feeds_refresh_request(community_id=community_id, member_ids=[member.pk])
    uris = {item.pk: item.external_id for item in items if item.pk not in withdrawn.items}
    # The cursor's offset is a position in the stored list, as in the feed API: a post
    # withdrawn between two pages shifts nothing, so none is skipped or repeated.
    page, position = [], offset
    while position < len(item_ids) and len(page) < limit:
        uri = uris.get(item_ids[position])
        position += 1
        if uri is not None:
            page.append(uri)
    context = (
        f"policy=v{run.policy_version.number};sha256={run.policy_sha256[:16]};run={run.pk};"
        f"{'personalised' if personal else 'community'}"
    )
    body: dict[str, Any] = {"feed": [{"post": post, "feedContext": context} for post in page]}
    if any(pk in uris for pk in item_ids[position:]):
        body["cursor"] = cursor_encode(run.pk, position)
    return body, withdrawn.until


@require_GET
def did_document(request: HttpRequest) -> JsonResponse:
    """The did:web document naming this server as the feed generator service."""
    did = settings.BSKY_SERVICE_DID
    if not did or not did.startswith("did:web:") or not settings.BSKY_SERVICE_ENDPOINT:
        return JsonResponse({"error": "NotFound", "message": "No did:web here."}, status=404)
    return JsonResponse(
        {
            "@context": ["https://www.w3.org/ns/did/v1"],
            "id": did,
            "service": [
                {
                    "id": "#bsky_fg",
                    "type": "BskyFeedGenerator",
                    "serviceEndpoint": settings.BSKY_SERVICE_ENDPOINT,
                }
            ],
        }
    )
