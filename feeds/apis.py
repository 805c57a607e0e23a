"""The app API (DRF). Views are thin: parse, one selector call, serialize."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict
from datetime import datetime
from typing import Any

from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.http import Http404, HttpResponse
from django.utils import timezone
from drf_spectacular.extensions import OpenApiSerializerExtension
from drf_spectacular.utils import (
    OpenApiResponse,
    extend_schema,
    extend_schema_view,
    inline_serializer,
)
from rest_framework import exceptions, serializers
from rest_framework.authentication import SessionAuthentication
from rest_framework.permissions import BasePermission, IsAuthenticated
from rest_framework.renderers import JSONRenderer
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView
from rest_framework.views import exception_handler as drf_exception_handler

from feeds.choices import services as choices
from feeds.credentials.auth import AppPrincipal, community_for_credential_manager
from feeds.credentials.services import (
    AppCredentialInvalid,
    app_credential_create,
    app_credential_revoke,
)
from feeds.enqueue import member_feeds_refresh_request
from feeds.fields import (
    StrictBooleanField,
    StrictCharField,
    StrictDateTimeField,
    StrictFloatField,
    StrictRegexField,
    StrictURLField,
)
from feeds.ingest import schemas as ingest_schemas
from feeds.ingest import services as ingest
from feeds.models import AppCredential, Creator, FeedRun, Interaction, Item
from feeds.runs import schedule as runs
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
from governance.models import Community, Membership


class Conflict(exceptions.APIException):
    status_code = 409
    default_code = "conflict"
    default_detail = "The request conflicts with the current state."


class PayloadTooLarge(exceptions.APIException):
    status_code = 413
    default_code = "payload_too_large"
    default_detail = "The request body is too large."


def exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    """Every API error reads ``{"error": code, "detail": ...}``."""
    if isinstance(exc, RequestDataTooBig):
        # Django would answer 400 (a SuspiciousOperation); an oversized body is a 413.
        exc = PayloadTooLarge(
            f"The request body exceeds the limit of {settings.DATA_UPLOAD_MAX_MEMORY_SIZE} bytes."
        )
    if isinstance(exc, ingest.BatchRejected):
        return Response(
            {
                "error": "invalid",
                "detail": f"{len(exc.errors)} problem(s) in the batch; nothing was written.",
                "rows": [e.as_dict() for e in exc.errors],
            },
            status=400,
        )
    response = drf_exception_handler(exc, context)
    if response is None:
        return None
    if isinstance(exc, Http404):
        code = "not_found"
    elif isinstance(exc, exceptions.APIException):
        codes = exc.get_codes()
        code = codes if isinstance(codes, str) else "invalid"
    else:
        code = "error"
    detail = (
        response.data.get("detail", response.data)
        if isinstance(response.data, dict)
        else (response.data)
    )
    response.data = {"error": code, "detail": detail}
    return response


def scope_required(scope: str) -> type[BasePermission]:
    class HasScope(BasePermission):
        message = f"This credential lacks the '{scope}' scope."

        def has_permission(self, request: Request, view: APIView) -> bool:
            user = request.user
            return isinstance(user, AppPrincipal) and user.has_scope(scope)

    return HasScope


def community_for_app(request: Request, slug: str) -> Community:
    """The community ``slug``, if the calling app belongs to it.

    Another community's slug reads as not found: an app must not learn which communities exist.
    """
    principal = request.user
    assert isinstance(principal, AppPrincipal)
    community = principal.credential.community
    if community.slug != slug:
        raise exceptions.NotFound("No such community for this credential.")
    return community


class ErrorOutput(serializers.Serializer[Any]):
    error = serializers.CharField(help_text="A stable, machine-readable code.")
    detail = serializers.JSONField(help_text="What went wrong, for people.")


# Errors of the session-authenticated API (people managing a community, not apps).
SESSION_ERROR_RESPONSES = {
    400: ErrorOutput,
    403: ErrorOutput,
    404: ErrorOutput,
}

THROTTLED = OpenApiResponse(
    ErrorOutput,
    description=(
        "This credential is over its rate (COMMONFEED_APP_RATE). The Retry-After header says "
        "how many seconds to wait."
    ),
)

# Errors of the app API (bearer credentials).
ERROR_RESPONSES: dict[int, Any] = {
    400: ErrorOutput,
    401: ErrorOutput,
    403: ErrorOutput,
    404: ErrorOutput,
    429: THROTTLED,
}


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


# --- Ingestion -----------------------------------------------------------------------------------


class ExternalIdField(StrictRegexField):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(
            r"^[^\s]{1,255}$",
            max_length=255,
            error_messages={"invalid": "Ids are 1 to 255 characters without whitespace."},
            **kwargs,
        )


class BatchApi(APIView):
    """POST a batch ``{"<key>": [row, ...]}`` of at most 1,000 rows: all written, or none."""

    key: str
    # Checks every row of the batch at once (pydantic); raises ingest.BatchRejected.
    validate_rows: Callable[[list[Any]], list[dict[str, Any]]]

    def service(self, *, community: Community, rows: list[dict[str, Any]]) -> dict[str, Any]:
        raise NotImplementedError

    def post(self, request: Request, slug: str) -> Response:
        community = community_for_app(request, slug)
        if not isinstance(request.data, dict) or not isinstance(request.data.get(self.key), list):
            raise exceptions.ValidationError({self.key: f"Send {{'{self.key}': [...]}}."})
        rows = request.data[self.key]
        if len(rows) > ingest.MAX_BATCH:
            raise exceptions.ValidationError(
                {self.key: f"At most {ingest.MAX_BATCH} per request; got {len(rows)}."}
            )
        if not rows:
            raise exceptions.ValidationError({self.key: "The batch is empty."})
        return Response(self.service(community=community, rows=self.validate_rows(rows)))


# A batch row as the OpenAPI schema documents it. Only the schema: ``feeds.ingest.schemas``
# validates the rows, by the same rules (tests/feeds/test_ingest_schemas.py compares the two).
class RowSerializer(serializers.Serializer[Any]):
    pass


class ClosedRowSchema(OpenApiSerializerExtension):  # type: ignore[misc]
    """Rows accept no fields beyond those listed (``extra="forbid"`` in ingest_schemas)."""

    target_class = RowSerializer
    match_subclasses = True

    def map_serializer(self, auto_schema: Any, direction: Any) -> dict[str, Any]:
        schema: dict[str, Any] = auto_schema._map_basic_serializer(self.target, direction)
        schema["additionalProperties"] = False
        return schema


class MemberRow(RowSerializer):
    id = ExternalIdField(help_text="The app's id for the member.")
    display_name = StrictCharField(max_length=200, required=False, allow_blank=True)


class CreatorRow(RowSerializer):
    id = ExternalIdField(help_text="The app's id for the creator.")
    name = StrictCharField(max_length=200)
    member = ExternalIdField(
        required=False,
        allow_null=True,
        help_text="The creator's own member account (an existing member's id): it may read the "
        "creator dashboard and opt the creator out of recommendation. null unlinks; left out, "
        "the link stays as it is.",
    )


class ItemRow(RowSerializer):
    id = ExternalIdField(help_text="The app's id for the item.")
    title = StrictCharField(max_length=500)
    url = StrictURLField(max_length=2000, required=False, allow_blank=True)
    tags = serializers.ListField(
        child=StrictCharField(max_length=64), max_length=50, required=False
    )
    provenance = serializers.ChoiceField(
        choices=Item.Provenance.choices,
        required=False,
        help_text="Who made it: human, ai_assisted, ai_generated or unknown (the default).",
    )
    published_at = StrictDateTimeField(required=False, allow_null=True)
    active = StrictBooleanField(required=False, default=True)
    creators = serializers.ListField(
        child=ExternalIdField(),
        min_length=1,
        max_length=20,
        help_text="Creator ids in credit order; the first is the primary creator.",
    )


class EventRow(RowSerializer):
    id = ExternalIdField(help_text="The app's unique id for this event (idempotency key).")
    member = ExternalIdField()
    item = ExternalIdField()
    kind = serializers.ChoiceField(choices=Interaction.Kind.choices)
    weight = StrictFloatField(
        required=False,
        allow_null=True,
        min_value=-100.0,
        max_value=100.0,
        help_text="Defaults by kind: view 1, like 3, save 4, share 5, skip 0; required for rating.",
    )
    occurred_at = StrictDateTimeField(required=False, allow_null=True)


class UpsertOutput(serializers.Serializer[Any]):
    created = serializers.IntegerField()
    updated = serializers.IntegerField()


class EventsOutput(serializers.Serializer[Any]):
    accepted = serializers.IntegerField()
    duplicates = serializers.IntegerField()
    duplicate_ids = serializers.ListField(child=serializers.CharField())


class RowErrorOutput(serializers.Serializer[Any]):
    index = serializers.IntegerField()
    field = serializers.CharField()
    message = serializers.CharField()


class BatchErrorOutput(ErrorOutput):
    rows = RowErrorOutput(many=True, required=False)


def _batch_schema(key: str, row: type[serializers.Serializer[Any]], output: Any, scope: str) -> Any:
    return extend_schema_view(
        post=extend_schema(
            request=inline_serializer(
                f"{key.title()}Batch",
                {
                    key: serializers.ListField(
                        child=row(), min_length=1, max_length=ingest.MAX_BATCH
                    )
                },
            ),
            responses={
                200: output,
                400: BatchErrorOutput,
                401: ErrorOutput,
                403: ErrorOutput,
                404: ErrorOutput,
                413: ErrorOutput,
                429: THROTTLED,
            },
            summary=f"Send {key}",
            description=(
                f"Up to {ingest.MAX_BATCH} {key} in one all-or-nothing batch (scope `{scope}`); "
                "a body over the size limit gets 413. "
                "A batch with any bad row writes nothing; the 400 body lists every bad row."
            ),
        )
    )


def _batch_api(
    key: str,
    row: type[serializers.Serializer[Any]],
    output: type[serializers.Serializer[Any]],
    scope: str,
    validate: Callable[[list[Any]], list[dict[str, Any]]],
    write: Callable[..., Any],
) -> type[BatchApi]:
    """A batch endpoint: ``validate(rows)`` checks the rows (``row`` documents them), then
    ``write(community=..., rows=...)`` returns a result dataclass."""

    class Api(BatchApi):
        permission_classes = [scope_required(scope)]
        validate_rows = staticmethod(validate)

        def service(self, *, community: Community, rows: list[dict[str, Any]]) -> dict[str, Any]:
            return asdict(write(community=community, rows=rows))

    Api.key = key
    Api.__name__ = Api.__qualname__ = f"{key.title()}Api"
    return _batch_schema(key, row, output, scope)(Api)  # type: ignore[no-any-return]


MembersApi = _batch_api(
    "members",
    MemberRow,
    UpsertOutput,
    "events:write",
    ingest_schemas.members,
    ingest.members_upsert,
)
CreatorsApi = _batch_api(
    "creators",
    CreatorRow,
    UpsertOutput,
    "catalogue:write",
    ingest_schemas.creators,
    ingest.creators_upsert,
)
ItemsApi = _batch_api(
    "items", ItemRow, UpsertOutput, "catalogue:write", ingest_schemas.items, ingest.items_upsert
)
EventsApi = _batch_api(
    "events", EventRow, EventsOutput, "events:write", ingest_schemas.events, ingest.events_ingest
)


# --- Member and creator choices ------------------------------------------------------------------


class MemberChoicesIO(serializers.Serializer[Any]):
    personalise = StrictBooleanField(
        required=False, help_text="False: the member gets the community's non-personalised feed."
    )
    train_on_my_data = StrictBooleanField(
        required=False, help_text="False: the member's interactions never train the model."
    )
    muted_creators = serializers.ListField(
        child=ExternalIdField(), max_length=1000, required=False, help_text="Creator ids."
    )
    muted_tags = serializers.ListField(
        child=StrictCharField(max_length=64), max_length=1000, required=False
    )


def _member_for_app(request: Request, slug: str, member_external_id: str) -> Membership:
    community = community_for_app(request, slug)
    member = Membership.objects.filter(community=community, external_id=member_external_id).first()
    if member is None:
        raise exceptions.NotFound("No such member in this community.")
    return member


class MemberChoicesApi(APIView):
    """A member's choices about their recommendations, set by an app on the member's behalf."""

    def get_permissions(self) -> list[BasePermission]:
        scope = "feeds:read" if self.request.method == "GET" else "events:write"
        return [scope_required(scope)()]

    @extend_schema(responses={200: MemberChoicesIO, **ERROR_RESPONSES}, summary="Member choices")
    def get(self, request: Request, slug: str, member_external_id: str) -> Response:
        member = _member_for_app(request, slug, member_external_id)
        return Response(choices.member_choices_as_dict(choices.member_choices_get(member=member)))

    @extend_schema(
        request=MemberChoicesIO,
        responses={200: MemberChoicesIO, **ERROR_RESPONSES},
        summary="Change member choices",
        description=(
            "Fields left out stay as they are. The member's served feed follows within seconds "
            "(fold-in, unless COMMONFEED_FOLD_IN is off); every feed run applies them too."
        ),
    )
    def put(self, request: Request, slug: str, member_external_id: str) -> Response:
        member = _member_for_app(request, slug, member_external_id)
        data = MemberChoicesIO(data=request.data)
        data.is_valid(raise_exception=True)
        try:
            updated = choices.member_choices_set(member=member, actor=None, **data.validated_data)
        except choices.UnknownCreators as exc:
            raise exceptions.ValidationError({"muted_creators": str(exc)}) from None
        return Response(choices.member_choices_as_dict(updated))


class DataDeletionOutput(serializers.Serializer[Any]):
    interactions_deleted = serializers.IntegerField()


class MemberDataDeletionApi(APIView):
    permission_classes = [scope_required("events:write")]

    @extend_schema(
        request=None,
        responses={200: DataDeletionOutput, **ERROR_RESPONSES},
        summary="Delete a member's interaction data",
        description="Gone from the next training run; the audit log records the request only.",
    )
    def post(self, request: Request, slug: str, member_external_id: str) -> Response:
        member = _member_for_app(request, slug, member_external_id)
        return Response(
            {"interactions_deleted": choices.member_data_delete(member=member, actor=None)}
        )


class CreatorChoicesIO(serializers.Serializer[Any]):
    opted_out = StrictBooleanField(help_text="True: none of the creator's items is recommended.")


class CreatorChoicesApi(APIView):
    permission_classes = [scope_required("catalogue:write")]

    @extend_schema(
        request=CreatorChoicesIO,
        responses={200: CreatorChoicesIO, **ERROR_RESPONSES},
        summary="A creator opts out of (or back into) recommendation",
    )
    def put(self, request: Request, slug: str, creator_external_id: str) -> Response:
        community = community_for_app(request, slug)
        creator = Creator.objects.filter(
            community=community, external_id=creator_external_id
        ).first()
        if creator is None:
            raise exceptions.NotFound("No such creator in this community.")
        data = CreatorChoicesIO(data=request.data)
        data.is_valid(raise_exception=True)
        choices.creator_choices_set(
            creator=creator, opted_out=data.validated_data["opted_out"], actor=None
        )
        return Response({"opted_out": creator.opted_out})


# --- App credentials (managed by moderators and admins, signed in with a session) ----------------


class AppCredentialOutput(serializers.Serializer[AppCredential]):
    name = serializers.CharField()
    prefix = serializers.CharField(help_text="Public part of the token: cf_<prefix>_<secret>.")
    scopes = serializers.ListField(
        child=serializers.ChoiceField(choices=AppCredential.Scope.choices)
    )
    created_at = serializers.DateTimeField()
    revoked_at = serializers.DateTimeField(allow_null=True, help_text="Null while active.")


class AppCredentialIssuedOutput(AppCredentialOutput):
    token = serializers.CharField(
        help_text="The bearer token. Shown this once: only its SHA-256 digest is stored."
    )


class SessionApi(APIView):
    """A person's API, with their browser session: CSRF token required on writes."""

    authentication_classes = [SessionAuthentication]
    permission_classes = [IsAuthenticated]


