"""The governance API (DRF): the public audit log, and proposals and ballots for members.

Views are thin: parse, one service or selector call, serialize. Governance never imports
``feeds`` (import-linter contract), so the error format of ``feeds.apis`` is repeated here: every
error reads ``{"error": code, "detail": ...}``.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.http import Http404
from django.shortcuts import get_object_or_404
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import exceptions, serializers
from rest_framework.authentication import SessionAuthentication
from rest_framework.permissions import AllowAny, IsAuthenticated
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView
from rest_framework.views import exception_handler as drf_exception_handler

from config.input_gate import StrictInputSerializer, no_body_fields
from governance import audit_chain, services
from governance.diff import ABSENT, policy_diff
from governance.errors import GovernanceError, NotPermitted, http_status
from governance.models import Ballot, Community, Membership, Proposal
from governance.selectors import (
    audit_filtered,
    audit_stored,
    audit_verify_cached,
    ballot_of,
    membership_of_user,
    proposal_tally,
    proposals_of,
    proposals_with_counts,
)
from ranking.policy import PolicyError

# --- Errors --------------------------------------------------------------------------------------


class PayloadTooLarge(exceptions.APIException):
    status_code = 413
    default_code = "payload_too_large"
    default_detail = "The request body is too large."


def exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    """Governance errors, invalid policies and oversized bodies as ``{"error", "detail"}``."""
    if isinstance(exc, RequestDataTooBig):
        # Django would answer 400 (a SuspiciousOperation); an oversized body is a 413.
        exc = PayloadTooLarge(
            f"The request body exceeds the limit of {settings.DATA_UPLOAD_MAX_MEMORY_SIZE} bytes."
        )
    if isinstance(exc, PolicyError):
        return Response({"error": "invalid", "detail": {"document": exc.errors}}, status=400)
    if isinstance(exc, GovernanceError):
        return Response({"error": exc.code, "detail": str(exc)}, status=http_status(exc))
    response = drf_exception_handler(exc, context)
    if response is None:
        return None
    if isinstance(exc, Http404):
        code = "not_found"
    elif isinstance(exc, exceptions.APIException):
        codes = exc.get_codes()
        code = codes if isinstance(codes, str) else "invalid"
    else:  # pragma: no cover - DRF only handles the two kinds above
        code = "error"
    data = response.data
    detail = data.get("detail", data) if isinstance(data, dict) else data
    response.data = {"error": code, "detail": detail}
    return response


class GovernanceApi(APIView):
    """Base of the governance views: their own exception handler (not the project default)."""

    def get_exception_handler(self) -> Any:
        return exception_handler


class GovernanceErrorOutput(serializers.Serializer[Any]):
    """The same shape as the app API's errors."""

    error = serializers.CharField(help_text="A stable, machine-readable code.")
    detail = serializers.JSONField(help_text="What went wrong, for people.")


class QueryIntegerField(serializers.IntegerField):
    """An integer query parameter where ``?limit=`` (present, blank) is an error, not "absent".

    DRF reads a blank optional form value as omitted; for a query string that hides a client's
    bug, and the OpenAPI schema says the parameter is an integer.
    """

    def get_value(self, dictionary: Any) -> Any:
        if dictionary.get(self.field_name) == "":
            return ""
        return super().get_value(dictionary)


class QuerySerializer(serializers.Serializer[Any]):
    """Validates ``request.query_params``. A parameter given more than once is an error: the
    schema documents one value, and DRF would silently keep the last."""

    def to_internal_value(self, data: Any) -> Any:
        if hasattr(data, "getlist"):
            repeated = {
                name: ["Give this parameter once."]
                for name in self.fields
                if len(data.getlist(name)) > 1
            }
            if repeated:
                raise serializers.ValidationError(repeated)
        return super().to_internal_value(data)


def _errors(*statuses: int) -> dict[int, Any]:
    return {status: GovernanceErrorOutput for status in statuses}


