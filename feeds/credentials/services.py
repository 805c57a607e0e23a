"""App credentials: issue and revoke bearer tokens (only their digests are stored), audited."""

from __future__ import annotations

import logging

from django.contrib.auth.models import AbstractBaseUser
from django.db import IntegrityError, transaction
from django.utils import timezone

from feeds.credentials.auth import token_digest, token_generate
from feeds.models import (
    AppCredential,
)
from feeds.serving import cache as feedcache
from governance.models import Community
from governance.services import audit_append

logger = logging.getLogger(__name__)


class AppCredentialInvalid(ValueError):
    """A credential cannot be issued as asked; ``field`` names the input at fault."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


def app_credential_create(
    *,
    community: Community,
    name: str,
    scopes: list[str],
    actor: AbstractBaseUser | None = None,
) -> tuple[AppCredential, str]:
    """Issue an app credential. Returns the row and the token, which is not stored anywhere."""
    valid = set(AppCredential.Scope.values)
    unknown = sorted(set(scopes) - valid)
    if unknown or not scopes:
        raise AppCredentialInvalid(
            "scopes",
            f"unknown scope(s) {', '.join(unknown)}; choose from {', '.join(sorted(valid))}"
            if unknown
            else "at least one scope is required",
        )
    name = name.strip()
    if not name or len(name) > 100:
        raise AppCredentialInvalid("name", "a name of 1 to 100 characters is required")
    prefix, token = token_generate()
    with transaction.atomic():
        try:
            # A savepoint, so a clash leaves the caller's transaction usable.
            with transaction.atomic():
                credential = AppCredential.objects.create(
                    community=community,
                    name=name,
                    prefix=prefix,
                    secret_sha256=token_digest(token),
                    scopes=sorted(set(scopes)),
                )
        except IntegrityError:
            # The partial unique constraint (one active credential per name) decides, not a
            # prior SELECT, so two concurrent requests cannot both win.
            raise AppCredentialInvalid(
                "name", f"an active credential named {name!r} already exists"
            ) from None
        audit_append(
            community=community,
            actor=actor,
            action="app_credential.created",
            obj=credential,
            payload={"name": credential.name, "prefix": prefix, "scopes": credential.scopes},
        )
    return credential, token


def app_credential_revoke(
    *, credential: AppCredential, actor: AbstractBaseUser | None = None
) -> bool:
    """Revoke the credential from its next request on. Returns False if it was revoked already."""
    with transaction.atomic():
        feedcache.credential_invalidate(credential)  # before the commit: see feeds/serving/cache.py
        # Conditional update: of two concurrent revokes exactly one writes (and audits).
        revoked = AppCredential.objects.filter(pk=credential.pk, revoked_at__isnull=True).update(
            revoked_at=timezone.now()
        )
        if revoked:
            credential.refresh_from_db(fields=["revoked_at"])
            audit_append(
                community=credential.community,
                actor=actor,
                action="app_credential.revoked",
                obj=credential,
                payload={"name": credential.name, "prefix": credential.prefix},
            )
    return bool(revoked)
