"""Governance pages (HTML). Thin: parse, one service or selector call, render or redirect."""

from __future__ import annotations

import functools
import json
from typing import Any

from django import forms
from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.contrib.auth.views import redirect_to_login
from django.core.exceptions import ValidationError
from django.core.paginator import Paginator
from django.db import IntegrityError
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_POST

from config.input_gate import InputRejected, json_check, json_loads
from governance import services
from governance.charter import Charter
from governance.describe import policy_describe
from governance.diff import ABSENT, policy_diff
from governance.errors import GovernanceError, InvalidTransition, NotPermitted, http_status
from governance.forms import MemberAddForm, MemberRemoveForm, MemberRoleForm
from governance.models import Ballot, Community, Membership, Proposal
from governance.schema_form import apply_schema_fields, schema_fields
from governance.selectors import (
    audit_actions,
    audit_filtered,
    audit_verify_cached,
    ballot_of,
    charter_of,
    charter_version_current,
    membership_of_user,
    memberships_of,
    policy_of,
    policy_version_current,
    policy_versions_with_diffs,
    proposal_tally,
    proposals_of,
)
from ranking.policy import PolicyError, canonical_json, policy_json_schema, policy_validate


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


def _is_htmx(request: HttpRequest) -> bool:
    """Whether htmx sent the request (it then gets a fragment, not a page or a redirect)."""
    return bool(request.headers.get("HX-Request") == "true")


# htmx's "stop polling" status: the tally fragment answers it once voting has closed.
HTMX_STOP_POLLING = 286


def _tally_poll_ms() -> int:
    """How often an open proposal's page refreshes its tally (setting in seconds, default 3)."""
    return max(250, round(float(getattr(settings, "GOVERNANCE_TALLY_POLL_SECONDS", 3)) * 1000))


def _ballot_context(
    request: HttpRequest, community: Community, proposal: Proposal
) -> dict[str, Any]:
    """What the ballot area and the tally show, for the page and for htmx fragments."""
    member = membership_of_user(community=community, user=request.user)
    return {
        "community": community,
        "proposal": proposal,
        "tally": proposal_tally(proposal=proposal) if proposal.opens_at else None,
        "member": member,
        "ballot": ballot_of(proposal=proposal, member=member),
        "in_electorate": member is not None and proposal.electorate.filter(member=member).exists(),
        "choices": Ballot.Choice.choices,
        "poll_ms": _tally_poll_ms(),
    }


def community_root(request: HttpRequest, slug: str) -> HttpResponse:
    """``/c/<slug>/``: the community's page is its governance home (policy, charter,
    proposals; its navigation leads to the rest)."""
    community = get_object_or_404(Community, slug=slug)
    return redirect("governance:home", community.slug)


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


def _proposal_kind(request: HttpRequest) -> str:
    # ``?kind=charter`` (a hidden field once posted) drafts a charter change instead.
    charter_change = request.POST.get("kind", request.GET.get("kind")) == Proposal.Kind.CHARTER
    return Proposal.Kind.CHARTER if charter_change else Proposal.Kind.POLICY


@functools.cache
def _document_schema(kind: str) -> dict[str, Any]:
    return Charter.model_json_schema() if kind == Proposal.Kind.CHARTER else policy_json_schema()


def _posted_document(request: HttpRequest, kind: str) -> str:
    """The JSON editor's text with the settings form's changes written into it.

    Raises :class:`InputRejected` for a document the input gate refuses (too deep, a NUL)."""
    text = request.POST.get("document", "")
    json_check(text)
    return apply_schema_fields(_document_schema(kind), text, request.POST)


def _gate_errors(error: InputRejected) -> list[dict[str, str]]:
    return [{"path": "", "message": str(error)}]


def _length_errors(form: dict[str, str]) -> list[dict[str, str]]:
    """The form's text past its column's length: an error here, not a DataError at the
    database (the API's serializer says the same)."""
    errors = []
    for name in ("title", "rationale"):
        limit = Proposal._meta.get_field(name).max_length
        if limit is not None and len(form[name]) > limit:
            errors.append({"path": name, "message": f"At most {limit} characters."})
    return errors


def _proposal_form_page(
    request: HttpRequest,
    community: Community,
    *,
    kind: str,
    base: Any,
    form: dict[str, str],
    errors: list[dict[str, str]],
    proposal: Proposal | None = None,
) -> HttpResponse:
    try:
        shown = json_loads(form["document"])
    except ValueError:  # not JSON, or refused by the gate: the form shows the base
        shown = base.document
    fields = schema_fields(_document_schema(kind), shown)
    sections: dict[str, list[Any]] = {}
    for item in fields:
        sections.setdefault(item.section, []).append(item)
    return render(
        request,
        "governance/proposal_new.html",
        {
            "community": community,
            "form": form,
            "errors": errors,
            "base": base,
            "kind": kind,
            "proposal": proposal,
            "sections": sections,
        },
        status=400 if errors else 200,
    )