# --- Strict input fields (JSON types must match the schema; no silent coercion) ------------------


class StrictCharField(serializers.CharField):
    def to_internal_value(self, data: Any) -> str:
        if not isinstance(data, str):
            self.fail("invalid")
        return super().to_internal_value(data)  # type: ignore[no-any-return]


class StrictChoiceField(serializers.ChoiceField):
    def to_internal_value(self, data: Any) -> Any:
        if not isinstance(data, str):
            self.fail("invalid_choice", input=data)
        return super().to_internal_value(data)


class StrictObjectField(serializers.DictField):
    """A JSON object, passed through as it is (the policy validator judges its content)."""

    def to_internal_value(self, data: Any) -> dict[str, Any]:
        if not isinstance(data, dict):
            self.fail("not_a_dict", input_type=type(data).__name__)
        return data


# --- The public audit log ------------------------------------------------------------------------


class AuditEntryOutput(serializers.Serializer[Any]):
    """One entry exactly as ``audit_export`` writes it: what a third party needs to verify."""

    v = serializers.IntegerField(help_text="Format version (1).")
    community = serializers.IntegerField(help_text="The community's database id.")
    seq = serializers.IntegerField(help_text="Position in the community's chain, from 1.")
    created_at = serializers.CharField(help_text="UTC with microseconds and `Z`, as hashed.")
    actor_id = serializers.IntegerField(allow_null=True)
    actor_label = serializers.CharField()
    action = serializers.CharField()
    object_type = serializers.CharField()
    object_id = serializers.CharField()
    payload = serializers.JSONField()
    prev_hash = serializers.CharField(help_text="64 hex digits.")
    entry_hash = serializers.CharField(help_text="64 hex digits.")


class ChainProblemOutput(serializers.Serializer[Any]):
    seq = serializers.IntegerField(help_text="The first bad entry (for a gap: the missing seq).")
    kind = serializers.CharField(
        help_text="gap, duplicate, reordered, broken link, hash mismatch, or (against the head "
        "this server verified earlier) truncated or rewritten."
    )
    detail = serializers.CharField()


class ChainOutput(serializers.Serializer[Any]):
    ok = serializers.BooleanField()
    count = serializers.IntegerField(help_text="Entries verified before the first problem.")
    head_seq = serializers.IntegerField()
    head_hash = serializers.CharField()
    problem = ChainProblemOutput(allow_null=True)


class AuditLogOutput(serializers.Serializer[Any]):
    entries = AuditEntryOutput(many=True)
    next_after_seq = serializers.IntegerField(
        allow_null=True, help_text="Pass as `after_seq` for the next page; null on the last page."
    )
    chain = ChainOutput(help_text="The server's verification of the community's whole chain.")


def chain_summary(*, community: Community) -> dict[str, Any]:
    """The verification of the community's chain, for the API and the page."""
    # Incremental: only entries added since the last verified head are hashed (docs/audit.md).
    state = audit_verify_cached(community=community)
    problem = state.problem
    return {
        "ok": problem is None,
        "count": state.count,
        "head_seq": state.head_seq,
        "head_hash": state.head_hash,
        "problem": None
        if problem is None
        else {"seq": problem.seq, "kind": problem.kind, "detail": problem.detail},
    }


