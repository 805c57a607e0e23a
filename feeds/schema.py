"""OpenAPI description of the app credential (loaded by FeedsConfig.ready)."""

from __future__ import annotations

from typing import Any

from drf_spectacular.extensions import OpenApiAuthenticationExtension


class AppCredentialScheme(OpenApiAuthenticationExtension):  # type: ignore[misc]
    target_class = "feeds.credentials.auth.AppCredentialAuthentication"
    name = "appCredential"

    def get_security_definition(self, auto_schema: Any) -> dict[str, str]:
        return {
            "type": "http",
            "scheme": "bearer",
            "description": "A token from `manage.py create_app_credential`.",
        }
