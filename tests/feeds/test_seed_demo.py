"""seed_demo: a reproducible synthetic community with realistic skews, written idempotently."""

from __future__ import annotations

from datetime import UTC, datetime
from io import StringIO
from typing import Any

import numpy as np
import pytest
from django.core.management import CommandError, call_command
from django.db.models import Count, F

from feeds.importers.synthetic import SyntheticSpec, synthetic_generate
from feeds.models import Creator, Interaction, Item, ItemCreator
from governance.models import Community, Membership, PolicyVersion

END = datetime(2026, 11, 22, tzinfo=UTC)
SMALL = {"members": 150, "items": 400, "creators": 40, "interactions": 3_000}


def seed(slug: str, **options: Any) -> str:
    out = StringIO()
    call_command(
        "seed_demo",
        community=slug,
        no_progress=True,
        stdout=out,
        stderr=StringIO(),
        **{"end": END, **SMALL, **options},
    )
    return out.getvalue()


def snapshot(slug: str) -> dict[str, list[tuple[Any, ...]]]:
    """Everything seed_demo wrote to the community, without database ids."""
    community = Community.objects.get(slug=slug)
    return {
        "members": list(
            Membership.objects.filter(community=community)
            .order_by("external_id")
            .values_list("external_id", "display_name", "role")
        ),
        "creators": list(
            Creator.objects.filter(community=community)
            .order_by("external_id")
            .values_list("external_id", "name")
        ),
        "items": list(
            Item.objects.filter(community=community)
            .order_by("external_id")
            .values_list("external_id", "title", "tags", "provenance", "published_at")
        ),
        "credits": list(
            ItemCreator.objects.filter(item__community=community)
            .order_by("item__external_id", "position")
            .values_list("item__external_id", "creator__external_id", "position")
        ),
        "interactions": list(
            Interaction.objects.filter(community=community)
            .order_by("id")
            .values_list(
                "idempotency_key",
                "member__external_id",
                "item__external_id",
                "kind",
                "weight",
                "occurred_at",
            )
        ),
    }


def counts(slug: str) -> dict[str, int]:
    return {name: len(rows) for name, rows in snapshot(slug).items()}


@pytest.mark.django_db
def test_seed_demo_creates_the_community_with_its_default_policy_and_the_requested_sizes() -> None:
    out = seed("demo")

    community = Community.objects.get(slug="demo")
    assert PolicyVersion.objects.get(community=community).is_current
    sizes = counts("demo")
    assert {k: sizes[k] for k in ("members", "items", "creators", "interactions")} == SMALL
    assert "3,000 (3,000 created, 0 already present)" in out
    assert Membership.objects.filter(community=community, user__isnull=False).count() == 0
    assert Membership.objects.filter(external_id="m0", display_name="Member 0").exists()
    assert Item.objects.filter(external_id="i399").exists()
    assert Creator.objects.filter(external_id="c39").exists()


@pytest.mark.django_db
def test_the_same_seed_gives_the_same_rows() -> None:
    seed("first", seed=7)
    seed("second", seed=7)

    assert snapshot("first") == snapshot("second")


@pytest.mark.django_db
def test_a_different_seed_gives_different_rows() -> None:
    seed("first", seed=7)
    seed("second", seed=8)

    first, second = snapshot("first"), snapshot("second")
    assert first["items"] != second["items"]
    assert first["credits"] != second["credits"]
    assert [row[1:] for row in first["interactions"]] != [row[1:] for row in second["interactions"]]


@pytest.mark.django_db
def test_running_seed_demo_twice_with_the_same_arguments_changes_no_counts() -> None:
    seed("demo")
    before = snapshot("demo")

    out = seed("demo")

    assert snapshot("demo") == before
    assert "3,000 (0 created, 3,000 already present)" in out


@pytest.mark.django_db
def test_the_share_of_ai_generated_items_roughly_matches_the_request() -> None:
    seed("demo", items=4_000, interactions=0, ai_share=0.3)

    shares = {
        row["provenance"]: row["n"] / 4_000
        for row in Item.objects.values("provenance").annotate(n=Count("id"))
    }
    assert shares["ai_generated"] == pytest.approx(0.30, abs=0.03)
    assert shares["ai_assisted"] == pytest.approx(0.07, abs=0.02)
    assert shares["unknown"] == pytest.approx(0.035, abs=0.015)
    assert shares["human"] == pytest.approx(0.595, abs=0.03)


