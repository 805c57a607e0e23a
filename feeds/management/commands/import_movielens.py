from __future__ import annotations

from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from feeds.importers import ImportFileError
from feeds.importers.movielens import movielens_import


class Command(BaseCommand):
    help = (
        "Import a MovieLens dataset in RecBole's atomic-file layout (e.g. ml-100k/) into a "
        "community: users become members, films items, directors creators, ratings "
        "interactions. All files are validated before anything is written; re-running is "
        "harmless. See docs/importers.md."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("directory", type=Path, help="The dataset folder, e.g. ml-100k/.")
        parser.add_argument("--community", required=True, help="Slug of the target community.")
        parser.add_argument(
            "--name", help="Name of the community if it is created (default: 'MovieLens (DIR)')."
        )
        parser.add_argument(
            "--dataset",
            help="File name prefix (default: the folder's name, so ml-100k/ml-100k.inter).",
        )
        parser.add_argument("--batch-size", type=int, default=5_000)
        parser.add_argument("--no-progress", action="store_true", help="No progress bars.")

    def handle(self, *args: Any, **options: Any) -> None:
        directory: Path = options["directory"]
        if not directory.is_dir():
            raise CommandError(f"{directory} is not a directory.")
        if options["batch_size"] < 1:
            raise CommandError("--batch-size must be at least 1.")
        try:
            result = movielens_import(
                directory=directory,
                community_slug=options["community"],
                community_name=options["name"],
                dataset=options["dataset"],
                batch_size=options["batch_size"],
                show_progress=not options["no_progress"],
            )
        except ImportFileError as exc:
            raise CommandError(f"Nothing was imported. {exc}") from exc
        for warning in result.warnings:
            self.stderr.write(self.style.WARNING(f"warning: {warning}"))
        community = result.community
        verb = "created" if result.community_created else "existing"
        self.stdout.write(f"Community {community.slug!r} ({verb}):")
        self.stdout.write(f"  members:      {result.members}")
        self.stdout.write(f"  items:        {result.items}")
        self.stdout.write(
            f"  creators:     {result.creators}; {result.directors:,} directors"
            + (" + unattributed" if result.films_without_director else "")
        )
        self.stdout.write(
            f"  credits:      {result.credits}; films with a director "
            f"{result.films_with_director:,}, with several {result.films_with_several_directors:,}"
            f", with none {result.films_without_director:,}"
        )
        self.stdout.write(f"  interactions: {result.interactions}")
        self.stdout.write(self.style.SUCCESS(f"Done in {result.elapsed_s:.1f} s."))