class AuditLogApi(GovernanceApi):
    # The log is public by design: anyone may read and verify a community's history.
    permission_classes = [AllowAny]
    authentication_classes: list[Any] = []

    class InputSerializer(QuerySerializer):
        # Blank means "any", as the page's filter form sends it.
        action = serializers.CharField(
            required=False,
            allow_blank=True,
            max_length=64,
            help_text="Only entries with this action (blank: any).",
        )
        actor = serializers.CharField(
            required=False,
            allow_blank=True,
            max_length=150,
            help_text="Only entries with this actor label (blank: any).",
        )
        after_seq = QueryIntegerField(
            required=False,
            min_value=0,
            max_value=2**63 - 1,
            help_text="Only entries after this seq (the previous page's `next_after_seq`).",
        )
        limit = QueryIntegerField(
            required=False, min_value=1, max_value=1000, help_text="Entries per page (100)."
        )

    @extend_schema(
        parameters=[InputSerializer],
        responses={200: AuditLogOutput, **_errors(400, 404)},
        summary="A community's audit log",
        description=(
            "Public, no authentication. Entries in chain order (seq ascending), each exactly as "
            "`manage.py audit_export` writes it, so the standalone verifier of docs/audit.md "
            "checks them. Pages by seq: pass the returned `next_after_seq` as `after_seq`. "
            "`chain` is the server's verification of the whole chain."
        ),
    )
    def get(self, request: Request, slug: str) -> Response:
        params = self.InputSerializer(data=request.query_params)
        params.is_valid(raise_exception=True)
        community = get_object_or_404(Community, slug=slug)
        data = params.validated_data
        limit = data.get("limit", 100)
        rows = audit_filtered(
            community=community, action=data.get("action"), actor=data.get("actor")
        ).filter(seq__gt=data.get("after_seq", 0))
        # One row more than the page tells whether another page follows.
        page = list(rows[: limit + 1])
        more = len(page) > limit
        page = page[:limit]
        entries = [audit_chain.export_line(audit_stored(entry)) for entry in page]
        body = {
            "entries": entries,
            "next_after_seq": page[-1].seq if more else None,
            "chain": chain_summary(community=community),
        }
        return Response(AuditLogOutput(body).data)


# --- Proposals and ballots -----------------------------------------------------------------------


PROPOSAL_ID = OpenApiParameter("id", OpenApiTypes.INT, OpenApiParameter.PATH)


class MemberApi(GovernanceApi):
    """Signed-in members of the community (a browser session; CSRF token on writes)."""

    authentication_classes = [SessionAuthentication]
    permission_classes = [IsAuthenticated]

    def community_member(self, request: Request, slug: str) -> tuple[Community, Membership]:
        community = get_object_or_404(Community, slug=slug)
        member = membership_of_user(community=community, user=request.user)
        if member is None:
            raise NotPermitted(f"You are not a member of {community.slug}.")
        return community, member

    def proposal(self, community: Community, pk: str) -> Proposal:
        # The URL takes any segment so that a malformed id is a JSON 404, not Django's HTML one.
        if not (pk.isascii() and pk.isdigit() and len(pk) <= 18):
            raise exceptions.NotFound("No such proposal.")
        return get_object_or_404(proposals_of(community=community), pk=int(pk))


class CountsOutput(serializers.Serializer[Any]):
    yes = serializers.IntegerField()
    no = serializers.IntegerField()
    abstain = serializers.IntegerField()


class ProposalSummaryOutput(serializers.Serializer[Any]):
    id = serializers.IntegerField(source="pk")
    title = serializers.CharField()
    state = serializers.ChoiceField(choices=Proposal.State.choices)
    kind = serializers.ChoiceField(
        choices=Proposal.Kind.choices, help_text="What it changes: the policy or the charter."
    )
    author = serializers.CharField(source="author.external_id")
    base_version = serializers.IntegerField(
        source="base.number", help_text="The policy (or charter) version it was drafted on."
    )
    created_at = serializers.DateTimeField()
    opens_at = serializers.DateTimeField(allow_null=True)
    closes_at = serializers.DateTimeField(allow_null=True)
    electorate_size = serializers.IntegerField(allow_null=True)
    counts = CountsOutput(
        allow_null=True,
        help_text="Current ballots while open; the counted ones once closed; null for drafts.",
    )