class AppCredentialsApi(SessionApi):
    class InputSerializer(serializers.Serializer[Any]):
        name = StrictCharField(max_length=100, help_text="Unique among active credentials.")
        scopes = serializers.ListField(
            child=serializers.ChoiceField(choices=AppCredential.Scope.choices),
            min_length=1,
            max_length=len(AppCredential.Scope.choices),
        )

    @extend_schema(
        responses={200: AppCredentialOutput(many=True), **SESSION_ERROR_RESPONSES},
        summary="List a community's app credentials",
        description="For the community's moderators and admins, signed in (session cookie).",
    )
    def get(self, request: Request, slug: str) -> Response:
        community = community_for_credential_manager(slug=slug, user=request.user)
        rows = community.app_credentials.order_by("-created_at", "-pk")
        return Response(AppCredentialOutput(rows, many=True).data)

    @extend_schema(
        request=InputSerializer,
        responses={201: AppCredentialIssuedOutput, **SESSION_ERROR_RESPONSES},
        summary="Issue an app credential",
        description=(
            "Returns the token once; it cannot be shown again. Rotate by issuing a new "
            "credential, deploying it, then revoking the old one."
        ),
    )
    def post(self, request: Request, slug: str) -> Response:
        community = community_for_credential_manager(slug=slug, user=request.user)
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        try:
            credential, token = app_credential_create(
                community=community, actor=request.user, **data.validated_data
            )
        except AppCredentialInvalid as exc:
            raise exceptions.ValidationError({exc.field: [str(exc)]}) from None
        return Response({**AppCredentialOutput(credential).data, "token": token}, status=201)