@login_required
def proposal_new(request: HttpRequest, slug: str) -> HttpResponse:
    community = get_object_or_404(Community, slug=slug)
    kind = _proposal_kind(request)
    current: Any = (
        charter_version_current(community=community)
        if kind == Proposal.Kind.CHARTER
        else policy_version_current(community=community)
    )
    form = {
        "title": "",
        "rationale": "",
        "document": json.dumps(current.document, indent=2, sort_keys=True),
    }
    errors: list[dict[str, str]] = []
    if request.method == "POST":
        form = {key: request.POST.get(key, "") for key in form}
        errors = _length_errors(form)
        try:
            form["document"] = _posted_document(request, kind)
            member = _member_or_403(request, community)
            if errors:
                raise PolicyError(errors)
            proposal = services.proposal_create(
                community=community,
                author=member,
                title=form["title"],
                rationale=form["rationale"],
                document=form["document"],
                kind=kind,
            )
        except PolicyError as error:
            errors = error.errors
        except InputRejected as error:
            errors = _gate_errors(error)
        except GovernanceError as error:
            return _error_page(request, community, error)
        else:
            return redirect("governance:proposal", slug=slug, pk=proposal.pk)
    return _proposal_form_page(
        request, community, kind=kind, base=current, form=form, errors=errors
    )


@login_required
def proposal_edit(request: HttpRequest, slug: str, pk: int) -> HttpResponse:
    """The author, moderators and admins edit a draft (the same editor as a new proposal)."""
    community = get_object_or_404(Community, slug=slug)
    proposal = get_object_or_404(proposals_of(community=community), pk=pk)
    form = {
        "title": proposal.title,
        "rationale": proposal.rationale,
        "document": json.dumps(proposal.document, indent=2, sort_keys=True),
    }
    errors: list[dict[str, str]] = []
    try:
        member = _member_or_403(request, community)
        if request.method == "POST":
            form = {key: request.POST.get(key, "") for key in form}
            try:
                form["document"] = _posted_document(request, proposal.kind)
                if length_errors := _length_errors(form):
                    raise PolicyError(length_errors)
                services.proposal_update(
                    proposal=proposal,
                    actor=member,
                    title=form["title"],
                    rationale=form["rationale"],
                    document=form["document"],
                )
            except PolicyError as error:
                errors = error.errors
            except InputRejected as error:
                errors = _gate_errors(error)
            else:
                return redirect("governance:proposal", slug=slug, pk=proposal.pk)
        elif proposal.state != Proposal.State.DRAFT:
            raise InvalidTransition(
                f"Proposal {proposal.pk} is {proposal.state}: only a draft can be edited."
            )
        elif not (member.pk == proposal.author_id or member.role != Membership.Role.MEMBER):
            raise NotPermitted("Only the author, moderators and admins may edit a draft.")
    except GovernanceError as error:
        return _error_page(request, community, error)
    return _proposal_form_page(
        request,
        community,
        kind=proposal.kind,
        base=proposal.base,
        form=form,
        errors=errors,
        proposal=proposal,
    )


@require_POST
def proposal_check(request: HttpRequest, slug: str) -> HttpResponse:
    """The editor's live check (htmx, as the member types): the document's problems with their
    field paths, or the changes it makes against its base version. Writes nothing."""
    community = get_object_or_404(Community, slug=slug)
    if membership_of_user(community=community, user=request.user) is None:
        return HttpResponse("Sign in as a member of this community.", status=403)
    kind = _proposal_kind(request)
    proposal_id = request.POST.get("proposal", "")
    base: Any
    if proposal_id.isdigit():
        proposal = get_object_or_404(proposals_of(community=community), pk=int(proposal_id))
        base, kind = proposal.base, proposal.kind
    elif kind == Proposal.Kind.CHARTER:
        base = charter_version_current(community=community)
    else:
        base = policy_version_current(community=community)
    document = request.POST.get("document", "")
    errors: list[dict[str, str]] = []
    changes: list[dict[str, str]] = []
    status = 200
    try:
        json_check(document)
        validated: Any = (
            services.charter_validate(document)
            if kind == Proposal.Kind.CHARTER
            else policy_validate(document)
        )
    except PolicyError as error:
        errors = error.errors
    except InputRejected as error:
        # A refused document is the client's error (a policy's problems are the check's answer,
        # 200); htmx still swaps a 4xx fragment (htmx-config in base.html).
        errors, status = _gate_errors(error), 400
    else:
        changes = _diff_rows(base.document, validated.model_dump(mode="json"))
    return render(
        request,
        "governance/_document_check.html",
        {"errors": errors, "changes": changes, "base": base, "kind": kind},
        status=status,
    )


