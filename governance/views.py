"""Governance pages (HTML). Thin: parse, one service or selector call, render or redirect."""

from __future__ import annotations

import json
from typing import Any

from django import forms
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.paginator import Paginator
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse_lazy
from django.views.decorators.http import require_POST

from governance import proposal_services
from governance.describe import policy_describe
from governance.diff import ABSENT, policy_diff
from governance.errors import GovernanceError, NotPermitted, http_status
from governance.models import Ballot, Community, Membership, Proposal
from governance.selectors import (
    audit_actions,
    audit_filtered,
    audit_verify,
    ballot_of,
    charter_of,
    charter_version_current,
    membership_of_user,
    policy_of,
    policy_version_current,
    policy_versions_with_diffs,
    proposal_tally,
    proposals_of,
)
from ranking.policy import PolicyError, canonical_json

LOGIN_URL = reverse_lazy("login")


def _json(value: Any) -> str:
    return "—" if value is ABSENT else canonical_json(value)


def _diff_rows(old: dict[str, Any], new: dict[str, Any]) -> list[dict[str, str]]:
    return [
        {"path": c.path, "old": _json(c.old), "new": _json(c.new)} for c in policy_diff(old, new)
    ]


def _member_or_403(request: HttpRequest, community: Community) -> Membership:
    member = membership_of_user(community=community, user=request.user)
    if member is None:
        raise NotPermitted(f"You are not a member of {community.name}.")
    return member


def _error_page(request: HttpRequest, community: Community, error: GovernanceError) -> HttpResponse:
    return render(
        request,
        "governance/error.html",
        {"community": community, "error": error, "code": error.code},
        status=http_status(error),
    )


def governance_home(request: HttpRequest, slug: str) -> HttpResponse:
    community = get_object_or_404(Community, slug=slug)
    version = policy_version_current(community=community)
    charter = charter_of(charter_version_current(community=community))
    member = membership_of_user(community=community, user=request.user)
    may_propose = member is not None and (
        charter.who_may_propose == "members" or member.role != Membership.Role.MEMBER
    )
    return render(
        request,
        "governance/home.html",
        {
            "community": community,
            "version": version,
            "policy": policy_describe(policy_of(version)),
            "charter": charter,
            "proposals": proposals_of(community=community),
            "member": member,
            "may_propose": may_propose,
        },
    )


@login_required(login_url=LOGIN_URL)
def proposal_new(request: HttpRequest, slug: str) -> HttpResponse:
    community = get_object_or_404(Community, slug=slug)
    current = policy_version_current(community=community)
    form = {
        "title": "",
        "rationale": "",
        "document": json.dumps(current.document, indent=2, sort_keys=True),
    }
    errors: list[dict[str, str]] = []
    if request.method == "POST":
        form = {key: request.POST.get(key, "") for key in form}
        try:
            member = _member_or_403(request, community)
            proposal = proposal_services.proposal_create(
                community=community,
                author=member,
                title=form["title"],
                rationale=form["rationale"],
                document=form["document"],
            )
        except PolicyError as error:
            errors = error.errors
        except GovernanceError as error:
            return _error_page(request, community, error)
        else:
            return redirect("governance:proposal", slug=slug, pk=proposal.pk)
    return render(
        request,
        "governance/proposal_new.html",
        {"community": community, "form": form, "errors": errors, "base": current},
        status=400 if errors else 200,
    )


def proposal_detail(request: HttpRequest, slug: str, pk: int) -> HttpResponse:
    community = get_object_or_404(Community, slug=slug)
    proposal = get_object_or_404(proposals_of(community=community), pk=pk)
    member = membership_of_user(community=community, user=request.user)
    return render(
        request,
        "governance/proposal.html",
        {
            "community": community,
            "proposal": proposal,
            "changes": _diff_rows(proposal.base_version.document, proposal.document),
            "tally": proposal_tally(proposal=proposal) if proposal.opens_at else None,
            "member": member,
            "ballot": ballot_of(proposal=proposal, member=member),
            "in_electorate": member is not None
            and proposal.electorate.filter(member=member).exists(),
            "may_manage": member is not None
            and (member.pk == proposal.author_id or member.role != Membership.Role.MEMBER),
            "choices": Ballot.Choice.choices,
        },
    )


@require_POST
@login_required(login_url=LOGIN_URL)
def proposal_vote(request: HttpRequest, slug: str, pk: int) -> HttpResponse:
    community = get_object_or_404(Community, slug=slug)
    proposal = get_object_or_404(Proposal, community=community, pk=pk)
    choice = request.POST.get("choice", "")
    if choice not in Ballot.Choice.values:
        messages.error(request, "Choose yes, no or abstain.")
        return redirect("governance:proposal", slug=slug, pk=pk)
    try:
        ballot = proposal_services.ballot_cast(
            proposal=proposal, member=_member_or_403(request, community), choice=choice
        )
    except GovernanceError as error:
        return _error_page(request, community, error)
    messages.success(request, f"Your ballot is counted. Receipt: {ballot.receipt}")
    return redirect("governance:proposal", slug=slug, pk=pk)


@require_POST
@login_required(login_url=LOGIN_URL)
def proposal_transition(request: HttpRequest, slug: str, pk: int, action: str) -> HttpResponse:
    community = get_object_or_404(Community, slug=slug)
    proposal = get_object_or_404(Proposal, community=community, pk=pk)
    service = {
        "open": proposal_services.proposal_open,
        "withdraw": proposal_services.proposal_withdraw,
    }[action]
    try:
        service(proposal=proposal, actor=_member_or_403(request, community))
    except GovernanceError as error:
        return _error_page(request, community, error)
    return redirect("governance:proposal", slug=slug, pk=pk)


def policy_history(request: HttpRequest, slug: str) -> HttpResponse:
    community = get_object_or_404(Community, slug=slug)
    rows = policy_versions_with_diffs(community=community)
    for row in rows:
        row["changes"] = [
            {"path": c.path, "old": _json(c.old), "new": _json(c.new)} for c in row["changes"]
        ]
    return render(request, "governance/history.html", {"community": community, "rows": rows})


class AuditFilterForm(forms.Form):
    action = forms.CharField(required=False, max_length=64)
    actor = forms.CharField(required=False, max_length=150)
    since = forms.DateField(required=False, widget=forms.DateInput(attrs={"type": "date"}))
    until = forms.DateField(required=False, widget=forms.DateInput(attrs={"type": "date"}))


AUDIT_PAGE_SIZE = 100


def audit_log(request: HttpRequest, slug: str) -> HttpResponse:
    """The community's audit log, newest first. Public by design: no login."""
    community = get_object_or_404(Community, slug=slug)
    form = AuditFilterForm(request.GET)
    filters = form.cleaned_data if form.is_valid() else {}
    entries = audit_filtered(
        community=community,
        action=filters.get("action"),
        actor=filters.get("actor"),
        since=filters.get("since"),
        until=filters.get("until"),
    ).order_by("-seq")
    page = Paginator(entries, AUDIT_PAGE_SIZE).get_page(request.GET.get("page"))
    states = audit_verify(community=community)
    query = request.GET.copy()
    query.pop("page", None)
    return render(
        request,
        "governance/audit.html",
        {
            "community": community,
            "form": form,
            "actions": audit_actions(community=community),
            "page": page,
            "chain": states[0] if states else None,
            "query": query.urlencode(),
        },
        status=200 if form.is_valid() else 400,
    )