def _counts(proposal: Proposal, tally: dict[str, Any] | None = None) -> dict[str, int] | None:
    if proposal.closed_at is not None:
        return {
            "yes": proposal.yes_count or 0,
            "no": proposal.no_count or 0,
            "abstain": proposal.abstain_count or 0,
        }
    if proposal.opens_at is None:
        return None
    if tally is not None:
        return {"yes": tally["yes"], "no": tally["no"], "abstain": tally["abstain"]}
    return {
        "yes": proposal.n_yes,  # type: ignore[attr-defined]
        "no": proposal.n_no,  # type: ignore[attr-defined]
        "abstain": proposal.n_abstain,  # type: ignore[attr-defined]
    }


class ChangeOutput(serializers.Serializer[Any]):
    path = serializers.CharField(help_text="Dotted path of the changed field.")
    kind = serializers.ChoiceField(choices=["added", "removed", "changed"])
    old = serializers.JSONField(allow_null=True, help_text="null when added.")
    new = serializers.JSONField(allow_null=True, help_text="null when removed.")


class TallyOutput(serializers.Serializer[Any]):
    yes = serializers.IntegerField()
    no = serializers.IntegerField()
    abstain = serializers.IntegerField()
    voters = serializers.IntegerField()
    electorate_size = serializers.IntegerField()
    turnout = serializers.FloatField()
    quorum = serializers.FloatField(allow_null=True)
    quorum_met = serializers.BooleanField()
    approval = serializers.FloatField(allow_null=True)
    approval_threshold = serializers.FloatField(allow_null=True)


class MyBallotOutput(serializers.Serializer[Any]):
    choice = serializers.ChoiceField(choices=Ballot.Choice.choices)
    cast_at = serializers.DateTimeField()
    receipt = serializers.CharField()


class ProposalDetailOutput(ProposalSummaryOutput):
    rationale = serializers.CharField()
    document = serializers.JSONField(
        help_text="The proposed policy (or charter), every default spelled out."
    )
    changes = ChangeOutput(many=True, help_text="The changes against the base version.")
    tally = TallyOutput(allow_null=True, help_text="null until voting opens.")
    ratified_version = serializers.IntegerField(
        source="ratified.number",
        allow_null=True,
        default=None,
        help_text="The policy (or charter) version its ratification created.",
    )
    conflict_paths = serializers.ListField(child=serializers.CharField())
    in_electorate = serializers.BooleanField(help_text="Whether you may vote on it.")
    my_ballot = MyBallotOutput(allow_null=True, help_text="Your current ballot, if any.")


def _change(change: Any) -> dict[str, Any]:
    kind = "added" if change.old is ABSENT else "removed" if change.new is ABSENT else "changed"
    return {
        "path": change.path,
        "kind": kind,
        "old": None if change.old is ABSENT else change.old,
        "new": None if change.new is ABSENT else change.new,
    }


def proposal_detail_data(proposal: Proposal, member: Membership) -> dict[str, Any]:
    tally = proposal_tally(proposal=proposal) if proposal.opens_at else None
    proposal.counts = _counts(proposal, tally)  # type: ignore[attr-defined]
    proposal.tally = tally  # type: ignore[attr-defined]
    proposal.changes = [  # type: ignore[attr-defined]
        _change(c) for c in policy_diff(proposal.base.document, proposal.document)
    ]
    proposal.in_electorate = proposal.electorate.filter(member=member).exists()  # type: ignore[attr-defined]
    proposal.my_ballot = ballot_of(proposal=proposal, member=member)  # type: ignore[attr-defined]
    return ProposalDetailOutput(proposal).data  # type: ignore[no-any-return]


class ProposalListOutput(serializers.Serializer[Any]):
    proposals = ProposalSummaryOutput(many=True)


