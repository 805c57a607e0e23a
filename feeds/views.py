"""HTML pages."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.db.models import Count, F
from django.http import HttpRequest, HttpResponse, HttpResponseBadRequest
from django.shortcuts import get_object_or_404, redirect, render
from django.utils.safestring import mark_safe
from django.views.decorators.http import require_http_methods, require_POST

from feeds.choices import services as choices
from feeds.credentials.auth import community_for_credential_manager
from feeds.credentials.services import (
    AppCredentialInvalid,
    app_credential_create,
    app_credential_revoke,
)
from feeds.enqueue import member_feeds_refresh_request
from feeds.forms import AppCredentialForm, DataDeletionForm, MemberChoicesForm
from feeds.insights import creators, impact, trends
from feeds.insights.charts import Series, line_chart
from feeds.models import Creator, FeedRun
from feeds.runs import schedule as runs
from feeds.serving.selectors import (
    FeedNotReady,
    creators_a_member_may_mute,
    current_run,
    feed_run_for_read,
    member_feed_get,
)
from governance.models import Community, Membership, Proposal
from governance.selectors import membership_of_user, policy_of, policy_version_current
from ranking.policy import policy_validate

# What the member is told after a change: with fold-in on, their served feed is refreshed within
# seconds (feeds.enqueue.member_feeds_refresh_request); the model learns it at the next run.
_WHEN_SAVED = {
    True: "Mutes apply from your next visit; your feed is refreshed with the other choices "
    "within seconds.",
    False: "Mutes apply from your next visit; your feed follows the other choices from the next "
    "feed run.",
}
_WHEN_DELETED = {
    True: "Your feed is refreshed without them within seconds and no training run will see them.",
    False: "The next feed run will not see them.",
}


def _fold_in() -> bool:
    return bool(settings.COMMONFEED_FOLD_IN)


def home(request: HttpRequest) -> HttpResponse:
    communities = Community.objects.annotate(
        member_count=Count("memberships", distinct=True),
    ).order_by("slug")
    # A member's feed reveals their taste: links go to the viewer's own feed and, for the
    # community's moderators and admins, to a few members' feeds.
    viewing = (
        {m.community_id: m for m in Membership.objects.filter(user=request.user)}
        if request.user.is_authenticated
        else {}
    )
    speaking_for: dict[int, list[Creator]] = {}
    for creator in Creator.objects.filter(member__in=viewing.values()).order_by("name"):
        speaking_for.setdefault(creator.community_id, []).append(creator)
    rows = []
    for community in communities:
        run = current_run(community=community)
        viewer = viewing.get(community.pk)
        # Counting a large community's interactions costs a scan on every view; the current run
        # already recorded how many it trained on.
        counted = (run.stats or {}).get("n_interactions") if run else None
        rows.append(
            {
                "community": community,
                "run": run,
                "item_count": community.items.count(),
                "creator_count": community.creators.count(),
                "interaction_count": (
                    counted if counted is not None else community.interactions.count()
                ),
                "interactions_at_run": counted is not None,
                "viewer": viewer,
                "creator_profiles": speaking_for.get(community.pk, []),
                "sample_members": (
                    list(community.memberships.order_by("id")[:5])
                    if viewer is not None and viewer.role != Membership.Role.MEMBER
                    else []
                ),
                "last_runs": list(FeedRun.objects.filter(community=community)[:3]),
            }
        )
    return render(request, "feeds/home.html", {"rows": rows})


@login_required
def member_feed(request: HttpRequest, slug: str, member_external_id: str) -> HttpResponse:
    """A member's feed with its reasons in words: for the member and the community's
    moderators and admins (a feed reveals its member's taste)."""
    community = get_object_or_404(Community, slug=slug)
    viewer = membership_of_user(community=community, user=request.user)
    if viewer is None or (
        viewer.role == Membership.Role.MEMBER and viewer.external_id != member_external_id
    ):
        raise PermissionDenied(
            "Only the member and the community's moderators and admins see a member's feed."
        )
    member = get_object_or_404(Membership, community=community, external_id=member_external_id)
    try:
        run = feed_run_for_read(community=community)
    except FeedNotReady:
        feed = None
    else:
        feed = member_feed_get(community=community, member=member, run=run)
        if feed.refresh_owed:
            member_feeds_refresh_request(community_id=community.pk, member_ids=[member.pk])
    return render(
        request,
        "feeds/member_feed.html",
        {"community": community, "member": member, "feed": feed, "own": viewer.pk == member.pk},
    )


@login_required
def member_settings(request: HttpRequest, slug: str) -> HttpResponse:
    """The logged-in member's own choices about their recommendations."""
    community = get_object_or_404(Community, slug=slug)
    member = get_object_or_404(Membership, community=community, user=request.user)
    current = choices.member_choices_get(member=member)
    current_muted = (
        set() if current._state.adding else set(current.muted_creators.values_list("pk", flat=True))
    )
    creators = creators_a_member_may_mute(
        community=community, member=member, muted=sorted(current_muted)
    )
    if request.method == "POST" and "delete" in request.POST:
        deletion = DataDeletionForm(request.POST)
        if deletion.is_valid():
            deleted = choices.member_data_delete(member=member, actor=request.user)
            messages.success(
                request, f"Deleted {deleted} interactions. {_WHEN_DELETED[_fold_in()]}"
            )
            return redirect("member-settings", slug=slug)
        form = MemberChoicesForm(initial=_initial(current, current_muted), creators=creators)
    elif request.method == "POST":
        form = MemberChoicesForm(request.POST, creators=creators)
        deletion = DataDeletionForm()
        if form.is_valid():
            data = form.cleaned_data
            choices.member_choices_set(
                member=member,
                actor=request.user,
                personalise=data["personalise"],
                train_on_my_data=data["train_on_my_data"],
                muted_creators=[c.external_id for c in data["muted_creators"]],
                muted_tags=data["muted_tags"],
            )
            messages.success(request, f"Saved. {_WHEN_SAVED[_fold_in()]}")
            return redirect("member-settings", slug=slug)
    else:
        form = MemberChoicesForm(initial=_initial(current, current_muted), creators=creators)
        deletion = DataDeletionForm()
    return render(
        request,
        "feeds/member_settings.html",
        {
            "community": community,
            "member": member,
            "form": form,
            "deletion": deletion,
            "creator_profiles": member.creator_profiles.order_by("name"),
            "fold_in": _fold_in(),
        },
    )


def _initial(current: Any, muted: set[int]) -> dict[str, Any]:
    return {
        "personalise": current.personalise,
        "train_on_my_data": current.train_on_my_data,
        "muted_creators": list(muted),
        "muted_tags": ", ".join(current.muted_tags),
    }


@login_required
def app_credentials(request: HttpRequest, slug: str) -> HttpResponse:
    """Moderators and admins list, issue and revoke the community's app credentials."""
    community = community_for_credential_manager(slug=slug, user=request.user)
    if request.method == "POST":
        form = AppCredentialForm(request.POST)
        if form.is_valid():
            try:
                credential, token = app_credential_create(
                    community=community,
                    name=form.cleaned_data["name"],
                    scopes=form.cleaned_data["scopes"],
                    actor=request.user,
                )
            except AppCredentialInvalid as exc:
                form.add_error(exc.field, str(exc))
            else:
                # Rendered, not redirected: the token exists only in this response.
                response = render(
                    request,
                    "feeds/app_credential_issued.html",
                    {"community": community, "credential": credential, "token": token},
                )
                response["Cache-Control"] = "no-store"
                return response
    else:
        form = AppCredentialForm()
    # Active ones first (a NULL revoked_at), on both databases.
    credentials = community.app_credentials.order_by(
        F("revoked_at").asc(nulls_first=True), "-created_at", "-pk"
    )
    return render(
        request,
        "feeds/app_credentials.html",
        {"community": community, "credentials": credentials, "form": form},
        status=400 if form.errors else 200,
    )


@login_required
@require_POST
def app_credential_revoke_view(request: HttpRequest, slug: str, prefix: str) -> HttpResponse:
    community = community_for_credential_manager(slug=slug, user=request.user)
    credential = get_object_or_404(community.app_credentials, prefix=prefix)
    if app_credential_revoke(credential=credential, actor=request.user):
        messages.success(request, f"Revoked {credential.name}: its token is refused from now on.")
    return redirect("app-credentials", slug=slug)


# Labels and what a rise means, for the impact preview's rows (metric keys of
# ranking.report and ranking.evaluation.metrics_report, "@N" cut off: "{n}" is N). Unknown keys
# are shown by their key; "*_weighted" keys are their twin's label "by position".
IMPACT_LABELS: dict[str, tuple[str, str]] = {
    "precision": ("Precision@{n}", "share of the {n} recommended items the member went on to use"),
    "recall": ("Recall@{n}", "share of the member's held-out items that were recommended"),
    "ndcg": ("nDCG@{n}", "accuracy weighted by position"),
    "diversity_tags": (
        "Diversity (tags)",
        "how different the items in one feed are from each other",
    ),
    "novelty_bits": (
        "Novelty (bits)",
        "how unpopular, hence surprising, the recommended items are",
    ),
    "miscalibration_kl": (
        "Miscalibration",
        "distance from the member's own mix of tags (lower: closer)",
    ),
    "item_coverage": ("Item coverage", "share of the catalogue recommended to someone"),
    "creator_coverage": ("Creator coverage", "share of creators recommended to someone"),
    "item_gini": ("Item exposure Gini", "concentration of exposure on few items (lower: fairer)"),
    "creator_gini": ("Creator exposure Gini", "concentration on few creators (lower: fairer)"),
    "long_tail_creator_share": (
        "Long-tail creators' share",
        "exposure going to creators outside the top 20 %",
    ),
    "new_creator_share": ("New creators' share", "exposure going to creators who started recently"),
    "ai_generated_share": ("AI-generated share", "exposure going to AI-generated items"),
    "avg_popularity": ("Average popularity", "members who used a recommended item, on average"),
    "human_share": ("Human-made share", "exposure going to items made by people"),
    "convergence": (
        "Convergence",
        "how alike two members' feeds are: shared items over all their items, 0 to 1",
    ),
    "relation_kept_share": (
        "Relation kept",
        "share of entries from creators the member already engaged with",
    ),
    "discovery_share": ("Discovery", "share of entries from creators new to the member"),
    "audience_kept_mean": (
        "Audience kept (mean)",
        "share of a creator's earlier audience their items still reach, mean over creators",
    ),
    "audience_kept_median": (
        "Audience kept (median)",
        "share of a creator's earlier audience their items still reach, median creator",
    ),
}


def _impact_label(key: str) -> tuple[str, str]:
    base, _, n = key.partition("@")
    weighted = base.endswith("_weighted")
    base = base.removesuffix("_weighted")
    if base not in IMPACT_LABELS:
        return key, ""
    label, meaning = (text.replace("{n}", n) for text in IMPACT_LABELS[base])
    if weighted:
        return f"{label} by position", f"{meaning}; a first place counts 1, a tenth 0.29"
    return label, meaning


def _impact_rows(report: dict[str, Any], *path: str) -> list[dict[str, Any]]:
    def pick(tree: dict[str, Any]) -> dict[str, Any]:
        for key in path:
            tree = tree.get(key) or {}
        return tree

    rows = []
    for key, value_a in pick(report["a"]).items():
        label, meaning = _impact_label(key)
        rows.append(
            {
                "key": key,
                "label": label,
                "meaning": meaning,
                "a": value_a,
                "b": pick(report["b"]).get(key),
                "delta": pick(report["deltas"]).get(key),
            }
        )
    return rows


def _impact_tables(report: dict[str, Any]) -> list[dict[str, Any]]:
    """The preview's tables: each side at the visible depth and over the whole feed; reports
    computed before the depth existed have one table per side."""
    sides = {"consumers": "For members (consumers)", "producers": "For creators (producers)"}
    if "at_depth" not in report["a"]:
        return [
            {"title": title, "rows": _impact_rows(report, side)} for side, title in sides.items()
        ]
    data = report.get("data") or {}
    where = {
        "at_depth": f"in the top {data.get('depth')}, where members look",
        "whole_feed": f"over the whole feed of {data.get('k')}",
    }
    return [
        {"title": f"{title}, {where[cut]}", "rows": _impact_rows(report, cut, side)}
        for side, title in sides.items()
        for cut in ("at_depth", "whole_feed")
    ]


def _served_tables(report: dict[str, Any]) -> list[dict[str, Any]]:
    """What each policy would serve now, as a run measures it, at the visible depth: the part of
    the preview that the first run after ratification reproduces."""
    served = report.get("served")
    if not served:
        return []
    depth = served["a"].get("depth")
    sides = {"producers": "For creators", "consumers": "For members"}
    tables = []
    for side, title in sides.items():
        a = served["a"]["at_depth"][side]
        b = served["b"]["at_depth"][side]
        rows = []
        for key, value_a in a.items():
            value_b = b.get(key)
            label, meaning = _impact_label(key)
            delta = None if value_a is None or value_b is None else value_b - value_a
            rows.append(
                {
                    "key": key,
                    "label": label,
                    "meaning": meaning,
                    "a": value_a,
                    "b": value_b,
                    "delta": delta,
                }
            )
        tables.append({"title": f"{title}, in the top {depth} as served", "rows": rows})
    return tables


def proposal_impact(request: HttpRequest, slug: str, pk: int) -> HttpResponse:
    """What a policy proposal would do to members' feeds and creators' exposure, measured on
    this community's data before the vote. Public, like the proposal page. While it is being
    computed, htmx polls this page; without JavaScript, reloading it shows the result."""
    community = get_object_or_404(Community, slug=slug)
    proposal = get_object_or_404(Proposal, community=community, pk=pk)
    context: dict[str, Any] = {
        "community": community,
        "proposal": proposal,
        "fragment": request.headers.get("HX-Request") == "true",
    }
    if not proposal.is_charter:
        current = policy_of(policy_version_current(community=community))
        proposed = policy_validate(proposal.document)
        if proposal.state in (Proposal.State.DRAFT, Proposal.State.OPEN):
            found = impact.policy_impact_request(community=community, a=current, b=proposed)
        else:
            # Decided: what was shown while it was open (the current policy may be it by now).
            found = impact.policy_impact_of_proposed(community=community, b=proposed)
        context["impact"] = found
        if found is not None and found.status == found.Status.DONE:
            context["tables"] = _impact_tables(found.report)
            context["served_tables"] = _served_tables(found.report)
            context["same_policy"] = current.sha256() == proposed.sha256()
    template = "feeds/_impact.html" if context["fragment"] else "feeds/impact.html"
    return render(request, template, context)


@login_required
@require_http_methods(["GET", "HEAD", "POST"])
def creator_dashboard(request: HttpRequest, slug: str, creator_external_id: str) -> HttpResponse:
    """What a creator gets from the served feeds and why. For the creator (the member linked
    to the creator record), the community's moderators and admins."""
    community = get_object_or_404(Community, slug=slug)
    creator = get_object_or_404(Creator, community=community, external_id=creator_external_id)
    viewer = membership_of_user(community=community, user=request.user)
    is_creator = viewer is not None and creator.member_id == viewer.pk
    if not is_creator and (viewer is None or viewer.role == Membership.Role.MEMBER):
        raise PermissionDenied("Only the creator and the community's moderators see this page.")
    if request.method == "POST":
        # The creator's own refusal: nobody else may opt them out or back in from here.
        if not is_creator:
            raise PermissionDenied("Only the creator can opt out of recommendation.")
        value = request.POST.get("opted_out")
        if value not in ("true", "false"):
            return HttpResponseBadRequest("opted_out must be 'true' or 'false'.")
        choices.creator_choices_set(creator=creator, opted_out=value == "true", actor=request.user)
        messages.success(
            request,
            "Your items are no longer recommended: they leave every member's feed from their "
            "next request."
            if value == "true"
            else "Your items can be recommended again: they are back in the feeds that ranked "
            "them, and the next feed run ranks them for everyone.",
        )
        return redirect("creator-dashboard", slug=slug, creator_external_id=creator_external_id)
    return _creator_dashboard(request, community, creator, viewer)


def _creator_dashboard(
    request: HttpRequest,
    community: Community,
    creator: Creator,
    viewer: Membership,
    *,
    account_error: str = "",
    status: int = 200,
) -> HttpResponse:
    report = creators.creator_report(community=community, creator=creator)
    return render(
        request,
        "feeds/creator_dashboard.html",
        {
            "community": community,
            "creator": creator,
            "report": report,
            "is_creator": creator.member_id == viewer.pk,
            "may_link": viewer.role == Membership.Role.ADMIN,
            "account_error": account_error,
        },
        status=status,
    )


@login_required
@require_POST
def creator_account(request: HttpRequest, slug: str, creator_external_id: str) -> HttpResponse:
    """The community's admins say which member account speaks for a creator (it reads the
    dashboard and may opt the creator out); blank unlinks. Audited."""
    community = get_object_or_404(Community, slug=slug)
    creator = get_object_or_404(Creator, community=community, external_id=creator_external_id)
    viewer = membership_of_user(community=community, user=request.user)
    if viewer is None or viewer.role != Membership.Role.ADMIN:
        raise PermissionDenied("Only the community's admins link a creator to an account.")
    wanted = request.POST.get("member", "").strip()
    member = None
    if wanted:
        member = Membership.objects.filter(community=community, external_id=wanted).first()
        if member is None:
            return _creator_dashboard(
                request,
                community,
                creator,
                viewer,
                account_error=f"No member {wanted!r} in {community.name}.",
                status=400,
            )
    if choices.creator_member_set(creator=creator, member=member, actor=request.user):
        messages.success(
            request,
            f"{creator.name} now speaks through member {member.external_id}."
            if member is not None
            else f"{creator.name} has no account now.",
        )
    return redirect("creator-dashboard", slug=slug, creator_external_id=creator_external_id)


# Labels of the run metrics (keys of feeds.insights.run_metrics.run_metrics), in the order shown.
RUN_METRIC_LABELS: dict[str, dict[str, str]] = {
    "consumers": {
        "diversity_tags": "Diversity (tags)",
        "novelty_bits": "Novelty (bits)",
        "avg_popularity": "Average popularity",
        "miscalibration_kl": "Miscalibration (KL)",
        "convergence": "Convergence (how alike members' feeds are)",
        "relation_kept_share": "From creators the member already engaged with",
        "discovery_share": "From creators new to the member",
        "relation_kept_share_weighted": "From creators the member already engaged with, "
        "by position",
        "discovery_share_weighted": "From creators new to the member, by position",
    },
    "producers": {
        "item_gini": "Item exposure Gini",
        "creator_gini": "Creator exposure Gini",
        "item_coverage": "Item coverage",
        "creator_coverage": "Creator coverage",
        "long_tail_creator_share": "Long-tail creators' share",
        "new_creator_share": "New creators' share",
        "ai_generated_share": "AI-generated share",
        "creator_gini_weighted": "Creator exposure Gini by position",
        "long_tail_creator_share_weighted": "Long-tail creators' share by position",
        "new_creator_share_weighted": "New creators' share by position",
        "ai_generated_share_weighted": "AI-generated share by position",
        "human_share_weighted": "Human-made share by position",
        "audience_kept_mean": "Creators' earlier audience still reached (mean)",
        "audience_kept_median": "Creators' earlier audience still reached (median)",
    },
}


def _run_metric_rows(metrics: dict[str, Any]) -> list[tuple[str, list[tuple[str, Any]]]]:
    """The run's figures as (heading, [(label, value)]): at the visible depth and over the whole
    feed; runs measured before the depth existed (metrics version 1) have the whole feed only."""
    sides = {"consumers": "Members", "producers": "Creators and items"}
    if "at_depth" not in metrics:
        return [
            (
                sides[section],
                [
                    (label, (metrics.get(section) or {}).get(key))
                    for key, label in labels.items()
                    if key in (metrics.get(section) or {})
                ],
            )
            for section, labels in RUN_METRIC_LABELS.items()
        ]
    cuts = {
        "at_depth": f"in the top {metrics['depth']}",
        "whole_feed": f"over the whole feed ({metrics['length']})",
    }
    return [
        (
            f"{sides[section]} {where}",
            # Keys a run measured before they existed (metrics version 2) are left out.
            [
                (label, metrics[cut][section][key])
                for key, label in labels.items()
                if key in metrics[cut][section]
            ],
        )
        for section, labels in RUN_METRIC_LABELS.items()
        for cut, where in cuts.items()
    ]


def _seconds(start: Any, end: Any) -> float | None:
    return round((end - start).total_seconds(), 1) if start and end else None


@login_required
def feed_runs(request: HttpRequest, slug: str) -> HttpResponse:
    """Moderators and admins: the community's recent feed runs, and "Recompute now"."""
    community = runs.community_for_run_manager(slug=slug, user=request.user)
    if request.method == "POST":
        requested = runs.feed_run_request_on_demand(community=community, actor=request.user)
        if requested.created:
            messages.success(request, f"Queued run {requested.run.pk}; this page shows its status.")
        else:
            messages.info(
                request,
                f"Run {requested.run.pk} is already {requested.run.status}; no new run was queued.",
            )
        return redirect("feed-runs", slug=slug)
    rows = []
    for run in runs.feed_runs_recent(community=community):
        metrics = run.metrics or {}
        rows.append(
            {
                "run": run,
                "waited": _seconds(run.requested_at, run.started_at),
                "took": _seconds(run.started_at, run.finished_at),
                "metrics": _run_metric_rows(metrics) if metrics.get("status") == "done" else [],
            }
        )
    return render(
        request,
        "feeds/feed_runs.html",
        {"community": community, "rows": rows, "in_progress": runs.run_in_progress(community)},
    )


def feed_trends(request: HttpRequest, slug: str) -> HttpResponse:
    """How the community's feeds changed run after run, one chart per measure. Public like the
    policy history and the audit log: figures over all members and creators, never one
    member's."""
    community = get_object_or_404(Community, slug=slug)
    measured = trends.feed_trend_runs(community=community)
    charts = []
    for trend in trends.TRENDS:
        table = [(run, [run.value(s, k) for s, k, _ in trend.lines]) for run in measured]
        rows = [(run, values) for run, values in table if any(v is not None for v in values)]
        series = [
            Series(label, [(run.finished_at, v[n]) for run, v in rows if v[n] is not None])
            for n, (_, _, label) in enumerate(trend.lines)
        ]
        svg = line_chart(chart_id=f"trend-{trend.slug}", title=trend.title, series=series)
        charts.append(
            {
                "trend": trend,
                "labels": [label for _, _, label in trend.lines],
                # feeds.insights.charts escapes every text it writes.
                "svg": mark_safe(svg),
                "rows": rows,
            }
        )
    return render(
        request,
        "feeds/trends.html",
        {
            "community": community,
            "member": membership_of_user(community=community, user=request.user),
            "charts": charts,
            "depth": measured[-1].depth if measured else settings.COMMONFEED_VISIBLE_DEPTH,
            "runs": len(measured),
        },
    )
