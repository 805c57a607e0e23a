"""The preview is what ratification delivers: the impact preview measures the feeds a policy
would serve (the run's pipeline on the run's inputs) with the run metrics' definitions, so the
first run after ratification measures what the preview showed."""

from __future__ import annotations

import math
from datetime import timedelta
from typing import Any

import pytest
from django.test import Client
from django.urls import reverse

from feeds.insights.impact import policy_impact_compute, policy_impact_request
from feeds.insights.run_metrics import run_metrics
from governance.models import Proposal
from governance.selectors import policy_of, policy_version_current
from governance.services import (
    ballot_cast,
    proposal_close,
    proposal_create,
    proposal_open,
    proposal_ratify,
)
from ranking.policy import policy_validate
from tests.factories import make_community, run_computed, small_catalogue
from tests.governance.proposal_helpers import changed_policy

pytestmark = pytest.mark.django_db

TOLERANCE = 1e-6
"""The same data and the same pipeline give the same feeds; what differs is float rounding of
the model fitted twice (BLAS may sum in another order)."""


def _numbers(metrics: dict[str, Any]) -> dict[str, float]:
    """Every figure of the two cuts, flattened: ``at_depth.producers.long_tail_creator_share``."""
    return {
        f"{cut}.{side}.{name}": value
        for cut in ("at_depth", "whole_feed")
        for side in ("consumers", "producers")
        for name, value in metrics[cut][side].items()
        if isinstance(value, int | float)
    }


def _assert_same(preview: dict[str, Any], run: dict[str, Any]) -> None:
    expected, measured = _numbers(preview), _numbers(run)
    assert expected.keys() == measured.keys()
    assert len(expected) > 20
    for name, value in expected.items():
        assert math.isclose(measured[name], value, abs_tol=TOLERANCE), (name, value, measured[name])


def test_the_first_run_after_ratification_measures_what_the_preview_showed(client: Client) -> None:
    community = make_community("orchard")
    data = small_catalogue(community, members=16, items=40)
    author = data["members"][0]
    author.role = "moderator"
    author.save(update_fields=["role"])
    before = run_computed(community)
    proposal = proposal_create(
        community=community,
        author=author,
        title="Room for the long tail",
        rationale="",
        document=changed_policy(
            community,
            ranking={"long_tail_quota": 0.3, "creator_cap": 2},
            model={"factors": 8},
        ),
    )
    a = policy_of(policy_version_current(community=community))
    b = policy_validate(proposal.document)

    impact = policy_impact_compute(
        impact_id=policy_impact_request(community=community, a=a, b=b).pk
    )

    assert impact.status == impact.Status.DONE, impact.error
    served = impact.report["served"]
    assert served["a"]["depth"] == served["b"]["depth"] == 10
    # A is what is served now: the run under A measures the same.
    _assert_same(served["a"], run_metrics(before))
    # The preview promised B something else at the first page.
    share = "long_tail_creator_share_weighted"
    assert served["b"]["at_depth"]["producers"][share] > served["a"]["at_depth"]["producers"][share]
    page = client.get(reverse("proposal-impact", args=["orchard", proposal.pk]))
    assert page.status_code == 200
    html = page.content.decode()
    assert "What members would be served" in html
    assert "For creators, in the top 10 as served" in html
    assert f"{served['b']['at_depth']['producers'][share]:.4f}" in html

    proposal_open(proposal=proposal, actor=author)
    for member in data["members"]:
        ballot_cast(proposal=proposal, member=member, choice="yes")
    proposal.refresh_from_db()
    proposal_close(proposal=proposal, now=proposal.closes_at + timedelta(seconds=1))
    ratified = proposal_ratify(proposal=Proposal.objects.get(pk=proposal.pk))
    assert ratified.state == Proposal.State.RATIFIED
    assert policy_of(policy_version_current(community=community)).sha256() == b.sha256()

    after = run_computed(community)

    assert after.pk != before.pk
    _assert_same(served["b"], run_metrics(after))
