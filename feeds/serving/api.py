"""The member feed GET of the app API: the database path (``MemberFeedApi``), which
``feeds.serving.feed_get`` answers cache hits in front of."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django.http import HttpResponse
from django.utils import timezone
from drf_spectacular.utils import (
    extend_schema,
)
from rest_framework import exceptions, serializers
from rest_framework.renderers import JSONRenderer
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from feeds.api import ERROR_RESPONSES, Conflict, ErrorOutput, community_for_app, scope_required
from feeds.enqueue import member_feeds_refresh_request
from feeds.models import Item
from feeds.serving import cache as feedcache
from feeds.serving import feed_get as fastpath
from feeds.serving.cursors import cursor_decode, cursor_encode
from feeds.serving.selectors import (
    Feed,
    FeedNotReady,
    FeedRunGone,
    Mutes,
    feed_run_for_read,
    member_feed_get,
    member_feed_row,
)
from governance.apis import QueryIntegerField, QuerySerializer
from governance.models import Membership


class FeedCreditOutput(serializers.Serializer[Any]):
    external_id = serializers.CharField(source="creator.external_id")
    name = serializers.CharField(source="creator.name")


class FeedItemOutput(serializers.Serializer[Any]):
    external_id = serializers.CharField()
    title = serializers.CharField()
    url = serializers.CharField()
    tags = serializers.ListField(child=serializers.CharField())
    provenance = serializers.ChoiceField(choices=Item.Provenance.choices)


class FeedEntryOutput(serializers.Serializer[Any]):
    rank = serializers.IntegerField()
    score = serializers.FloatField()
    item = FeedItemOutput()
    creators = FeedCreditOutput(source="item.credits.all", many=True)
    reasons = serializers.ListField(
        source="explanations",
        child=serializers.CharField(),
        help_text="Why this entry is in the feed, in words (e.g. 'labelled: AI-generated').",
    )


class FeedOutput(serializers.Serializer[Feed]):
    community = serializers.CharField(source="community.slug")
    member = serializers.CharField(source="member.external_id")
    run = serializers.IntegerField(source="run.pk", help_text="The feed run (generation).")
    policy_version = serializers.IntegerField(source="run.policy_version.number")
    policy_sha256 = serializers.CharField(source="run.policy_sha256")
    generated_at = serializers.DateTimeField()
    items = FeedEntryOutput(source="entries", many=True)
    cursor = serializers.CharField(
        allow_null=True, read_only=True, default=None, help_text="The next page, or null."
    )


_GENERATED_AT = serializers.DateTimeField()


def feed_data(feed: Feed) -> dict[str, Any]:
    """What :class:`FeedOutput` makes of ``feed``, the same keys in the same order, built
    directly: DRF's nested serializers cost a cache miss about 2 ms per page of 20 entries.
    FeedOutput stays the schema; tests/feeds/test_feed_api.py checks that the two agree."""
    run = feed.run
    generated_at = feed.generated_at
    return {
        "community": feed.community.slug,
        "member": feed.member.external_id,
        "run": run.pk,
        "policy_version": run.policy_version.number,
        "policy_sha256": run.policy_sha256,
        "generated_at": (
            _GENERATED_AT.to_representation(generated_at) if generated_at is not None else None
        ),
        "items": [
            {
                "rank": entry.rank,
                "score": float(entry.score),
                "item": {
                    "external_id": entry.item.external_id,
                    "title": entry.item.title,
                    "url": entry.item.url,
                    "tags": [str(tag) for tag in entry.item.tags],
                    "provenance": entry.item.provenance,
                },
                "creators": [
                    {"external_id": credit.creator.external_id, "name": credit.creator.name}
                    for credit in entry.item.credits.all()
                ],
                "reasons": entry.explanations,
            }
            for entry in feed.entries
        ],
        "cursor": None,
    }


class MemberFeedApi(APIView):
    """The feed GET: its schema, errors and database path; cache hits are answered by the view
    ``feeds.serving.feed_get.wrap`` makes of it."""

    permission_classes = [scope_required("feeds:read")]

    @classmethod
    def as_view(cls, **initkwargs: Any) -> Any:
        return fastpath.wrap(super().as_view(**initkwargs))

    class InputSerializer(QuerySerializer):
        limit = QueryIntegerField(
            min_value=1, max_value=1000, required=False, help_text="Entries per page."
        )
        cursor = serializers.CharField(
            required=False,
            max_length=200,
            help_text="The `cursor` of the previous page. It pins that page's generation.",
        )

    OutputSerializer = FeedOutput

    @extend_schema(
        parameters=[InputSerializer],
        responses={
            200: FeedOutput,
            304: None,
            409: ErrorOutput,
            410: ErrorOutput,
            **ERROR_RESPONSES,
        },
        summary="A member's feed",
        description=(
            "The member's feed from the run (generation) the community serves now, best first. "
            "Pages: pass `limit`, then the returned `cursor`; a cursor stays on its generation "
            "even after the community swaps to a newer one, until that generation is deleted "
            "(410). Responses carry an ETag; send it back in If-None-Match to get 304. "
            "Entries refused since the run (a creator's opt-out, an item deactivated or edited "
            "into a refused one, the member's mutes) are left out and the page is filled from "
            "the entries after them; `rank` is the entry's position in the run's list."
        ),
    )
    def get(self, request: Request, slug: str, member_external_id: str) -> Response | HttpResponse:
        params = self.InputSerializer(data=request.query_params)
        params.is_valid(raise_exception=True)
        community = community_for_app(request, slug)
        member = Membership.objects.filter(
            community=community, external_id=member_external_id
        ).first()
        if member is None:
            raise exceptions.NotFound("No such member in this community.")
        run_id, offset = _cursor_decode(params.validated_data.get("cursor"))
        # The page revision is read before the feed row: a page rendered from a row that a
        # fold-in refresh replaces meanwhile is then never cached (feedcache.page_set).
        guard = feedcache.page_guard(slug=slug, member=member_external_id)
        try:
            run = feed_run_for_read(community=community, run_id=run_id, member=member)
        except FeedNotReady:
            raise Conflict("Feeds for this community have not been computed yet.") from None
        except FeedRunGone:
            raise Gone("This cursor's feed generation has been replaced; start again.") from None
        if run_id is None:
            feedcache.pointer_publish(community=community, run=run)
        limit = params.validated_data.get("limit")

        choices_at = run.member_choices_at  # type: ignore[attr-defined]  # feed_run_for_read
        choices_stamp = int(choices_at.timestamp() * 1_000_000) if choices_at else 0

        def etag_of(revision: int | None, until: datetime | None = None) -> str:
            # A fold-in refresh replaces the member's row (a new id) within the run, a change
            # to what is refused bumps the pointer's revision, and the member's mutes apply
            # when served, so (run, pointer revision, row, choices, page) identifies the
            # response; a page that changes when an entry ages out names that time too.
            tag = (
                f"{run.pk}.{run.claim[:8]}.{run.serving_revision}."  # type: ignore[attr-defined]
                f"{member.pk}.{revision or 0}.{choices_stamp}.{offset}.{limit or 0}"
            )
            return f'"{tag}.{int(until.timestamp())}"' if until is not None else f'"{tag}"'

        etag = etag_of(run.member_feed_id)  # type: ignore[attr-defined]  # feed_run_for_read
        for tag in request.headers.get("If-None-Match", "").split(","):
            if _etag_current(tag.strip(), etag):
                return Response(status=304, headers={"ETag": tag.strip()})
        key = feedcache.page_key(
            slug=slug, member=member_external_id, pinned=run_id, offset=offset, limit=limit
        )
        cached = feedcache.page_get(key, run=run)
        if cached is not None and _etag_current(cached[0], etag):
            etag, body = cached
        else:
            row = member_feed_row(run=run, member=member)
            feed = member_feed_get(
                community=community,
                member=member,
                run=run,
                limit=limit,
                offset=offset,
                row=row,
                # A member who never set a choice has no mutes: no query to learn that.
                mutes=Mutes() if choices_at is None else None,
            )
            if feed.refresh_owed:  # refill the feed past entries withdrawn for good
                member_feeds_refresh_request(community_id=community.pk, member_ids=[member.pk])
            # The row this page shows, and when it will change by itself (an entry ageing out).
            etag = etag_of(row.pk if row is not None else None, feed.valid_until)
            data = feed_data(feed)
            data["cursor"] = (
                cursor_encode(run.pk, feed.next_offset) if feed.next_offset is not None else None
            )
            body = JSONRenderer().render(data)
            ttl = feedcache.TIMEOUT_SECONDS
            if feed.valid_until is not None:
                ttl = int((feed.valid_until - timezone.now()).total_seconds())
            feedcache.page_set(key, run=run, etag=etag, body=body, guard=guard, ttl=ttl)
        headers = {"ETag": etag, "Cache-Control": "private, no-cache"}
        return HttpResponse(body, content_type="application/json", headers=headers)


def _etag_current(tag: str, etag: str) -> bool:
    """Whether ``tag`` names the page ``etag`` names as it is now: the same, or the same with
    the time an entry ages out appended, still in the future."""
    if tag == etag:
        return True
    stem = etag[:-1] + "."
    if not (tag.startswith(stem) and tag.endswith('"')):
        return False
    until = tag[len(stem) : -1]
    return until.isdigit() and int(until) > timezone.now().timestamp()


class Gone(exceptions.APIException):
    status_code = 410
    default_code = "gone"
    default_detail = "The resource is gone."


def _cursor_decode(cursor: str | None) -> tuple[int | None, int]:
    try:
        return cursor_decode(cursor)
    except ValueError:
        raise exceptions.ValidationError({"cursor": "Not a cursor this server issued."}) from None
