"""Feed runs for moderators: "Recompute now" (page and API), the beat schedule, and each finished
run's two-sided metrics."""

from __future__ import annotations

import json
import math
import subprocess
import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from django.db import connection, connections
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from feeds.choices import services as choices
from feeds.insights import run_metrics
from feeds.models import FeedRun, Interaction, Item, MemberFeed
from feeds.runs import schedule
from governance.models import AuditEntry, Community, Membership
from governance.selectors import policy_version_current
from tests.factories import (
    CreatorFactory,
    ItemFactory,
    MembershipFactory,
    interact,
    make_community,
    person_client,
    small_catalogue,
)

pytestmark = pytest.mark.django_db


def _csrf(client: Client, community: Community) -> str:
    client.get(reverse("feed-runs", args=[community.slug]))
    if "csrftoken" not in client.cookies:
        client.cookies["csrftoken"] = "x" * 32  # the page is a 403 for this user
    return client.cookies["csrftoken"].value


@pytest.fixture
def sent(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Run ids whose recompute task was sent (no broker, no worker)."""
    from feeds import enqueue

    sent: list[int] = []
    monkeypatch.setattr(enqueue, "run_recompute", lambda **kw: sent.append(kw["run_id"]))
    return sent


def _finished_run(community: Community, *, ago: timedelta, members: int = 0) -> FeedRun:
    """A finished run trained on every interaction so far, requested ``ago``."""
    version = policy_version_current(community=community)
    watermark = max(Interaction.objects.filter(community=community).values_list("id", flat=True))
    run = FeedRun.objects.create(
        community=community,
        policy_version=version,
        policy_sha256=version.sha256,
        status=FeedRun.Status.FINISHED,
        watermark=watermark,
        finished_at=timezone.now(),
        stats={"members": members},
    )
    FeedRun.objects.filter(pk=run.pk).update(requested_at=timezone.now() - ago)
    run.refresh_from_db()
    return run


# --- On demand: the page ------------------------------------------------------------------------


@pytest.mark.parametrize("role", ["moderator", "admin"])
def test_a_moderator_queues_one_run_and_a_second_click_queues_nothing(
    role: str, sent: list[int], django_capture_on_commit_callbacks: Any
) -> None:
    community = make_community("alpha")
    client = person_client(community, "mod", role)
    url = reverse("feed-runs", args=[community.slug])
    csrf = _csrf(client, community)

    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(url, {"csrfmiddlewaretoken": csrf})

    assert response.status_code == 302 and response.url == url
    run = FeedRun.objects.get(community=community)
    assert run.status == FeedRun.Status.QUEUED
    assert sent == [run.pk]
    entry = AuditEntry.objects.get(community=community, action="feed_run.requested")
    assert entry.actor_label == "mod"
    assert json.loads(entry.payload_json) == {
        "run": run.pk,
        "policy_version": run.policy_version.number,
        "policy_sha256": run.policy_sha256,
        "trigger": "moderator",
    }
    page = client.get(url).content.decode()
    assert f"Queued run {run.pk}" in page
    assert f'id="run-{run.pk}"' in page and run.policy_sha256[:12] in page

    with django_capture_on_commit_callbacks(execute=True):
        again = client.post(url, {"csrfmiddlewaretoken": csrf}, follow=True)

    assert f"Run {run.pk} is already queued; no new run was queued." in again.content.decode()
    assert FeedRun.objects.filter(community=community).count() == 1
    assert sent == [run.pk]
    assert AuditEntry.objects.filter(action="feed_run.requested").count() == 1


def test_recompute_now_without_a_csrf_token_is_refused(sent: list[int]) -> None:
    community = make_community("alpha")
    client = person_client(community, "mod", "moderator")
    response = client.post(reverse("feed-runs", args=[community.slug]))
    assert response.status_code == 403
    assert not FeedRun.objects.exists()


@pytest.mark.parametrize("role", ["member", None])
def test_a_plain_member_or_an_outsider_gets_403_on_the_page_and_the_api(
    role: str | None, sent: list[int]
) -> None:
    community = make_community("alpha")
    client = person_client(community, "someone", role)
    csrf = _csrf(client, community)
    page = reverse("feed-runs", args=[community.slug])
    api = reverse("api-feed-runs", args=[community.slug])

    assert client.get(page).status_code == 403
    assert client.post(page, {"csrfmiddlewaretoken": csrf}).status_code == 403
    assert client.get(api).status_code == 403
    response = client.post(api, content_type="application/json", HTTP_X_CSRFTOKEN=csrf)
    assert response.status_code == 403
    assert "moderators and admins" in response.json()["detail"]
    assert not FeedRun.objects.exists() and sent == []


def test_an_unknown_community_is_404_and_anonymous_visitors_are_sent_to_sign_in() -> None:
    community = make_community("alpha")
    client = person_client(community, "mod", "moderator")
    assert client.get(reverse("feed-runs", args=["nope"])).status_code == 404
    assert client.get(reverse("api-feed-runs", args=["nope"])).status_code == 404
    response = Client().get(reverse("feed-runs", args=[community.slug]))
    assert response.status_code == 302 and "/login" in response.url
    assert Client().get(reverse("api-feed-runs", args=[community.slug])).status_code == 403


def test_the_nav_links_the_runs_page() -> None:
    community = make_community("alpha")
    client = person_client(community, "mod", "moderator")
    html = client.get(reverse("governance:home", args=[community.slug])).content.decode()
    assert reverse("feed-runs", args=[community.slug]) in html


# --- On demand: the API -------------------------------------------------------------------------


def test_the_api_queues_a_run_once_and_lists_runs_with_their_metrics(
    sent: list[int], django_capture_on_commit_callbacks: Any
) -> None:
    community = make_community("alpha")
    client = person_client(community, "mod", "moderator")
    csrf = _csrf(client, community)
    url = reverse("api-feed-runs", args=[community.slug])

    with django_capture_on_commit_callbacks(execute=True):
        first = client.post(url, content_type="application/json", HTTP_X_CSRFTOKEN=csrf)
        second = client.post(url, content_type="application/json", HTTP_X_CSRFTOKEN=csrf)

    assert first.status_code == 201 and first.json()["created"] is True
    assert second.status_code == 200 and second.json()["created"] is False
    run = FeedRun.objects.get(community=community)
    assert first.json()["run"]["id"] == second.json()["run"]["id"] == run.pk
    assert sent == [run.pk]
    FeedRun.objects.filter(pk=run.pk).update(
        status=FeedRun.Status.FINISHED,
        watermark=7,
        stats={"members": 3},
        metrics={"status": "done", "consumers": {"novelty_bits": 1.5}, "producers": {}},
    )
    listed = client.get(url).json()
    assert [r["id"] for r in listed] == [run.pk]
    assert listed[0]["status"] == "finished"
    assert listed[0]["policy_version"] == run.policy_version.number
    assert listed[0]["members"] == 3 and listed[0]["watermark"] == 7
    assert listed[0]["metrics"]["consumers"] == {"novelty_bits": 1.5}
    assert client.post(url, content_type="application/json").status_code == 403  # no CSRF


# --- On a schedule ------------------------------------------------------------------------------


def test_the_schedule_requests_a_run_only_when_data_changed_and_the_interval_passed(
    settings: Any, sent: list[int], django_capture_on_commit_callbacks: Any
) -> None:
    settings.COMMONFEED_RECOMPUTE_INTERVAL_SECONDS = 3600
    community = make_community("alpha")
    data = small_catalogue(community, members=3, items=6)
    run = _finished_run(community, ago=timedelta(hours=2))

    assert schedule.feed_runs_schedule() == []  # nothing changed since the run

    interact(data["members"][0], data["items"][5])
    FeedRun.objects.filter(pk=run.pk).update(requested_at=timezone.now() - timedelta(minutes=10))
    assert schedule.feed_runs_schedule() == []  # changed, but the interval has not passed

    FeedRun.objects.filter(pk=run.pk).update(requested_at=timezone.now() - timedelta(hours=2))
    with django_capture_on_commit_callbacks(execute=True):
        requested = schedule.feed_runs_schedule()
        again = schedule.feed_runs_schedule()

    assert len(requested) == 1 and again == []  # not twice: the new run is in progress
    assert sent == requested
    new = FeedRun.objects.get(pk=requested[0])
    assert new.status == FeedRun.Status.QUEUED and new.community == community


@pytest.mark.parametrize("change", ["choices", "deletion", "creator"])
def test_the_schedule_counts_audited_choices_and_deletions_after_the_run(
    change: str, settings: Any, sent: list[int]
) -> None:
    settings.COMMONFEED_RECOMPUTE_INTERVAL_SECONDS = 60
    community = make_community("alpha")
    data = small_catalogue(community, members=3, items=6)
    member = data["members"][1]

    def make_change() -> None:
        if change == "choices":
            choices.member_choices_set(member=member, actor=None, personalise=False)
        elif change == "deletion":
            choices.member_data_delete(member=member, actor=None)
        else:
            choices.creator_choices_set(creator=data["creators"][0], opted_out=True, actor=None)

    make_change()  # before the run: the run saw it
    _finished_run(community, ago=timedelta(0))
    later = timezone.now() + timedelta(minutes=5)
    assert schedule.feed_runs_schedule(now=later) == []

    make_change()
    requested = schedule.feed_runs_schedule(now=later)
    assert len(requested) == 1
    assert schedule.feed_runs_schedule(now=later) == []


def test_the_schedule_waits_for_a_run_in_progress_and_counts_from_a_failed_one(
    settings: Any, sent: list[int]
) -> None:
    settings.COMMONFEED_RECOMPUTE_INTERVAL_SECONDS = 3600
    community = make_community("alpha")
    data = small_catalogue(community, members=3, items=6)
    finished = _finished_run(community, ago=timedelta(hours=5))
    interact(data["members"][0], data["items"][5])
    version = finished.policy_version
    running = FeedRun.objects.create(
        community=community,
        policy_version=version,
        policy_sha256=version.sha256,
        status=FeedRun.Status.RUNNING,
    )
    FeedRun.objects.filter(pk=running.pk).update(requested_at=timezone.now() - timedelta(hours=3))
    assert schedule.feed_runs_schedule() == []

    # It failed 3 hours ago: retried once the interval has passed since, not every tick.
    FeedRun.objects.filter(pk=running.pk).update(status=FeedRun.Status.FAILED)
    assert len(schedule.feed_runs_schedule()) == 1
    FeedRun.objects.filter(community=community, status=FeedRun.Status.QUEUED).update(
        status=FeedRun.Status.FAILED
    )
    assert schedule.feed_runs_schedule() == []


def test_a_community_without_a_finished_run_is_left_to_the_reconciler(sent: list[int]) -> None:
    community = make_community("alpha")
    small_catalogue(community, members=3, items=6)
    assert schedule.feed_runs_schedule(now=timezone.now() + timedelta(days=1)) == []


@pytest.mark.skipif(
    "postgresql" not in connection.vendor, reason="concurrent transactions need PostgreSQL"
)
def test_two_ticks_at_once_request_one_run(
    transactional_db: None, settings: Any, sent: list[int]
) -> None:
    settings.COMMONFEED_RECOMPUTE_INTERVAL_SECONDS = 60
    community = make_community("alpha")
    data = small_catalogue(community, members=3, items=6)
    _finished_run(community, ago=timedelta(hours=1))
    interact(data["members"][0], data["items"][5])
    barrier = threading.Barrier(2)
    results: list[list[int]] = []

    def tick() -> None:
        try:
            barrier.wait()
            results.append(schedule.feed_runs_schedule())
        finally:
            connections.close_all()

    threads = [threading.Thread(target=tick) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(len(r) for r in results) == [0, 1]
    assert FeedRun.objects.filter(community=community, status=FeedRun.Status.QUEUED).count() == 1


# --- Two-sided metrics --------------------------------------------------------------------------


@pytest.fixture
def measured() -> dict[str, Any]:
    """A hand-checkable run: five items by three creators (and a placeholder), four feeds."""
    community = make_community("measured")
    old, recent = datetime(2020, 1, 1, tzinfo=UTC), timezone.now() - timedelta(days=10)
    c1, c2, c4 = (CreatorFactory(community=community) for _ in range(3))
    unknown = CreatorFactory(community=community, placeholder=True)
    a = ItemFactory(community=community, by=[c1], tags=["x", "y"], published_at=old)
    b = ItemFactory(
        community=community,
        by=[c1],
        tags=["x"],
        published_at=old,
        provenance=Item.Provenance.AI_GENERATED,
    )
    c = ItemFactory(community=community, by=[c2], tags=["z"], published_at=recent)
    ItemFactory(community=community, by=[unknown], tags=["y"])  # never shown
    e = ItemFactory(
        community=community, by=[c4], tags=["w"], published_at=datetime(2019, 1, 1, tzinfo=UTC)
    )
    ItemFactory(community=community, by=[c4], tags=["w"], active=False)  # out of the catalogue
    m1, m2, m3, m4 = (MembershipFactory(community=community) for _ in range(4))
    for member in (m1, m2, m3):
        interact(member, a)
    interact(m1, c)
    interact(m2, b, kind="skip", weight=-1.0)  # not positive: no popularity, no history
    run = _finished_run(community, ago=timedelta(minutes=1), members=4)
    for member, items in ((m1, [a, b]), (m2, [a, c]), (m3, [c, e]), (m4, [])):
        MemberFeed.objects.create(
            run=run,
            member=member,
            item_ids=[i.pk for i in items],
            scores=[1.0] * len(items),
        )
    return {"run": run}


def _expected() -> dict[str, dict[str, float]]:
    bits = math.log2(3)  # an item one of the three training members liked, or none did
    # Miscalibration (KL, smoothing 0.01): m1's history A, C vs list A, B; m2's history A vs
    # A, C; m3's history A vs C, E.
    m1 = 0.25 * math.log(0.25 / 0.745) + 0.5 * math.log(0.5 / 0.005)
    m2 = math.log(0.5 / 0.2525)
    m3 = math.log(0.5 / 0.005)
    return {
        "consumers": {
            "diversity_tags": ((1 - 1 / math.sqrt(2)) + 1 + 1) / 3,
            "novelty_bits": (bits / 2 + bits / 2 + bits) / 3,
            "avg_popularity": (1.5 + 2.0 + 0.5) / 3,
            "miscalibration_kl": (m1 + m2 + m3) / 3,
        },
        "producers": {
            # Exposure A 2, B 1, C 2, D 0, E 1 over the five active items.
            "item_coverage": 4 / 5,
            "item_gini": 10 / 30,
            # Creators c1 3, c2 2, c4 1; the placeholder is left out.
            "creator_coverage": 1.0,
            "creator_gini": 4 / 18,
            # c1 reached the most members (head); c2 and c4 are the long tail.
            "long_tail_creator_share": 3 / 6,
            # Only c2's first item is less than two years old.
            "new_creator_share": 2 / 6,
            "ai_generated_share": 1 / 6,
        },
    }


@pytest.mark.parametrize("batch", [2_000, 1])
def test_metrics_of_a_finished_run_match_a_hand_checked_case(
    batch: int, measured: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(run_metrics, "METRICS_BATCH", batch)  # 1: every member a batch of its own
    run = measured["run"]
    assert run_metrics.feed_run_metrics_pending() == [run.pk]

    result = run_metrics.feed_run_metrics_compute(run_id=run.pk)

    assert result is not None and result["status"] == "done"
    for section, values in _expected().items():
        for key, value in values.items():
            assert result[section][key] == pytest.approx(value, abs=1e-6), (section, key)
    assert result["members"] == {"measured": 4, "empty_feeds": 1}
    assert result["catalogue"] == {"items": 5, "creators": 3}
    run.refresh_from_db()
    assert run.metrics == result


def test_metrics_are_reported_at_the_visible_depth_and_weighted_by_position(
    measured: dict[str, Any], settings: Any
) -> None:
    settings.COMMONFEED_VISIBLE_DEPTH = 1
    result = run_metrics.feed_run_metrics_compute(run_id=measured["run"].pk)
    assert result is not None and result["status"] == "done"
    assert (result["depth"], result["length"], result["discount"]) == (1, 2, "log2")
    # First places only: A (m1), A (m2), C (m3); c1 has two places, c2 one, c4 none.
    top = result["at_depth"]["producers"]
    assert top["long_tail_creator_share"] == pytest.approx(1 / 3, abs=1e-6)
    assert top["new_creator_share"] == pytest.approx(1 / 3, abs=1e-6)
    assert top["ai_generated_share"] == 0.0  # B is only ever second
    assert top["creator_coverage"] == pytest.approx(2 / 3, abs=1e-6)
    assert top["item_coverage"] == pytest.approx(2 / 5, abs=1e-6)
    # Whole feed by position: a first place counts 1, a second 1/log2(3) = 0.63.
    second = 1 / math.log2(3)
    whole = result["whole_feed"]["producers"]
    total = 3 + 3 * second  # A 1 + 1, B second, C second + 1, E second
    assert whole["long_tail_creator_share_weighted"] == pytest.approx(
        (1 + 2 * second) / total, abs=1e-6
    )
    assert whole["ai_generated_share_weighted"] == pytest.approx(second / total, abs=1e-6)
    assert whole["long_tail_creator_share"] == pytest.approx(3 / 6, abs=1e-6)
    # The flat sections are the whole feed counting places, as before.
    for section, values in _expected().items():
        for key, value in values.items():
            assert result[section][key] == pytest.approx(value, abs=1e-6), (section, key)
            assert result["whole_feed"][section][key] == result[section][key]


def test_metrics_say_how_alike_feeds_are_and_which_relations_they_keep(
    measured: dict[str, Any],
) -> None:
    result = run_metrics.feed_run_metrics_compute(run_id=measured["run"].pk)
    assert result is not None and result["version"] == 3
    # Histories (positive only): m1 A, C; m2 A; m3 A. Feeds: m1 A, B; m2 A, C; m3 C, E.
    second = 1 / math.log2(3)
    for cut in ("at_depth", "whole_feed"):  # the feeds are shorter than the depth
        consumers, producers = result[cut]["consumers"], result[cut]["producers"]
        # Pairs of the three non-empty feeds: {A,B}-{A,C} 1/3, {A,B}-{C,E} 0, {A,C}-{C,E} 1/3.
        assert consumers["convergence"] == pytest.approx(2 / 9, abs=1e-6)
        # c1's A and B for m1, c1's A for m2 keep a relation; C for m2, C and E for m3 do not.
        assert consumers["relation_kept_share"] == pytest.approx(0.5, abs=1e-6)
        assert consumers["discovery_share"] == pytest.approx(0.5, abs=1e-6)
        assert consumers["relation_kept_share_weighted"] == pytest.approx(
            (2 + second) / (3 + 3 * second), abs=1e-6
        )
        # c1's earlier audience m1, m2, m3: m1 and m2 still see it; c2's (m1) sees no C.
        assert producers["audience_kept_mean"] == pytest.approx(1 / 3, abs=1e-6)
        assert producers["audience_kept_median"] == pytest.approx(1 / 3, abs=1e-6)
        assert producers["human_share"] == pytest.approx(5 / 6, abs=1e-6)
    assert result["convergence_pairs"] == 3


def test_metrics_are_computed_once(measured: dict[str, Any]) -> None:
    run = measured["run"]
    first = run_metrics.feed_run_metrics_compute(run_id=run.pk)
    MemberFeed.objects.filter(run=run).delete()

    assert run_metrics.feed_run_metrics_compute(run_id=run.pk) is None
    assert run_metrics.feed_run_metrics_pending() == []
    run.refresh_from_db()
    assert run.metrics == first


def test_a_claimed_computation_is_handed_over_only_after_its_lease(
    measured: dict[str, Any],
) -> None:
    run = measured["run"]
    FeedRun.objects.filter(pk=run.pk).update(metrics_claimed_at=timezone.now())
    assert run_metrics.feed_run_metrics_pending() == []
    assert run_metrics.feed_run_metrics_compute(run_id=run.pk) is None

    FeedRun.objects.filter(pk=run.pk).update(
        metrics_claimed_at=timezone.now() - run_metrics.METRICS_LEASE - timedelta(seconds=1)
    )
    assert run_metrics.feed_run_metrics_pending() == [run.pk]
    assert run_metrics.feed_run_metrics_compute(run_id=run.pk)["status"] == "done"


def test_a_run_whose_feeds_were_pruned_records_that_it_cannot_be_measured(
    measured: dict[str, Any],
) -> None:
    run = measured["run"]
    MemberFeed.objects.filter(run=run).delete()
    result = run_metrics.feed_run_metrics_compute(run_id=run.pk)
    assert result is not None and result["status"] == "unavailable"
    page_client = person_client(run.community, "mod", "moderator")
    html = page_client.get(reverse("feed-runs", args=[run.community.slug])).content.decode()
    assert "No metrics: The run&#x27;s stored feeds were pruned" in html


def test_the_runs_page_shows_a_run_s_metrics(measured: dict[str, Any]) -> None:
    run = measured["run"]
    client = person_client(run.community, "mod", "moderator")
    url = reverse("feed-runs", args=[run.community.slug])
    assert "Metrics are being computed." in client.get(url).content.decode()
    run_metrics.feed_run_metrics_compute(run_id=run.pk)
    html = client.get(url).content.decode()
    assert "Creator exposure Gini 0.222" in html
    assert "AI-generated share 0.167" in html
    assert "Novelty (bits) 1.057" in html
    assert "Convergence (how alike members&#x27; feeds are) 0.222" in html
    assert "From creators new to the member 0.500" in html
    assert "Creators&#x27; earlier audience still reached (mean) 0.333" in html
    # Both cuts; a depth past these two-entry feeds gives the whole feed twice.
    assert "Creators and items in the top 10:" in html
    assert "Creators and items over the whole feed (2):" in html
    second = 1 / math.log2(3)
    weighted = f"AI-generated share by position {second / (3 + 3 * second):.3f}"
    assert html.count(weighted) == 2
    # The API serves the same figures, the old keys beside the new ones.
    served = client.get(reverse("api-feed-runs", args=[run.community.slug])).json()[0]["metrics"]
    assert served["producers"]["ai_generated_share"] == pytest.approx(1 / 6, abs=1e-6)
    assert served["depth"] == 10 and served["version"] == 3
    assert served["at_depth"]["producers"]["ai_generated_share_weighted"] == pytest.approx(
        second / (3 + 3 * second), abs=1e-6
    )


def test_the_runs_page_shows_the_figures_of_runs_measured_before_the_depth(
    measured: dict[str, Any],
) -> None:
    run = measured["run"]
    old = {
        "status": "done",
        "version": 1,
        "consumers": {"novelty_bits": 1.5},
        "producers": {"creator_gini": 0.25},
    }
    FeedRun.objects.filter(pk=run.pk).update(metrics=old)
    client = person_client(run.community, "mod", "moderator")
    html = client.get(reverse("feed-runs", args=[run.community.slug])).content.decode()
    assert "Novelty (bits) 1.500" in html and "Creator exposure Gini 0.250" in html
    assert "top 10" not in html.split('id="run-')[1]


def test_the_runs_page_leaves_out_figures_a_run_measured_before_they_existed(
    measured: dict[str, Any],
) -> None:
    run = measured["run"]
    result = run_metrics.feed_run_metrics_compute(run_id=run.pk)
    assert result is not None
    for cut in ("at_depth", "whole_feed"):
        del result[cut]["consumers"]["convergence"]
    FeedRun.objects.filter(pk=run.pk).update(metrics={**result, "version": 2})
    client = person_client(run.community, "mod", "moderator")
    html = client.get(reverse("feed-runs", args=[run.community.slug])).content.decode()
    assert "Convergence" not in html.split('id="run-')[1] and "Novelty (bits) 1.057" in html


# --- With a real worker -------------------------------------------------------------------------


@pytest.mark.integration
def test_a_moderator_s_run_is_computed_and_measured_by_a_worker(
    transactional_db: None, celery_worker: subprocess.Popen[bytes]
) -> None:
    from feeds.tasks import schedule_feed_runs

    community = make_community("workshop")
    small_catalogue(community, members=12, items=30)
    client = person_client(community, "mod", "moderator")
    api = reverse("api-feed-runs", args=[community.slug])
    response = client.post(
        api, content_type="application/json", HTTP_X_CSRFTOKEN=_csrf(client, community)
    )
    assert response.status_code == 201
    run_id = response.json()["run"]["id"]

    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        run = FeedRun.objects.get(pk=run_id)
        if run.status == FeedRun.Status.FINISHED and run.metrics is None:
            schedule_feed_runs.delay()  # what beat sends every minute
            time.sleep(1.0)
        elif run.metrics is not None or run.status == FeedRun.Status.FAILED:
            break
        time.sleep(0.3)
    log = celery_worker.log_path.read_text(errors="replace")  # type: ignore[attr-defined]
    run = FeedRun.objects.get(pk=run_id)
    assert run.status == FeedRun.Status.FINISHED, log
    assert run.metrics is not None and run.metrics["status"] == "done", log
    assert (
        run.metrics["members"]["measured"] == Membership.objects.filter(community=community).count()
    )
    assert 0.0 <= run.metrics["producers"]["item_gini"] <= 1.0
    # Nothing changed since the run: the schedule requested no other.
    assert FeedRun.objects.filter(community=community).count() == 1
    listed = client.get(api).json()
    assert listed[0]["metrics"]["status"] == "done"


def test_recompute_now_with_the_broker_down_queues_the_run_for_the_reconciler(
    monkeypatch: pytest.MonkeyPatch, django_capture_on_commit_callbacks: Any
) -> None:
    from celery import current_app
    from kombu.exceptions import OperationalError

    from feeds import enqueue
    from feeds.runs.services import feed_runs_reconcile

    community = make_community("outage")
    client = person_client(community, "mod", "moderator")
    url = reverse("feed-runs", args=[community.slug])
    csrf = _csrf(client, community)

    def broker_down(*args: object, **kwargs: object) -> None:
        raise OperationalError("Error 111 connecting to 127.0.0.1:6379. Connection refused.")

    with monkeypatch.context() as down:
        down.setattr(current_app, "send_task", broker_down)
        with django_capture_on_commit_callbacks(execute=True):
            response = client.post(url, {"csrfmiddlewaretoken": csrf})

    assert response.status_code == 302
    run = FeedRun.objects.get(community=community)
    assert run.status == FeedRun.Status.QUEUED  # recorded: the database knows it is owed
    # Once the broker is back, the reconciler sends it (past the grace period).
    FeedRun.objects.filter(pk=run.pk).update(requested_at=timezone.now() - timedelta(hours=1))
    resent: list[int] = []
    monkeypatch.setattr(enqueue, "run_recompute", lambda **kw: resent.append(kw["run_id"]))
    assert run.pk in feed_runs_reconcile().resent
    assert resent == [run.pk]