def proposal_detail(request: HttpRequest, slug: str, pk: int) -> HttpResponse:
    community = get_object_or_404(Community, slug=slug)
    proposal = get_object_or_404(proposals_of(community=community), pk=pk)
    context = _ballot_context(request, community, proposal)
    member = context["member"]
    return render(
        request,
        "governance/proposal.html",
        {
            **context,
            "changes": _diff_rows(proposal.base.document, proposal.document),
            "may_manage": member is not None
            and (member.pk == proposal.author_id or member.role != Membership.Role.MEMBER),
        },
    )


@never_cache
def proposal_tally_fragment(request: HttpRequest, slug: str, pk: int) -> HttpResponse:
    """The tally as the proposal page shows it, for htmx to poll while voting is open.

    Public like the page; nothing the page does not show. 404 for an unknown proposal and for a
    draft (no tally before voting opens). Once the proposal is no longer open, htmx requests get
    status 286 with the final tally, which swaps it in and stops the polling.
    """
    community = get_object_or_404(Community, slug=slug)
    proposal = get_object_or_404(proposals_of(community=community), pk=pk, opens_at__isnull=False)
    response = render(
        request,
        "governance/_tally.html",
        {"proposal": proposal, "tally": proposal_tally(proposal=proposal)},
    )
    if proposal.state != Proposal.State.OPEN and _is_htmx(request):
        response.status_code = HTMX_STOP_POLLING
    return response


def _ballot_fragment(
    request: HttpRequest,
    community: Community,
    proposal: Proposal,
    *,
    notice: str = "",
    error: str = "",
    status: int = 200,
) -> HttpResponse:
    """The ballot area, plus the tally swapped out of band: htmx's answer to a ballot."""
    proposal.refresh_from_db()
    context = {**_ballot_context(request, community, proposal), "notice": notice, "error": error}
    return render(request, "governance/_ballot_response.html", context, status=status)


@require_POST
def proposal_vote(request: HttpRequest, slug: str, pk: int) -> HttpResponse:
    if not request.user.is_authenticated:
        # Not @login_required: htmx would follow its 302 and swap the login page into the ballot
        # area. htmx gets HX-Redirect instead (a full-page visit); plain posts get the 302.
        to_login = redirect_to_login(reverse("governance:proposal", args=[slug, pk]))
        if _is_htmx(request):
            return HttpResponse(status=204, headers={"HX-Redirect": to_login.url})
        return to_login
    # With JavaScript the form posts through htmx and gets the ballot area back; without it, a
    # normal POST answers with a redirect to the page (or the error page).
    htmx = _is_htmx(request)
    choice = request.POST.get("choice", "")
    # The hot path, as in the API: the member in one query, then one call that checks the
    # proposal, writes the ballot and its audit entry and commits. The community and the
    # proposal are loaded only to render a fragment or to explain a refusal (404 first).
    ballot, error = None, None
    member = (
        services.ballot_member(slug=slug, user=request.user)
        if choice in Ballot.Choice.values
        else None
    )
    if member is not None:
        try:
            ballot = services.ballot_cast_id(proposal_id=pk, member=member, choice=choice)
        except Proposal.DoesNotExist:
            pass  # the 404 comes from the lookups below
        except GovernanceError as refused:
            error = refused
    if ballot is not None and not htmx:
        messages.success(request, f"Your ballot is counted. Receipt: {ballot.receipt}")
        return redirect("governance:proposal", slug=slug, pk=pk)
    community = get_object_or_404(Community, slug=slug)
    proposal = get_object_or_404(Proposal, community=community, pk=pk)
    if choice not in Ballot.Choice.values:
        message = "Choose yes, no or abstain."
        if htmx:
            return _ballot_fragment(request, community, proposal, error=message, status=400)
        messages.error(request, message)
        return redirect("governance:proposal", slug=slug, pk=pk)
    if ballot is None and error is None:
        error = NotPermitted(f"You are not a member of {community.name}.")
    if error is not None:
        if htmx:
            return _ballot_fragment(
                request, community, proposal, error=str(error), status=http_status(error)
            )
        return _error_page(request, community, error)
    assert ballot is not None
    notice = f"Your ballot is counted. Receipt: {ballot.receipt}"
    return _ballot_fragment(request, community, proposal, notice=notice)