@pytest.mark.django_db
def test_a_few_creators_hold_most_items() -> None:
    seed("demo", items=2_000, creators=100, interactions=0)

    per_creator = sorted(
        ItemCreator.objects.filter(position=0)
        .values("creator")
        .annotate(n=Count("id"))
        .values_list("n", flat=True),
        reverse=True,
    )
    assert len(per_creator) == 100  # every creator has at least one item
    top_tenth = sum(per_creator[:10]) / sum(per_creator)
    assert top_tenth > 0.3


@pytest.mark.django_db
def test_a_few_items_get_most_interactions() -> None:
    seed("demo", items=1_000, interactions=10_000)

    per_item = sorted(
        Interaction.objects.values("item").annotate(n=Count("id")).values_list("n", flat=True),
        reverse=True,
    )
    assert sum(per_item[:100]) / 10_000 > 0.3


@pytest.mark.django_db
def test_interactions_happen_after_publication_and_arrive_in_the_order_they_happened() -> None:
    seed("demo")

    rows = Interaction.objects.order_by("id")
    assert not rows.filter(occurred_at__lte=F("item__published_at")).exists()
    assert not rows.filter(occurred_at__gte=END).exists()
    occurred = list(rows.values_list("occurred_at", flat=True))
    assert occurred == sorted(occurred)
    published = Item.objects.values_list("published_at", flat=True)
    assert min(published) >= datetime(2024, 11, 22, tzinfo=UTC)


@pytest.mark.django_db
def test_interactions_are_mostly_views_with_some_likes_saves_shares_and_skips() -> None:
    seed("demo")

    kinds = dict(
        Interaction.objects.values("kind").annotate(n=Count("id")).values_list("kind", "n")
    )
    assert set(kinds) == {"view", "like", "save", "share", "skip"}
    assert kinds["view"] > sum(kinds.values()) / 2
    weights = dict(Interaction.objects.values_list("kind", "weight").distinct())
    assert weights["view"] < weights["like"] < weights["save"] < weights["share"]
    assert weights["skip"] == 0.0


def test_the_generator_is_pure_and_depends_only_on_its_arguments() -> None:
    spec = SyntheticSpec(**SMALL, seed=3, end=END)

    (cat_a, int_a), (cat_b, int_b) = synthetic_generate(spec=spec), synthetic_generate(spec=spec)
    (_, int_c) = synthetic_generate(spec=SyntheticSpec(**SMALL, seed=4, end=END))

    assert np.array_equal(cat_a.primary_creator, cat_b.primary_creator)
    assert cat_a.tags == cat_b.tags
    assert np.array_equal(int_a.occurred, int_b.occurred)
    assert np.array_equal(int_a.member, int_b.member)
    assert not np.array_equal(int_a.member, int_c.member)


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"ai_share": 1.5}, "--ai-share must be between 0 and 1"),
        ({"members": 0}, "--members must be at least 1"),
        ({"end": "yesterday"}, "is not a date"),
    ],
)
def test_invalid_arguments_fail_with_a_clear_message_and_write_nothing(
    options: dict[str, Any], message: str
) -> None:
    with pytest.raises(CommandError, match=message):
        seed("demo", **options)

    assert not Community.objects.exists()


@pytest.mark.django_db
def test_on_postgresql_the_loaded_tables_are_analysed_for_the_planner() -> None:
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    if connection.vendor != "postgresql":
        pytest.skip("ANALYZE is PostgreSQL's; SQLite has nothing to refresh")
    with CaptureQueriesContext(connection) as queries:
        seed("analysed")
    analysed = [q["sql"] for q in queries.captured_queries if q["sql"].startswith("ANALYZE")]
    assert analysed == [
        f'ANALYZE "{model._meta.db_table}"'
        for model in (Membership, Creator, Item, ItemCreator, Interaction)
    ]
