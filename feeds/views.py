"""HTML pages."""

from __future__ import annotations

from typing import Any

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.db.models import Count, F, Q
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_POST

from feeds import choices
from feeds.auth import community_for_credential_manager
from feeds.forms import AppCredentialForm, DataDeletionForm, MemberChoicesForm
from feeds.models import Creator, FeedRun
from feeds.selectors import FeedNotReady, current_run, feed_run_for_read, member_feed_get
from feeds.services import AppCredentialInvalid, app_credential_create, app_credential_revoke
from governance.models import Community, Membership


def home(request: HttpRequest) -> HttpResponse:
    communities = Community.objects.annotate(
        member_count=Count("memberships", distinct=True),
    ).order_by("slug")
    rows = []
    for community in communities:
        run = current_run(community=community)
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
