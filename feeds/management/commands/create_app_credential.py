from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from feeds.credentials.services import app_credential_create
from governance.models import Community


class Command(BaseCommand):
    help = (
        "Issue an API credential for a third-party app. The token is printed once, alone on the "
        "last line, and only its SHA-256 digest is stored."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("slug", help="The community's slug.")
        parser.add_argument("--name", required=True, help="A name for the app.")
        parser.add_argument(
            "--scopes",
            default="feeds:read",
            help="Comma-separated scopes: feeds:read, events:write, catalogue:write.",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        community = Community.objects.filter(slug=options["slug"]).first()
        if community is None:
            raise CommandError(f"No community with slug {options['slug']!r}.")
        scopes = [s.strip() for s in options["scopes"].split(",") if s.strip()]
        if community.app_credentials.filter(name=options["name"], revoked_at__isnull=True).exists():
            raise CommandError(
                f"An active credential named {options['name']!r} exists in {community.slug}."
            )
        try:
            credential, token = app_credential_create(
                community=community, name=options["name"], scopes=scopes
            )
        except ValueError as exc:
            raise CommandError(str(exc)) from None
        self.stdout.write(
            f"Credential {credential.name!r} ({', '.join(credential.scopes)}) for "
            f"{community.slug}. Store it now: it cannot be shown again."
        )
        self.stdout.write(token)
