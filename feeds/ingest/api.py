"""The app API's batch endpoints: members, creators, items and events, all-or-nothing."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict
from typing import Any

from drf_spectacular.extensions import OpenApiSerializerExtension
from drf_spectacular.utils import (
    extend_schema,
    extend_schema_view,
    inline_serializer,
)
from rest_framework import exceptions, serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from config.input_gate import UNKNOWN_FIELD
from feeds.api import THROTTLED, ErrorOutput, ExternalIdField, community_for_app, scope_required
from feeds.fields import (
    StrictBooleanField,
    StrictCharField,
    StrictDateTimeField,
    StrictFloatField,
    StrictURLField,
)
from feeds.ingest import schemas as ingest_schemas
from feeds.ingest import services as ingest
from feeds.models import Interaction, Item
from governance.models import Community


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
        unknown = sorted(set(request.data) - {self.key})
        if unknown:
            # ``{"events": [...], "dry_run": true}`` must not write the events it meant to try.
            raise exceptions.ValidationError({str(name): [UNKNOWN_FIELD] for name in unknown})
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
