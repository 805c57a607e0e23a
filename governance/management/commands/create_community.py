"""Create a community with its genesis policy and charter, from JSON files or the defaults."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, TypeVar

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.core.validators import validate_slug
from pydantic import BaseModel
from pydantic import ValidationError as PydanticValidationError

from governance.charter import Charter
from governance.models import Community
from governance.services import community_create
from ranking.policy import Policy

Document = TypeVar("Document", bound=BaseModel)


def load_document(path: str, model: type[Document], what: str) -> Document:
    """Parse a JSON file into ``model``; errors name each problem's field path."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise CommandError(f"{what} file {path}: {exc.strerror}") from None
    except json.JSONDecodeError as exc:
        raise CommandError(
            f"{what} file {path} is not valid JSON: {exc.msg} (line {exc.lineno}, "
            f"column {exc.colno})"
        ) from None
    try:
        return model.model_validate(data)
    except PydanticValidationError as exc:
        problems = [
            f"  {'.'.join(str(part) for part in error['loc']) or '(document)'}: {error['msg']}"
            for error in exc.errors()
        ]
        raise CommandError(f"{what} file {path} is invalid:\n" + "\n".join(problems)) from None


class Command(BaseCommand):
    help = "Create a community; its genesis policy and charter come from files or the defaults."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("slug")
        parser.add_argument("--name", required=True)
        parser.add_argument("--description", default="")
        parser.add_argument("--policy", metavar="FILE", help="ranking policy JSON")
        parser.add_argument("--charter", metavar="FILE", help="charter JSON")

    def handle(self, *args: Any, **options: Any) -> None:
        slug = options["slug"]
        try:
            validate_slug(slug)
        except ValidationError:
            raise CommandError(
                f"{slug!r} is not a valid slug (letters, digits, hyphens, underscores)"
            ) from None
        # Everything is validated before anything is written.
        policy = load_document(options["policy"], Policy, "policy") if options["policy"] else None
        charter = (
            load_document(options["charter"], Charter, "charter") if options["charter"] else None
        )
        if Community.objects.filter(slug=slug).exists():
            raise CommandError(f"a community with slug {slug!r} already exists")
        community = community_create(
            slug=slug,
            name=options["name"],
            description=options["description"],
            policy=policy,
            charter=charter,
            actor_label="manage.py create_community",
        )
        self.stdout.write(f"created community {community.slug} ({community.name})")
