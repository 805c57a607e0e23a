"""What every endpoint of the app API shares: one error envelope (``{"error", "detail"}``),
scope checks, the calling app's community, the documented error responses."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.http import Http404
from drf_spectacular.utils import (
    OpenApiResponse,
)
from rest_framework import exceptions, serializers
from rest_framework.authentication import SessionAuthentication
from rest_framework.permissions import BasePermission, IsAuthenticated
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView
from rest_framework.views import exception_handler as drf_exception_handler

from feeds.credentials.auth import AppPrincipal
from feeds.fields import (
    StrictRegexField,
)
from feeds.ingest import services as ingest
from governance.models import Community


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


class ExternalIdField(StrictRegexField):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(
            r"^[^\s]{1,255}$",
            max_length=255,
            error_messages={"invalid": "Ids are 1 to 255 characters without whitespace."},
            **kwargs,
        )


class SessionApi(APIView):
    """A person's API, with their browser session: CSRF token required on writes."""

    authentication_classes = [SessionAuthentication]
    permission_classes = [IsAuthenticated]
