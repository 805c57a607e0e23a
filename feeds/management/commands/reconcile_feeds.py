from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from feeds.runs.services import feed_runs_reconcile


class Command(BaseCommand):
    help = (
        "Re-send feed runs whose message was lost or whose worker died, and request a run for "
        "every community whose current policy has none. Beat runs this every minute."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--queue", help="Send to this queue instead of the default one.")

    def handle(self, *args: Any, **options: Any) -> None:
        result = feed_runs_reconcile(queue=options["queue"])
        self.stdout.write(
            f"Re-sent {len(result.resent)} run(s) {result.resent}; "
            f"requested {len(result.requested)} new run(s) {result.requested}."
        )
