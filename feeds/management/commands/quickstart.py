from __future__ import annotations

import secrets
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db.models import Count

from feeds.credentials.services import app_credential_create, app_credential_revoke
from feeds.ingest.services import creators_upsert
from feeds.models import AppCredential, Creator
from feeds.worker import worker_start, worker_stop
from governance.charter import Charter
from governance.models import Community, Membership
from governance.services import community_create, membership_set_role


def _demo_logins(community: Community) -> list[tuple[str, str, str]]:
    """Sign-in accounts for four demo members (a moderator, two voters, one of them also a
    creator, and a community admin who manages the members page), new passwords."""
    people = []
    user_model = get_user_model()
    members = list(community.memberships.order_by("id")[:4])
    for member, (name, role) in zip(
        members,
        [
            ("moderator", Membership.Role.MODERATOR),
            ("alice", Membership.Role.MEMBER),
            ("bob", Membership.Role.MEMBER),
            ("carol", Membership.Role.ADMIN),
        ],
        strict=False,
    ):
        password = secrets.token_urlsafe(9)
        user, _ = user_model.objects.get_or_create(username=name)
        user.set_password(password)
        user.save()
        Membership.objects.filter(community=community, user=user).exclude(pk=member.pk).update(
            user=None
        )
        Membership.objects.filter(pk=member.pk).update(user=user)
        if member.role != role:
            membership_set_role(membership=member, role=role, actor=None, actor_label="quickstart")
        about = f"{role}, member {member.external_id}"
        if name == "bob":
            creator = _demo_creator(community)
            if creator is not None:
                creators_upsert(
                    community=community,
                    rows=[
                        {
                            "id": creator.external_id,
                            "name": creator.name,
                            "member": member.external_id,
                        }
                    ],
                )
                about += (
                    f"; creator {creator.external_id}, dashboard "
                    f"/c/{community.slug}/creators/{creator.external_id}/"
                )
        people.append((name, password, about))
    return people


def _demo_creator(community: Community) -> Creator | None:
    """The creator bob speaks for: one from the middle of the pack by items credited, so the
    dashboard has both exposure and reasons why it is not more."""
    creators = list(
        Creator.objects.filter(community=community)
        .annotate(credited=Count("credits"))
        .filter(credited__gt=0)
        .order_by("-credited", "external_id")
    )
    return creators[len(creators) // 2] if creators else None


class Command(BaseCommand):
    help = (
        "Set up a demo on this machine and serve it: migrate, seed a demo community, start a "
        "worker, compute the feeds through it, create an admin login, run the web server. "
        "Ctrl-C stops everything it started."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--community", default="demo")
        parser.add_argument("--members", type=int, default=1_000)
        parser.add_argument("--items", type=int, default=3_000)
        parser.add_argument("--creators", type=int, default=300)
        parser.add_argument("--interactions", type=int, default=60_000)
        parser.add_argument("--addrport", default="127.0.0.1:8000")
        parser.add_argument(
            "--no-serve", action="store_true", help="Stop after computing the feeds."
        )

    def handle(self, *args: Any, **options: Any) -> None:
        slug = options["community"]
        call_command("migrate", interactive=False, verbosity=0)
        self.stdout.write("Database migrated.")
        if not Community.objects.filter(slug=slug).exists():
            # A one-hour vote, so a proposal can run its whole course during a demo.
            community_create(
                slug=slug,
                name=slug.replace("-", " ").title(),
                description="A synthetic community created by quickstart.",
                charter=Charter(voting_period_hours=1),
            )
            call_command(
                "seed_demo",
                community=slug,
                members=options["members"],
                items=options["items"],
                creators=options["creators"],
                interactions=options["interactions"],
                stdout=self.stdout,
                stderr=self.stderr,
            )
        community = Community.objects.get(slug=slug)

        log_path = settings.VAR_DIR / "worker.log"
        people = _demo_logins(community)
        worker = worker_start(log_path=log_path, beat=True)
        self.stdout.write(f"Worker started (pid {worker.pid}, log {log_path}).")
        try:
            call_command("recompute_feeds", slug, wait=True, timeout=1800, stdout=self.stdout)
            if worker.poll() is not None:
                raise CommandError(f"The worker exited early; see {log_path}.")
            password = secrets.token_urlsafe(12)
            user_model = get_user_model()
            admin, _ = user_model.objects.get_or_create(
                username="admin", defaults={"is_staff": True, "is_superuser": True}
            )
            admin.is_staff = admin.is_superuser = True
            admin.set_password(password)
            admin.save()
            for old in AppCredential.objects.filter(
                community=community, name="quickstart", revoked_at__isnull=True
            ):
                app_credential_revoke(credential=old)
            _, token = app_credential_create(
                community=community, name="quickstart", scopes=["feeds:read"]
            )
            member = community.memberships.order_by("id").first()
            base = f"http://{options['addrport']}"
            member_id = member.external_id if member else "MEMBER"
            self.stdout.write(
                self.style.SUCCESS("\nCommonfeed is ready.\n")
                + f"  Home:   {base}/\n"
                + f"  Admin:  {base}/admin/   user: admin   password: {password}\n"
                + f"  A feed: {base}/c/{slug}/members/{member_id}/feed/   (signed in: members see"
                + " their own, moderators and admins anyone's)\n"
                + f'  API:    curl -H "Authorization: Bearer {token}" '
                + f"{base}/api/v1/communities/{slug}/feeds/{member_id}/\n"
                + f"  Govern: {base}/c/{slug}/governance/   sign in at {base}/accounts/login/ as\n"
                + "".join(f"          {name} / {pw}  ({role})\n" for name, pw, role in people)
                + "Press Ctrl-C to stop the server and the worker.\n"
            )
            if not options["no_serve"]:
                call_command("runserver", options["addrport"], use_reloader=False)
        finally:
            worker_stop(worker)
            self.stdout.write("Worker stopped.")
