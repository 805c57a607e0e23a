"""The app API (DRF). Views are thin: parse, one selector call, serialize."""

from __future__ import annotations

from typing import Any

from django.http import Http404
from rest_framework import exceptions, serializers
from rest_framework.permissions import BasePermission
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView
from rest_framework.views import exception_handler as drf_exception_handler

from feeds.auth import AppPrincipal
from feeds.selectors import Feed, FeedNotReady, member_feed_get
from governance.models import Community, Membership


class Conflict(exceptions.APIException):
    status_code = 409
    default_code = "conflict"
    default_detail = "The request conflicts with the current state."


def exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    """Every API error reads ``{"error": code, "detail": ...}``."""
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


class MemberFeedApi(APIView):
    permission_classes = [scope_required("feeds:read")]

    class InputSerializer(serializers.Serializer[Any]):
        limit = serializers.IntegerField(min_value=1, max_value=1000, required=False)

    class OutputSerializer(serializers.Serializer[Feed]):
        community = serializers.CharField(source="community.slug")
        member = serializers.CharField(source="member.external_id")
        run = serializers.IntegerField(source="run.pk")
        policy_version = serializers.IntegerField(source="run.policy_version.number")
        policy_sha256 = serializers.CharField(source="run.policy_sha256")
        generated_at = serializers.DateTimeField()
        items = serializers.SerializerMethodField()

        def get_items(self, feed: Feed) -> list[dict[str, Any]]:
            return [
                {
                    "rank": entry.rank,
                    "score": entry.score,
                    "item": {
                        "external_id": entry.item.external_id,
                        "title": entry.item.title,
                        "url": entry.item.url,
                        "tags": entry.item.tags,
                        "provenance": entry.item.provenance,
                    },
                    "creators": [
                        {"external_id": c.creator.external_id, "name": c.creator.name}
                        for c in entry.item.credits.all()
                    ],
                }
                for entry in feed.entries
            ]

    def get(self, request: Request, slug: str, member_external_id: str) -> Response:
        params = self.InputSerializer(data=request.query_params)
        params.is_valid(raise_exception=True)
        community = community_for_app(request, slug)
        member = Membership.objects.filter(
            community=community, external_id=member_external_id
        ).first()
        if member is None:
            raise exceptions.NotFound("No such member in this community.")
        try:
            feed = member_feed_get(
                community=community, member=member, limit=params.validated_data.get("limit")
            )
        except FeedNotReady:
            raise Conflict("Feeds for this community have not been computed yet.") from None
        return Response(self.OutputSerializer(feed).data)
