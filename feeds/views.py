"""HTML pages."""

from __future__ import annotations

from typing import Any

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.db.models import Count, Q
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render

from feeds import choices
from feeds.forms import DataDeletionForm, MemberChoicesForm
from feeds.models import Creator, FeedRun
from feeds.selectors import FeedNotReady, current_run, feed_run_for_read, member_feed_get
from governance.models import Community, Membership


def home(request: HttpRequest) -> HttpResponse:
    communities = Community.objects.annotate(
        member_count=Count("memberships", distinct=True),
    ).order_by("slug")
    rows = []
    for community in communities:
        rows.append(
            {
                "community": community,
                "run": current_run(community=community),
                "item_count": community.items.count(),
                "creator_count": community.creators.count(),
                "interaction_count": community.interactions.count(),
                "sample_members": list(community.memberships.order_by("id")[:5]),
                "last_runs": list(FeedRun.objects.filter(community=community)[:3]),
            }
        )
    return render(request, "feeds/home.html", {"rows": rows})


def member_feed(request: HttpRequest, slug: str, member_external_id: str) -> HttpResponse:
    community = get_object_or_404(Community, slug=slug)
    member = get_object_or_404(Membership, community=community, external_id=member_external_id)
    try:
        run = feed_run_for_read(community=community)
    except FeedNotReady:
        feed = None
    else:
        feed = member_feed_get(community=community, member=member, run=run)
    return render(
        request, "feeds/member_feed.html", {"community": community, "member": member, "feed": feed}
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
    # Offer the creators the member has met, and whoever they muted already.
    creators = (
        Creator.objects.filter(
            Q(items__interactions__member=member) | Q(pk__in=current_muted), community=community
        )
        .distinct()
        .order_by("name")
    )
    if request.method == "POST" and "delete" in request.POST:
        deletion = DataDeletionForm(request.POST)
        if deletion.is_valid():
            deleted = choices.member_data_delete(member=member, actor=request.user)
            messages.success(
                request, f"Deleted {deleted} interactions. The next feed run will not see them."
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
            messages.success(request, "Saved. Your feed follows these choices from the next run.")
            return redirect("member-settings", slug=slug)
    else:
        form = MemberChoicesForm(initial=_initial(current, current_muted), creators=creators)
        deletion = DataDeletionForm()
    return render(
        request,
        "feeds/member_settings.html",
        {"community": community, "member": member, "form": form, "deletion": deletion},
    )


def _initial(current: Any, muted: set[int]) -> dict[str, Any]:
    return {
        "personalise": current.personalise,
        "train_on_my_data": current.train_on_my_data,
        "muted_creators": list(muted),
        "muted_tags": ", ".join(current.muted_tags),
    }
