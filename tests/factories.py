"""Test data built through the same services the product uses, so invariants hold."""

from __future__ import annotations

import itertools
import json
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import factory
from django.contrib.auth import get_user_model
from django.test import Client

from feeds.models import Creator, FeedRun, Interaction, Item, ItemCreator
from governance.models import Community, Membership
from governance.services import community_create

_counter = itertools.count(1)


def make_community(slug: str | None = None) -> Community:
    slug = slug or f"community-{next(_counter)}"
    return community_create(slug=slug, name=slug.title())


class MembershipFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Membership

    external_id = factory.Sequence(lambda n: f"member-{n}")


class CreatorFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Creator

    external_id = factory.Sequence(lambda n: f"creator-{n}")
    name = factory.Sequence(lambda n: f"Creator {n}")


class ItemFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Item
        skip_postgeneration_save = True

    external_id = factory.Sequence(lambda n: f"item-{n}")
    title = factory.Sequence(lambda n: f"Item {n}")
    provenance = Item.Provenance.HUMAN
    tags = factory.LazyFunction(lambda: ["demo"])

    @factory.post_generation
    def by(self, create: bool, extracted: list[Creator] | None, **kwargs: object) -> None:
        for position, creator in enumerate(extracted or []):
            ItemCreator.objects.create(item=self, creator=creator, position=position)


def interact(member: Membership, item: Item, *, kind: str = "like", weight: float = 1.0) -> None:
    Interaction.objects.create(
        community_id=member.community_id,
        member=member,
        item=item,
        kind=kind,
        weight=weight,
        occurred_at=datetime(2026, 1, 1, tzinfo=UTC) + timedelta(seconds=next(_counter)),
        idempotency_key=f"test-{next(_counter)}",
    )


def members_who_interacted(
    community: Community, items: list[Item], *, members: int = 20
) -> list[Membership]:
    """Members ``m0``, ``m1``, ... who each liked 8 of ``items`` (48 of them in the tests that
    use it), deterministic and overlapping, enough for ALS to train on."""
    rows = [MembershipFactory(community=community, external_id=f"m{j}") for j in range(members)]
    for m, member in enumerate(rows):
        for k in range(8):
            interact(member, items[(m * 5 + k * 3) % len(items)])
    return rows


def small_catalogue(community: Community, *, members: int = 12, items: int = 30) -> dict:
    """Members who each liked a few items, deterministic, enough for ALS to train on."""
    creators = [CreatorFactory(community=community) for _ in range(5)]
    item_rows = [
        ItemFactory(community=community, by=[creators[i % len(creators)]]) for i in range(items)
    ]
    member_rows = [MembershipFactory(community=community) for _ in range(members)]
    for m, member in enumerate(member_rows):
        for k in range(5):
            interact(member, item_rows[(m * 3 + k * 7) % items])
    return {"creators": creators, "items": item_rows, "members": member_rows}


def person_client(community: Community, username: str, role: str | None) -> Client:
    """A logged-in client (CSRF enforced) for a new user with ``role`` in the community; with
    ``role=None`` an outsider."""
    user = get_user_model().objects.create_user(username, password="a-long-password-1")
    if role is not None:
        MembershipFactory(community=community, user=user, role=role)
    client = Client(enforce_csrf_checks=True)
    client.force_login(user)
    return client


def app_call(
    client: Client, token: str, method: str, path: str, body: Any = None, **extra: Any
) -> Any:
    """``method`` (get, post, put, ...) on ``/api/v1/communities/<path>`` as an app: bearer
    ``token``, ``body`` sent as JSON."""
    return getattr(client, method)(
        f"/api/v1/communities/{path}",
        data=json.dumps(body) if body is not None else None,
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {token}",
        **extra,
    )


def run_computed(community: Community) -> FeedRun:
    """Request a feed run and compute it here; returns it finished.

    With committed data (``transaction=True`` tests) and a real worker running, the worker may
    claim the run first, and computing it here then skips it: wait for the worker to finish.
    """
    from feeds.runs.services import feed_run_execute, feed_run_request

    run = feed_run_execute(run_id=feed_run_request(community=community).pk)
    deadline = time.monotonic() + 60
    while run.status != FeedRun.Status.FINISHED and time.monotonic() < deadline:
        time.sleep(0.1)
        run.refresh_from_db()
    assert run.status == FeedRun.Status.FINISHED, run.error
    return run
