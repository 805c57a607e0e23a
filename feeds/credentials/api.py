"""App credentials over the API, for the community's admins signed in (session)."""

from __future__ import annotations

from drf_spectacular.utils import (
    extend_schema,
)
from rest_framework import exceptions, serializers
from rest_framework.request import Request
from rest_framework.response import Response

from config.input_gate import StrictInputSerializer, no_body_fields
from feeds.api import SESSION_ERROR_RESPONSES, SessionApi
from feeds.credentials.auth import community_for_credential_manager
from feeds.credentials.services import (
    AppCredentialInvalid,
    app_credential_create,
    app_credential_revoke,
)
from feeds.fields import (
    StrictCharField,
)
from feeds.models import AppCredential


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


class AppCredentialsApi(SessionApi):
    class InputSerializer(StrictInputSerializer):
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
        response = Response({**AppCredentialOutput(credential).data, "token": token}, status=201)
        # The secret is shown once: no cache (browser, proxy) may keep a copy.
        response["Cache-Control"] = "no-store"
        return response


class AppCredentialRevokeApi(SessionApi):
    @extend_schema(
        request=None,
        responses={200: AppCredentialOutput, **SESSION_ERROR_RESPONSES},
        summary="Revoke an app credential",
        description="Requests with it are refused from the next one on. Revoking twice is a no-op.",
    )
    def post(self, request: Request, slug: str, prefix: str) -> Response:
        community = community_for_credential_manager(slug=slug, user=request.user)
        no_body_fields(request.data)
        credential = community.app_credentials.filter(prefix=prefix).first()
        if credential is None:
            raise exceptions.NotFound("No such credential in this community.")
        app_credential_revoke(credential=credential, actor=request.user)
        credential.refresh_from_db()
        return Response(AppCredentialOutput(credential).data)