class AppCredentialRevokeApi(SessionApi):
    @extend_schema(
        request=None,
        responses={200: AppCredentialOutput, **SESSION_ERROR_RESPONSES},
        summary="Revoke an app credential",
        description="Requests with it are refused from the next one on. Revoking twice is a no-op.",
    )
    def post(self, request: Request, slug: str, prefix: str) -> Response:
        community = community_for_credential_manager(slug=slug, user=request.user)
        credential = community.app_credentials.filter(prefix=prefix).first()
        if credential is None:
            raise exceptions.NotFound("No such credential in this community.")
        app_credential_revoke(credential=credential, actor=request.user)
        credential.refresh_from_db()
        return Response(AppCredentialOutput(credential).data)


class FeedRunOutput(serializers.Serializer[Any]):
    id = serializers.IntegerField()
    status = serializers.ChoiceField(choices=FeedRun.Status.choices)
    policy_version = serializers.IntegerField(source="policy_version.number")
    policy_sha256 = serializers.CharField()
    requested_at = serializers.DateTimeField()
    started_at = serializers.DateTimeField(allow_null=True)
    finished_at = serializers.DateTimeField(allow_null=True)
    attempts = serializers.IntegerField()
    shards_done = serializers.IntegerField()
    shards_total = serializers.IntegerField()
    members = serializers.IntegerField(
        source="stats.members", allow_null=True, default=None, help_text="Feeds computed."
    )
    watermark = serializers.IntegerField(
        allow_null=True, help_text="Highest interaction id the model was trained on."
    )
    stats = serializers.DictField(help_text="Timings (seconds) and sizes of the run's steps.")
    error = serializers.CharField(help_text="Why the run failed; empty otherwise.")
    metrics = serializers.DictField(
        allow_null=True,
        help_text=(
            "Two-sided metrics of a finished run's feeds, null until measured: status (done, "
            "unavailable or failed); when done, consumers (diversity_tags, novelty_bits, "
            "avg_popularity, miscalibration_kl) and producers (item_gini, creator_gini, "
            "item_coverage, creator_coverage, long_tail_creator_share, new_creator_share, "
            "ai_generated_share) over the whole feed, counting every place 1; from version 2 "
            "also depth (COMMONFEED_VISIBLE_DEPTH), length, discount and at_depth and "
            "whole_feed, each with consumers and producers, the producers adding *_weighted "
            "twins that count place p (0 = top) 1/log2(p + 2). Values null where undefined. "
            "See docs/pipeline.md and docs/evaluation.md."
        ),
    )


