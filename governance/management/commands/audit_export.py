"""Write the audit log as JSON Lines that anyone can verify (docs/audit.md)."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from governance import audit_chain
from governance.models import Community
from governance.selectors import audit_stream


class Command(BaseCommand):
    help = "Export the audit log (all communities, or one) as JSON Lines, one entry per line."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--community", metavar="SLUG", help="export this community only")
        parser.add_argument("--output", metavar="FILE", help="write here instead of stdout")

    def handle(self, *args: Any, **options: Any) -> None:
        community = None
        if options["community"]:
            community = Community.objects.filter(slug=options["community"]).first()
            if community is None:
                raise CommandError(f"no community with slug {options['community']!r}")
        # A file of our own, or the command's stdout (so call_command(stdout=...) captures it).
        out: Any = (
            open(options["output"], "w", encoding="utf-8")  # noqa: SIM115
            if options["output"]
            else self.stdout
        )
        count = 0
        try:
            for entry in audit_stream(community=community):
                out.write(audit_chain.canonical_json(audit_chain.export_line(entry)) + "\n")
                count += 1
        finally:
            if out is not self.stdout:
                out.close()
        if options["output"]:
            self.stdout.write(f"wrote {count} entries to {options['output']}")
