"""The app API's choices endpoints: a member's choices and data deletion, a creator's opt-out."""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import (
    extend_schema,
)
from rest_framework import exceptions, serializers
from rest_framework.permissions import BasePermission
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from config.input_gate import StrictInputSerializer, no_body_fields
from feeds.api import ERROR_RESPONSES, ExternalIdField, community_for_app, scope_required
from feeds.choices import services as choices
from feeds.fields import (
    StrictBooleanField,
    StrictCharField,
)
from feeds.models import Creator
from governance.models import Membership


class MemberChoicesIO(StrictInputSerializer):
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
        no_body_fields(request.data)
        member = _member_for_app(request, slug, member_external_id)
        return Response(
            {"interactions_deleted": choices.member_data_delete(member=member, actor=None)}
        )


class CreatorChoicesIO(StrictInputSerializer):
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