class FeedRunRequestedOutput(serializers.Serializer[Any]):
    created = serializers.BooleanField(
        help_text="False: a run was already queued or in progress; that run is returned."
    )
    run = FeedRunOutput()


class FeedRunsApi(SessionApi):
    @extend_schema(
        responses={200: FeedRunOutput(many=True), **SESSION_ERROR_RESPONSES},
        summary="List a community's recent feed runs",
        description=(
            "The 20 newest runs, newest first, with their two-sided metrics. For the "
            "community's moderators and admins, signed in (session cookie)."
        ),
    )
    def get(self, request: Request, slug: str) -> Response:
        community = runs.community_for_run_manager(slug=slug, user=request.user)
        return Response(FeedRunOutput(runs.feed_runs_recent(community=community), many=True).data)

    @extend_schema(
        request=None,
        responses={
            201: FeedRunRequestedOutput,
            200: OpenApiResponse(
                FeedRunRequestedOutput, description="A run was already queued or in progress."
            ),
            **SESSION_ERROR_RESPONSES,
        },
        summary="Recompute the community's feeds now",
        description=(
            "Queues a run under the current policy (audited as feed_run.requested) unless one "
            "is queued or in progress, which is returned instead. Moderators and admins."
        ),
    )
    def post(self, request: Request, slug: str) -> Response:
        community = runs.community_for_run_manager(slug=slug, user=request.user)
        requested = runs.feed_run_request_on_demand(community=community, actor=request.user)
        body = {"created": requested.created, "run": FeedRunOutput(requested.run).data}
        return Response(body, status=201 if requested.created else 200)