class ProposalsApi(MemberApi):
    class ProposalCreateInput(StrictInputSerializer):
        title = StrictCharField(max_length=200)
        rationale = StrictCharField(max_length=20_000, allow_blank=True, required=False)
        kind = StrictChoiceField(
            choices=Proposal.Kind.choices,
            required=False,
            help_text="`policy` (default) or `charter`: which document `document` replaces.",
        )
        document = StrictObjectField(
            help_text=(
                "The proposed policy document (see the policy JSON Schema), or for `kind` "
                "`charter` the whole proposed charter."
            )
        )

    @extend_schema(
        responses={200: ProposalListOutput, **_errors(403, 404)},
        operation_id="proposals_list",
        summary="The community's proposals",
        description="Newest first, with state and ballot counts. Members only (session).",
    )
    def get(self, request: Request, slug: str) -> Response:
        community, _member = self.community_member(request, slug)
        proposals = list(proposals_with_counts(community=community))
        for proposal in proposals:
            proposal.counts = _counts(proposal)  # type: ignore[attr-defined]
        return Response(ProposalListOutput({"proposals": proposals}).data)

    @extend_schema(
        request=ProposalCreateInput,
        responses={
            201: ProposalDetailOutput,
            400: OpenApiResponse(
                GovernanceErrorOutput,
                description=(
                    'Invalid input; an invalid policy or charter reads `{"error": "invalid", '
                    '"detail": {"document": [{"path": ..., "message": ...}]}}`.'
                ),
            ),
            **_errors(403, 404, 413),
        },
        summary="Draft a proposal",
        description=(
            "Drafts a proposal to replace the current policy (or, with `kind` `charter`, the "
            "current charter) with `document`. The charter says who may propose; a charter "
            "change needs the charter's `charter_change_supermajority`. Send the CSRF token "
            "(`X-CSRFToken`)."
        ),
    )
    def post(self, request: Request, slug: str) -> Response:
        community, member = self.community_member(request, slug)
        data = self.ProposalCreateInput(data=request.data)
        data.is_valid(raise_exception=True)
        proposal = services.proposal_create(
            community=community,
            author=member,
            title=data.validated_data["title"],
            rationale=data.validated_data.get("rationale", ""),
            document=data.validated_data["document"],
            kind=data.validated_data.get("kind", Proposal.Kind.POLICY),
        )
        proposal = self.proposal(community, str(proposal.pk))
        return Response(proposal_detail_data(proposal, member), status=201)


class ProposalApi(MemberApi):
    @extend_schema(
        responses={200: ProposalDetailOutput, **_errors(403, 404)},
        parameters=[PROPOSAL_ID],
        operation_id="proposal_retrieve",
        summary="A proposal",
        description="With its changes against the base version, the tally and your ballot.",
    )
    def get(self, request: Request, slug: str, pk: str) -> Response:
        community, member = self.community_member(request, slug)
        return Response(proposal_detail_data(self.proposal(community, pk), member))

    class ProposalUpdateInput(StrictInputSerializer):
        title = StrictCharField(max_length=200, required=False)
        rationale = StrictCharField(max_length=20_000, allow_blank=True, required=False)
        document = StrictObjectField(
            required=False,
            help_text="The whole proposed document (policy, or charter for a charter proposal).",
        )

    @extend_schema(
        request=ProposalUpdateInput,
        responses={
            200: ProposalDetailOutput,
            400: OpenApiResponse(
                GovernanceErrorOutput,
                description="Invalid input; an invalid document lists its field paths.",
            ),
            **_errors(403, 404, 413),
            409: OpenApiResponse(GovernanceErrorOutput, description="Not a draft any more."),
        },
        parameters=[PROPOSAL_ID],
        operation_id="proposal_partial_update",
        summary="Edit a draft",
        description=(
            "Changes the fields given (title, rationale, document) of a draft; an open or "
            "decided proposal never changes (409). Author, moderators and admins. Audited as "
            "`proposal.updated`. Send the CSRF token (`X-CSRFToken`)."
        ),
    )
    def patch(self, request: Request, slug: str, pk: str) -> Response:
        community, member = self.community_member(request, slug)
        proposal = self.proposal(community, pk)
        data = self.ProposalUpdateInput(data=request.data)
        data.is_valid(raise_exception=True)
        services.proposal_update(
            proposal=proposal,
            actor=member,
            title=data.validated_data.get("title"),
            rationale=data.validated_data.get("rationale"),
            document=data.validated_data.get("document"),
        )
        return Response(proposal_detail_data(self.proposal(community, pk), member))


