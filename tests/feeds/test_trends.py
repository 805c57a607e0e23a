"""The trends page: each measure across a community's finished runs, for everyone, as an SVG
chart and a table, with nothing about one member."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from feeds.insights import run_metrics
from feeds.models import FeedRun, Interaction, MemberFeed
from governance.models import Community
from governance.selectors import policy_version_current
from tests.factories import (
    CreatorFactory,
    ItemFactory,
    MembershipFactory,
    interact,
    make_community,
    person_client,
)

pytestmark = pytest.mark.django_db

T0 = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)


def _run(
    community: Community,
    *,
    day: int,
    metrics: dict[str, Any] | None,
    status: str = FeedRun.Status.FINISHED,
) -> FeedRun:
    version = policy_version_current(community=community)
    return FeedRun.objects.create(
        community=community,
        policy_version=version,
        policy_sha256=version.sha256,
        status=status,
        finished_at=T0 + timedelta(days=day),
        metrics=metrics,
    )


def _metrics(version: int = 3, **figures: float) -> dict[str, Any]:
    """Stored run metrics whose at_depth figures are ``figures`` (consumer keys by name)."""
    consumers = {"convergence", "relation_kept_share_weighted", "discovery_share_weighted"}
    return {
        "status": "done",
        "version": version,
        "depth": 10,
        "at_depth": {
            "consumers": {k: v for k, v in figures.items() if k in consumers},
            "producers": {k: v for k, v in figures.items() if k not in consumers},
        },
    }


@pytest.fixture
def meadow() -> Community:
    community = make_community("meadow")
    _run(community, day=0, metrics=_metrics(2, long_tail_creator_share_weighted=0.111))
    _run(
        community,
        day=1,
        metrics=_metrics(
            human_share_weighted=0.812,
            ai_generated_share_weighted=0.043,
            long_tail_creator_share_weighted=0.205,
            new_creator_share_weighted=0.067,
            convergence=0.123,
            relation_kept_share_weighted=0.640,
            discovery_share_weighted=0.360,
            audience_kept_mean=0.471,
            audience_kept_median=0.5,
        ),
    )
    _run(community, day=2, metrics=_metrics(convergence=0.456, audience_kept_mean=0.333))
    _run(community, day=3, metrics={"status": "failed", "error": "boom"})
    _run(community, day=4, metrics=None, status=FeedRun.Status.FAILED)
    _run(make_community("elsewhere"), day=1, metrics=_metrics(convergence=0.999))
    return community


def _section(html: str, slug: str) -> str:
    return html.split(f'<section class="card" id="{slug}">')[1].split("</section>")[0]


def test_anyone_sees_one_chart_per_measure_with_the_runs_figures(
    meadow: Community, django_assert_max_num_queries: Any
) -> None:
    url = reverse("feed-trends", args=[meadow.slug])
    with django_assert_max_num_queries(3):
        response = Client().get(url)  # not signed in: public, like the audit log
    assert response.status_code == 200
    html = response.content.decode()
    assert html.count('<svg xmlns="http://www.w3.org/2000/svg"') == 6
    assert html.count('role="img"') == 6
    for slug, title in [
        ("provenance", "Human-made and AI-generated items"),
        ("long-tail", "Long-tail creators"),
        ("new-creators", "New creators"),
        ("convergence", "Convergence"),
        ("relation", "Relation kept and discovery"),
        ("audience", "Creators&#x27; earlier audience still reached"),
    ]:
        section = _section(html, slug)
        assert f'<title id="trend-{slug}-title">{title}</title>' in section
        assert "<table>" in section
    convergence = _section(html, "convergence")
    assert "<td>0.123</td>" in convergence and "<td>0.456</td>" in convergence
    assert "Convergence: from 0.123 to 0.456 over 2 runs." in convergence  # the SVG's desc
    # The version-2 run measured the long tail but not convergence.
    assert "<td>0.111</td>" in _section(html, "long-tail") and "0.111" not in convergence
    provenance = _section(html, "provenance")
    assert "<td>0.812</td><td>0.043</td>" in provenance
    relation = _section(html, "relation")
    assert "<td>0.640</td><td>0.360</td>" in relation
    # A run without the median shows a dash in its column; the chart skips it.
    assert "<td>0.333</td><td>\u2013</td>" in _section(html, "audience")
    # Failed runs and other communities' runs are not shown.
    assert "0.999" not in html and "boom" not in html
    assert "over the last 3 measured runs" in html


def test_the_page_shows_no_member_s_identity(meadow: Community) -> None:
    for name in ("hidden-member-1", "hidden-member-2"):
        MembershipFactory(community=meadow, external_id=name)
    CreatorFactory(community=meadow, name="Hidden Creator")
    client = person_client(meadow, "viewer", "member")
    html = client.get(reverse("feed-trends", args=[meadow.slug])).content.decode()
    assert "hidden-member" not in html and "Hidden Creator" not in html
    assert reverse("member-settings", args=[meadow.slug]) in html  # the member's own nav


def test_a_community_without_measured_runs_gets_empty_charts_and_unknown_ones_404() -> None:
    community = make_community("fallow")
    html = Client().get(reverse("feed-trends", args=[community.slug])).content.decode()
    assert "No feed run has been measured yet." in html
    assert html.count("No figures yet.") == 6
    assert Client().get(reverse("feed-trends", args=["nowhere"])).status_code == 404


def test_the_community_s_navigation_links_the_trends() -> None:
    community = make_community("linked")
    html = Client().get(reverse("governance:home", args=[community.slug])).content.decode()
    assert reverse("feed-trends", args=[community.slug]) in html


def test_a_measured_run_s_figures_reach_the_page() -> None:
    community = make_community("brook")
    c1, c2 = (CreatorFactory(community=community) for _ in range(2))
    a = ItemFactory(community=community, by=[c1])
    b = ItemFactory(community=community, by=[c2])
    m1, m2, m3 = (MembershipFactory(community=community) for _ in range(3))
    interact(m1, a)
    version = policy_version_current(community=community)
    run = FeedRun.objects.create(
        community=community,
        policy_version=version,
        policy_sha256=version.sha256,
        status=FeedRun.Status.FINISHED,
        watermark=Interaction.objects.get().pk,
        finished_at=timezone.now(),
        stats={"members": 3},
    )
    for member, items in ((m1, [a]), (m2, [a, b]), (m3, [b])):
        MemberFeed.objects.create(
            run=run, member=member, item_ids=[i.pk for i in items], scores=[1.0] * len(items)
        )
    assert run_metrics.feed_run_metrics_compute(run_id=run.pk)["status"] == "done"  # type: ignore[index]
    html = Client().get(reverse("feed-trends", args=[community.slug])).content.decode()
    # Pages {A}, {A, B}, {B}: pairs 1/2, 0, 1/2.
    assert "<td>0.333</td>" in _section(html, "convergence")
    # Only m1's A is by a creator they engaged with: 1 of 1 + (1 + 0.63) + 1 by position.
    kept = 1 / (3 + 1 / math.log2(3))
    assert f"<td>{kept:.3f}</td><td>{1 - kept:.3f}</td>" in _section(html, "relation")
    assert m1.external_id not in html
