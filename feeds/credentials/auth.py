"""Bearer-token authentication for third-party apps.

A credential reads ``cf_<prefix>_<secret>``. The prefix is stored in clear to find the row with one
indexed lookup; only the SHA-256 digest of the whole token is stored. A fast hash is right here
(as in djangorestframework-api-key): the secret is 256 random bits, so there is nothing to
brute-force, and a slow password hash would cost milliseconds on every API request.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from typing import Any

from django.core.exceptions import PermissionDenied
from django.http import Http404
from rest_framework import authentication, exceptions
from rest_framework.request import Request

from feeds.models import AppCredential
from feeds.serving import cache as feedcache
from governance.models import Community, Membership
from governance.selectors import membership_of_user

TOKEN_PREFIX = "cf"


@dataclass(frozen=True)
class AppPrincipal:
    """The authenticated app: what DRF puts in ``request.user`` for app requests."""

    credential: AppCredential

    is_authenticated = True
    is_anonymous = False

    @property
    def community_id(self) -> int:
        return self.credential.community_id

    def has_scope(self, scope: str) -> bool:
        return scope in self.credential.scopes


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def token_generate() -> tuple[str, str]:
    """Return ``(prefix, token)`` for a new credential."""
    prefix = secrets.token_hex(6)
    return prefix, f"{TOKEN_PREFIX}_{prefix}_{secrets.token_urlsafe(32)}"


class AppCredentialAuthentication(authentication.BaseAuthentication):
    keyword = "Bearer"

    def authenticate(self, request: Request) -> tuple[AppPrincipal, AppCredential] | None:
        header = authentication.get_authorization_header(request).split()
        if not header or header[0].lower() != self.keyword.lower().encode():
            return None
        if len(header) != 2:
            raise exceptions.AuthenticationFailed("Authorization header must be 'Bearer <token>'.")
        try:
            token = header[1].decode("ascii")
        except UnicodeDecodeError:
            raise exceptions.AuthenticationFailed("Invalid token.") from None
        parts = token.split("_", 2)
        if len(parts) != 3 or parts[0] != TOKEN_PREFIX:
            raise exceptions.AuthenticationFailed("Invalid token.")
        credential = (
            AppCredential.objects.filter(prefix=parts[1], revoked_at__isnull=True)
            .select_related("community")
            .first()
        )
        if credential is None or not hmac.compare_digest(
            credential.secret_sha256, token_digest(token)
        ):
            raise exceptions.AuthenticationFailed("Invalid or revoked token.")
        # Lets the feed GET (feeds.serving.feed_get) authenticate this token without the
        # database until the record expires or the credential is revoked.
        feedcache.credential_publish(credential)
        return AppPrincipal(credential), credential

    def authenticate_header(self, request: Request) -> str:
        return self.keyword


# Who may see, issue and revoke a community's app credentials (page and session API).
CREDENTIAL_MANAGER_ROLES = frozenset({Membership.Role.MODERATOR, Membership.Role.ADMIN})


def community_for_credential_manager(*, slug: str, user: Any) -> Community:
    """The community ``slug`` if ``user`` moderates or administers it.

    An unknown slug is a 404; a community the user does not manage is a 403 (its existence is
    public: the home page lists every community).
    """
    community = Community.objects.filter(slug=slug).first()
    if community is None:
        raise Http404("No such community.")
    membership = membership_of_user(community=community, user=user)
    if membership is None or membership.role not in CREDENTIAL_MANAGER_ROLES:
        raise PermissionDenied("Only the community's moderators and admins manage app credentials.")
    return community
