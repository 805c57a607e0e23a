from __future__ import annotations

import argparse
from dataclasses import fields
from datetime import UTC, datetime
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from feeds.importers.synthetic import SyntheticSpec, seed_demo

DEFAULTS = {f.name: f.default for f in fields(SyntheticSpec)}


def _date(value: str) -> datetime:
    try:
        return datetime.fromisoformat(value).replace(tzinfo=UTC)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a date like 2026-11-22") from None


class Command(BaseCommand):
    help = (
        "Fill a community with a synthetic, reproducible catalogue and interaction history "
        "(power-law creators and popularity, lognormal member activity, a share of AI-generated "
        "items). The same arguments always give the same rows; re-running adds nothing. See "
        "docs/importers.md."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--community", required=True, help="Slug; created if missing.")
        parser.add_argument("--name", help="Name of the community if it is created.")
        parser.add_argument("--members", type=int, default=DEFAULTS["members"])
        parser.add_argument("--items", type=int, default=DEFAULTS["items"])
        parser.add_argument("--creators", type=int, default=DEFAULTS["creators"])
        parser.add_argument("--interactions", type=int, default=DEFAULTS["interactions"])
        parser.add_argument("--seed", type=int, default=DEFAULTS["seed"])
        parser.add_argument(
            "--ai-share",
            type=float,
            default=DEFAULTS["ai_share"],
            help="Share of items that are AI-generated (0-1).",
        )
        parser.add_argument(
            "--end",
            type=_date,
            help="Date (UTC) the history ends; default today. Fix it to reproduce a run "
            "on another day.",
        )
        parser.add_argument("--batch-size", type=int, default=5_000)
        parser.add_argument("--no-progress", action="store_true", help="No progress bars.")

    def handle(self, *args: Any, **options: Any) -> None:
        end = options["end"]
        if isinstance(end, str):
            # call_command(end="2026-11-22") passes the string through without the parser's type.
            try:
                end = _date(end)
            except argparse.ArgumentTypeError as exc:
                raise CommandError(f"--end: {exc}") from exc
        end_option = {"end": end} if end is not None else {}
        try:
            spec = SyntheticSpec(
                members=options["members"],
                items=options["items"],
                creators=options["creators"],
                interactions=options["interactions"],
                seed=options["seed"],
                ai_share=options["ai_share"],
                **end_option,
            )
        except ValueError as exc:
            raise CommandError(f"--{str(exc).replace('_', '-')}") from exc
        if options["batch_size"] < 1:
            raise CommandError("--batch-size must be at least 1.")
        result = seed_demo(
            community_slug=options["community"],
            community_name=options["name"],
            spec=spec,
            batch_size=options["batch_size"],
            show_progress=not options["no_progress"],
        )
        verb = "created" if result.community_created else "existing"
        self.stdout.write(
            f"Community {result.community.slug!r} ({verb}), seed {spec.seed}, history ending "
            f"{spec.end:%Y-%m-%d}:"
        )
        self.stdout.write(f"  members:      {result.members}")
        self.stdout.write(f"  items:        {result.items}")
        self.stdout.write(f"  creators:     {result.creators}")
        self.stdout.write(f"  credits:      {result.credits}")
        self.stdout.write(f"  interactions: {result.interactions}")
        self.stdout.write(self.style.SUCCESS(f"Done in {result.elapsed_s:.1f} s."))