class ProposalTransitionApi(MemberApi):
    service: Any = None

    def post(self, request: Request, slug: str, pk: str) -> Response:
        community, member = self.community_member(request, slug)
        proposal = self.proposal(community, pk)
        no_body_fields(request.data)
        type(self).service(proposal=proposal, actor=member)
        return Response(proposal_detail_data(self.proposal(community, pk), member))


_TRANSITION_RESPONSES = {
    200: ProposalDetailOutput,
    **_errors(403, 404),
    409: OpenApiResponse(
        GovernanceErrorOutput, description="Not in a state this step starts from."
    ),
}


class ProposalOpenApi(ProposalTransitionApi):
    service = services.proposal_open

    @extend_schema(
        request=None,
        responses=_TRANSITION_RESPONSES,
        parameters=[PROPOSAL_ID],
        summary="Open voting",
        description="Freezes the electorate and the charter's rules. Author, moderators, admins.",
    )
    def post(self, request: Request, slug: str, pk: str) -> Response:
        return super().post(request, slug, pk)


class ProposalWithdrawApi(ProposalTransitionApi):
    service = services.proposal_withdraw

    @extend_schema(
        request=None,
        responses=_TRANSITION_RESPONSES,
        parameters=[PROPOSAL_ID],
        summary="Withdraw a proposal",
        description="A draft or an open proposal. Author, moderators, admins.",
    )
    def post(self, request: Request, slug: str, pk: str) -> Response:
        return super().post(request, slug, pk)


class BallotOutput(serializers.Serializer[Any]):
    proposal = serializers.IntegerField(source="proposal_id")
    choice = serializers.ChoiceField(choices=Ballot.Choice.choices)
    cast_at = serializers.DateTimeField()
    receipt = serializers.CharField(
        help_text="Find it in the audit log's ballot.cast / ballot.changed entry."
    )


class BallotApi(MemberApi):
    class BallotInput(StrictInputSerializer):
        choice = StrictChoiceField(choices=Ballot.Choice.choices)

    @extend_schema(
        request=BallotInput,
        responses={
            200: BallotOutput,
            **_errors(400, 404, 413),
            403: OpenApiResponse(
                GovernanceErrorOutput, description="Not a member, or not in the electorate."
            ),
            409: OpenApiResponse(
                GovernanceErrorOutput, description="The proposal is not open for voting."
            ),
        },
        parameters=[PROPOSAL_ID],
        summary="Cast or change your ballot",
        description="Returns your receipt. Send the CSRF token (`X-CSRFToken`).",
    )
    def put(self, request: Request, slug: str, pk: str) -> Response:
        # The hot path of voting: one query for the member, then one call that locks, checks,
        # writes the ballot and its audit entry and commits in the database (see
        # ``services.ballot_cast_id``). The community is only loaded to explain a 404.
        member = services.ballot_member(slug=slug, user=request.user)
        if member is None:
            get_object_or_404(Community, slug=slug)
            raise NotPermitted(f"You are not a member of {slug}.")
        data = self.BallotInput(data=request.data)
        data.is_valid(raise_exception=True)
        if not (pk.isascii() and pk.isdigit() and len(pk) <= 18):
            raise exceptions.NotFound("No such proposal.")
        try:
            ballot = services.ballot_cast_id(
                proposal_id=int(pk), member=member, choice=data.validated_data["choice"]
            )
        except Proposal.DoesNotExist:
            raise exceptions.NotFound("No such proposal.") from None
        return Response(BallotOutput(ballot).data)
