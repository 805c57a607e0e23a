"""Recompute the audit hash chains and report the first bad entry of each broken chain."""

from __future__ import annotations

import time
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from governance import audit_chain
from governance.models import Community
from governance.selectors import audit_locate, audit_stream


class Command(BaseCommand):
    help = "Verify the tamper-evident audit log (all communities, or one with --community)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--community", metavar="SLUG", help="verify this community only")

    def handle(self, *args: Any, **options: Any) -> None:
        community = None
        if options["community"]:
            community = Community.objects.filter(slug=options["community"]).first()
            if community is None:
                raise CommandError(f"no community with slug {options['community']!r}")
        communities = Community.objects.all() if community is None else [community]
        slugs = {c.pk: c.slug for c in communities}
        started = time.perf_counter()
        chains = list(
            audit_chain.verify_chains(audit_stream(community=community), locate=audit_locate)
        )
        elapsed = time.perf_counter() - started
        failures = []
        # Every community made by community_create starts its chain, so an empty chain means the
        # community predates the audit log, or someone removed the whole chain.
        for pk in sorted(slugs.keys() - {chain.community for chain in chains}):
            self.stderr.write(
                f"warning {slugs[pk]}: no audit entries (created before the audit log existed, "
                "or its whole chain was removed)"
            )
        for chain in chains:
            slug = slugs.get(chain.community, f"#{chain.community}")
            if chain.problem is not None:
                failures.append(f"{slug}: first bad entry is {chain.problem}")
                self.stderr.write(f"FAILED {slug} at {chain.problem}")
            else:
                self.stdout.write(
                    f"ok {slug}: {chain.count} entries, head seq {chain.head_seq} {chain.head_hash}"
                )
        if failures:
            raise CommandError(
                f"audit chain verification failed for {len(failures)} of {len(chains)} "
                f"communities:\n" + "\n".join(failures)
            )
        entries = sum(chain.count for chain in chains)
        self.stdout.write(
            f"OK: {entries} entries in {len(chains)} chains verified in {elapsed:.2f} s"
        )
