"""A policy proposal's impact before the vote: measured on the community's data by a worker,
both sides, members' training refusals respected, one computation per comparison."""

from __future__ import annotations

import subprocess
import time
from datetime import timedelta
from typing import Any

import pytest
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from feeds.insights.impact import (
    community_interaction_data,
    policy_impact_compute,
    policy_impact_request,
)
from feeds.models import MemberChoices, PolicyImpact
from governance.models import Proposal
from governance.selectors import policy_of, policy_version_current
from governance.services import proposal_create
from ranking.policy import policy_validate
from tests.factories import make_community, small_catalogue
from tests.governance.proposal_helpers import changed_policy

pytestmark = pytest.mark.django_db


def _community_with_proposal(
    slug: str, title: str, ranking: dict[str, Any]
) -> tuple[Any, dict[str, Any], Proposal]:
    """A small community whose first member, a moderator, proposes ``ranking`` at 8 factors."""
    community = make_community(slug)
    data = small_catalogue(community, members=16, items=40)
    author = data["members"][0]
    author.role = "moderator"
    author.save(update_fields=["role"])
    proposal = proposal_create(
        community=community,
        author=author,
        title=title,
        rationale="",
        document=changed_policy(community, ranking=ranking, model={"factors": 8}),
    )
    return community, data, proposal


@pytest.fixture
def garden() -> tuple[Any, dict[str, Any], Proposal]:
    return _community_with_proposal("garden", "Cap creators", {"creator_cap": 1})


def _policies(community: Any, proposal: Proposal) -> tuple[Any, Any]:
    return policy_of(policy_version_current(community=community)), policy_validate(
        proposal.document
    )


def test_the_data_leaves_out_members_who_refused_training(garden) -> None:  # type: ignore[no-untyped-def]
    community, data, _ = garden
    refusing = data["members"][1]
    MemberChoices.objects.create(member=refusing, train_on_my_data=False)
    arrays, facts = community_interaction_data(community=community)
    assert refusing.pk not in set(arrays.member_ids.tolist())
    assert facts["members"] == 15 and facts["members_refusing_training"] == 1
    assert facts["interactions"] == 75 and facts["items"] == 40 and not facts["sampled"]
    assert arrays.n_creators == 5 and (arrays.item_creator >= 0).all()
    assert list(arrays.timestamps) == sorted(arrays.timestamps)


def test_a_large_community_is_sampled_reproducibly(garden) -> None:  # type: ignore[no-untyped-def]
    community, _, _ = garden
    first, facts = community_interaction_data(community=community, max_members=6)
    second, _ = community_interaction_data(community=community, max_members=6)
    assert facts["sampled"] and facts["members"] == 6
    assert first.member_ids.tolist() == second.member_ids.tolist()


def test_the_comparison_reports_both_sides(garden) -> None:  # type: ignore[no-untyped-def]
    community, _, proposal = garden
    a, b = _policies(community, proposal)
    impact = policy_impact_request(community=community, a=a, b=b)
    assert impact.status == PolicyImpact.Status.COMPUTING
    done = policy_impact_compute(impact_id=impact.pk)
    assert done.status == PolicyImpact.Status.DONE, done.error
    report = done.report
    # Feeds as long as served, measured over the whole feed and in the top 10 apps show.
    assert {"ndcg@50", "novelty_bits"} <= set(report["a"]["consumers"])
    assert {"ndcg@10", "novelty_bits"} <= set(report["a"]["at_depth"]["consumers"])
    assert {"creator_gini", "long_tail_creator_share", "ai_generated_share"} <= set(
        report["b"]["producers"]
    )
    assert {"long_tail_creator_share", "long_tail_creator_share_weighted"} <= set(
        report["b"]["at_depth"]["producers"]
    )
    assert report["deltas"]["at_depth"]["producers"]["creator_gini_weighted"] == pytest.approx(
        report["b"]["at_depth"]["producers"]["creator_gini_weighted"]
        - report["a"]["at_depth"]["producers"]["creator_gini_weighted"]
    )
    assert 0 <= report["churn_at_depth"]["mean"] <= 1
    assert report["b"]["params"]["policy_sha256"] == b.sha256()
    assert report["data"]["members"] == 16
    assert (report["data"]["k"], report["data"]["depth"]) == (50, 10)
    # Computing again changes nothing (a redelivered task).
    assert policy_impact_compute(impact_id=impact.pk).report == report


def test_one_computation_per_comparison_reused_until_it_is_old(garden, settings) -> None:  # type: ignore[no-untyped-def]
    community, _, proposal = garden
    a, b = _policies(community, proposal)
    first = policy_impact_request(community=community, a=a, b=b)
    assert policy_impact_request(community=community, a=a, b=b).pk == first.pk  # computing
    policy_impact_compute(impact_id=first.pk)
    assert policy_impact_request(community=community, a=a, b=b).pk == first.pk  # fresh
    PolicyImpact.objects.filter(pk=first.pk).update(
        finished_at=timezone.now() - timedelta(seconds=settings.COMMONFEED_IMPACT_MAX_AGE_SECONDS)
    )
    assert policy_impact_request(community=community, a=a, b=b).pk != first.pk  # stale


