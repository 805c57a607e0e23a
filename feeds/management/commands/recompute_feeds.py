from __future__ import annotations

import time
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from feeds.models import FeedRun
from feeds.runs.services import feed_run_request
from governance.models import Community


class Command(BaseCommand):
    help = "Enqueue a recompute of a community's feeds under its current policy."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("slug", help="The community's slug.")
        parser.add_argument(
            "--wait", action="store_true", help="Block until a worker has finished the run."
        )
        parser.add_argument(
            "--timeout", type=float, default=3600.0, help="Seconds to wait with --wait."
        )

    def handle(self, *args: Any, **options: Any) -> None:
        community = Community.objects.filter(slug=options["slug"]).first()
        if community is None:
            raise CommandError(f"No community with slug {options['slug']!r}.")
        run = feed_run_request(community=community)
        self.stdout.write(
            f"Queued feed run {run.pk} for {community.slug} (policy {run.policy_sha256[:12]})."
        )
        if not options["wait"]:
            return
        started = time.monotonic()
        hinted = False
        while True:
            run.refresh_from_db()
            if run.status == FeedRun.Status.FINISHED:
                stats = run.stats
                self.stdout.write(
                    self.style.SUCCESS(
                        f"Feed run {run.pk} finished in {time.monotonic() - started:.1f}s: "
                        f"{stats.get('members')} members, {stats.get('n_interactions')} "
                        "interactions."
                    )
                )
                return
            if run.status == FeedRun.Status.FAILED:
                raise CommandError(f"Feed run {run.pk} failed: {run.error}")
            elapsed = time.monotonic() - started
            if elapsed > options["timeout"]:
                raise CommandError(f"Gave up waiting for feed run {run.pk} after {elapsed:.0f}s.")
            if not hinted and run.status == FeedRun.Status.QUEUED and elapsed > 10:
                self.stderr.write(
                    "Still queued: is a worker running? Start one with `celery -A config worker`."
                )
                hinted = True
            time.sleep(0.25)