@require_POST
@login_required
def proposal_transition(request: HttpRequest, slug: str, pk: int, action: str) -> HttpResponse:
    community = get_object_or_404(Community, slug=slug)
    proposal = get_object_or_404(Proposal, community=community, pk=pk)
    service = {
        "open": services.proposal_open,
        "withdraw": services.proposal_withdraw,
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
    # Incremental: only entries added since the last verified head are hashed (docs/audit.md).
    chain = audit_verify_cached(community=community)
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
            "chain": chain if chain.head_seq or chain.problem else None,
            "query": query.urlencode(),
        },
        status=200 if form.is_valid() else 400,
    )


# --- Members and roles (the community's admins) ------------------------------------------------

MEMBERS_PAGE_SIZE = 50


def _admin_or_403(request: HttpRequest, community: Community) -> Membership:
    member = _member_or_403(request, community)
    if member.role != Membership.Role.ADMIN:
        raise NotPermitted(f"Only the admins of {community.name} manage its members.")
    return member


def _members_page(
    request: HttpRequest,
    community: Community,
    admin: Membership,
    *,
    add_form: MemberAddForm | None = None,
    error: str = "",
    status: int = 200,
) -> HttpResponse:
    query = request.GET.get("q", "").strip()[:255]
    members = memberships_of(community=community, query=query)
    return render(
        request,
        "governance/members.html",
        {
            "community": community,
            "member": admin,
            "page": Paginator(members, MEMBERS_PAGE_SIZE).get_page(request.GET.get("page")),
            "query": query,
            "roles": Membership.Role.choices,
            "add_form": add_form or MemberAddForm(community=community),
            "error": error,
        },
        status=status,
    )


@login_required
def members(request: HttpRequest, slug: str) -> HttpResponse:
    """Admins list the members and add an existing user as a member."""
    community = get_object_or_404(Community, slug=slug)
    try:
        admin = _admin_or_403(request, community)
    except GovernanceError as error:
        return _error_page(request, community, error)
    if request.method != "POST":
        return _members_page(request, community, admin)
    form = MemberAddForm(request.POST, community=community)
    if form.is_valid():
        try:
            added = services.membership_create(
                community=community,
                external_id=form.cleaned_data["external_id"],
                user=form.user,
                role=form.cleaned_data["role"],
                actor=request.user,
            )
        except (IntegrityError, ValidationError):
            # Another request added the same user or external id since the form checked.
            form.add_error(None, "That user or external id is already a member.")
        else:
            messages.success(
                request, f"Added {form.cleaned_data['username']} as {added.get_role_display()}."
            )
            return redirect("governance:members", slug=slug)
    return _members_page(request, community, admin, add_form=form, status=400)


def _managed_member(request: HttpRequest, slug: str, pk: int) -> Any:
    """(community, admin, target membership) or an error response."""
    community = get_object_or_404(Community, slug=slug)
    try:
        admin = _admin_or_403(request, community)
    except GovernanceError as error:
        return _error_page(request, community, error)
    return community, admin, get_object_or_404(Membership, community=community, pk=pk)


@require_POST
@login_required
def member_role(request: HttpRequest, slug: str, pk: int) -> HttpResponse:
    """Admins change a member's role (not the last admin's: see membership_set_role)."""
    found = _managed_member(request, slug, pk)
    if isinstance(found, HttpResponse):
        return found
    community, admin, target = found
    form = MemberRoleForm(request.POST)
    if not form.is_valid():
        message = "Choose a role: member, moderator or admin."
        return _members_page(request, community, admin, error=message, status=400)
    try:
        services.membership_set_role(
            membership=target, role=form.cleaned_data["role"], actor=request.user
        )
    except GovernanceError as error:
        return _members_page(request, community, admin, error=str(error), status=http_status(error))
    messages.success(request, f"{target.external_id} is now {target.get_role_display()}.")
    return redirect("governance:members", slug=slug)


@require_POST
@login_required
def member_remove(request: HttpRequest, slug: str, pk: int) -> HttpResponse:
    """Admins remove a member (see membership_remove for what goes with them and when not)."""
    found = _managed_member(request, slug, pk)
    if isinstance(found, HttpResponse):
        return found
    community, admin, target = found
    form = MemberRemoveForm(request.POST)
    if not form.is_valid():
        message = f"Tick the box to confirm removing {target.external_id}."
        return _members_page(request, community, admin, error=message, status=400)
    try:
        services.membership_remove(membership=target, actor=request.user)
    except GovernanceError as error:
        return _members_page(request, community, admin, error=str(error), status=http_status(error))
    messages.success(request, f"Removed {target.external_id}.")
    if target.pk == admin.pk:
        return redirect("governance:home", slug=slug)
    return redirect("governance:members", slug=slug)