def test_a_community_without_interactions_gets_a_clear_failure(db: None) -> None:
    community = make_community("empty")
    a = policy_of(policy_version_current(community=community))
    b = policy_validate(changed_policy(community, model={"factors": 8}))
    impact = policy_impact_request(community=community, a=a, b=b)
    failed = policy_impact_compute(impact_id=impact.pk)
    assert failed.status == PolicyImpact.Status.FAILED and "no interactions" in failed.error


def test_the_page_shows_progress_then_the_result(garden) -> None:  # type: ignore[no-untyped-def]
    community, _, proposal = garden
    url = reverse("proposal-impact", args=[community.slug, proposal.pk])
    detail = Client().get(reverse("governance:proposal", args=[community.slug, proposal.pk]))
    assert url in detail.content.decode()  # the proposal page loads it (htmx) or links it
    waiting = Client().get(url, headers={"HX-Request": "true"}).content.decode()
    assert "Measuring this change" in waiting and 'hx-trigger="load delay:2s"' in waiting
    policy_impact_compute(impact_id=PolicyImpact.objects.get().pk)
    page = Client().get(url)
    html = page.content.decode()
    assert page.status_code == 200 and "<html" in html.lower()
    assert "Long-tail creators" in html and "Creator exposure Gini" in html and "nDCG@10" in html
    assert "For creators (producers), in the top 10, where members look" in html
    assert "over the whole feed of 50" in html and "nDCG@50" in html
    assert "Long-tail creators&#x27; share by position" in html
    assert "hx-trigger" not in html.split('id="impact-result"')[1].split(">")[0]


def test_a_report_measured_before_the_depth_still_shows(garden) -> None:  # type: ignore[no-untyped-def]
    community, _, proposal = garden
    a, b = _policies(community, proposal)
    side = {"consumers": {"ndcg@10": 0.25}, "producers": {"creator_gini": 0.5}}
    PolicyImpact.objects.create(
        community=community,
        policy_a_sha256=a.sha256(),
        policy_b_sha256=b.sha256(),
        policy_a=a.model_dump(mode="json"),
        policy_b=b.model_dump(mode="json"),
        status=PolicyImpact.Status.DONE,
        finished_at=timezone.now(),
        report={
            "a": side,
            "b": side,
            "deltas": {"consumers": {"ndcg@10": 0.0}, "producers": {"creator_gini": 0.0}},
            "churn": {"mean": 0.0, "n_members": 16},
            "data": {"members": 16, "k": 10, "split": "random", "seconds": 1.0},
        },
    )
    html = Client().get(reverse("proposal-impact", args=[community.slug, proposal.pk])).content
    assert b"nDCG@10" in html and b"0.2500" in html and b"For members (consumers)</h3>" in html


def test_charter_proposals_and_unknown_ones(garden) -> None:  # type: ignore[no-untyped-def]
    community, data, _ = garden
    charter = proposal_create(
        community=community,
        author=data["members"][0],
        title="Quorum",
        rationale="",
        document={"quorum": 0.3},
        kind="charter",
    )
    html = Client().get(reverse("proposal-impact", args=[community.slug, charter.pk])).content
    assert b"does not change how feeds are ranked" in html
    assert PolicyImpact.objects.count() == 0
    assert (
        Client().get(reverse("proposal-impact", args=[community.slug, 999999])).status_code == 404
    )


@pytest.mark.integration
def test_a_worker_measures_the_impact_for_the_page(
    transactional_db: None, celery_worker: subprocess.Popen[bytes]
) -> None:
    community, _, proposal = _community_with_proposal("orchard", "Quota", {"long_tail_quota": 0.3})
    url = reverse("proposal-impact", args=[community.slug, proposal.pk])
    html = Client().get(url).content.decode()
    deadline = time.monotonic() + 60
    while "Measuring this change" in html and time.monotonic() < deadline:
        time.sleep(0.5)
        html = Client().get(url).content.decode()
    assert "Long-tail creators" in html, html
    assert PolicyImpact.objects.get().status == PolicyImpact.Status.DONE


def test_the_preview_says_how_alike_feeds_become_and_which_relations_they_keep(garden) -> None:  # type: ignore[no-untyped-def]
    community, _, proposal = garden
    a, b = _policies(community, proposal)
    report = policy_impact_compute(
        impact_id=policy_impact_request(community=community, a=a, b=b).pk
    ).report
    for cut in ("at_depth", "whole_feed"):
        consumers = report["b"][cut]["consumers"]
        assert 0 <= consumers["convergence"] <= 1
        assert consumers["relation_kept_share"] + consumers["discovery_share"] == pytest.approx(1)
        assert 0 <= report["b"][cut]["producers"]["audience_kept_mean"] <= 1
        assert report["deltas"][cut]["consumers"]["convergence"] == pytest.approx(
            consumers["convergence"] - report["a"][cut]["consumers"]["convergence"]
        )
    html = Client().get(reverse("proposal-impact", args=[community.slug, proposal.pk]))
    text = html.content.decode()
    assert "Convergence" in text and "Relation kept by position" in text and "Discovery" in text
    assert "Audience kept (mean)" in text and "Human-made share" in text
