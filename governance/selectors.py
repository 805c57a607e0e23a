"""Governance reads."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import date, datetime, time, timedelta
from fractions import Fraction
from typing import Any

from django.core.cache import cache
from django.db.models import Case, Count, IntegerField, Q, QuerySet, Value, When
from django.utils import timezone

from governance import audit_chain
from governance.charter import Charter
from governance.models import (
    AuditEntry,
    Ballot,
    CharterVersion,
    Community,
    Membership,
    PolicyVersion,
    Proposal,
)
from ranking.policy import Policy

logger = logging.getLogger(__name__)

_AUDIT_COLUMNS = (
    "community_id",
    "seq",
    "created_at",
    "actor_id",
    "actor_label",
    "action",
    "object_type",
    "object_id",
    "payload_json",
    "prev_hash",
    "entry_hash",
)


def policy_version_current(*, community: Community) -> PolicyVersion:
    """The community's current policy version (there is exactly one; the database guarantees it)."""
    return PolicyVersion.objects.get(community=community, is_current=True)


def policy_of(version: PolicyVersion) -> Policy:
    """Parse a stored policy document."""
    return Policy.model_validate(version.document)


def charter_version_current(*, community: Community) -> CharterVersion:
    """The community's current charter version."""
    return CharterVersion.objects.get(community=community, is_current=True)


def charter_of(version: CharterVersion) -> Charter:
    """Parse a stored charter document."""
    return Charter.model_validate(version.document)


def audit_entries(*, community: Community | None = None) -> QuerySet[AuditEntry]:
    """Audit entries in chain order: by community, then seq."""
    entries = AuditEntry.objects.order_by("community_id", "seq")
    return entries if community is None else entries.filter(community=community)


def audit_stream(
    *, community: Community | None = None, chunk_size: int = 5_000, after_seq: int = 0
) -> Iterator[audit_chain.StoredEntry]:
    """Stream entries in chain order, chunked (a server-side cursor on PostgreSQL); with
    ``after_seq``, only the entries after that seq."""
    entries = audit_entries(community=community)
    if after_seq:
        entries = entries.filter(seq__gt=after_seq)
    rows = entries.values_list(*_AUDIT_COLUMNS)
    for row in rows.iterator(chunk_size=chunk_size):
        body = audit_chain.entry_body(
            community=row[0],
            seq=row[1],
            created_at=row[2],
            actor_id=row[3],
            actor_label=row[4],
            action=row[5],
            object_type=row[6],
            object_id=row[7],
            payload_json=row[8],
        )
        yield audit_chain.StoredEntry(body=body, prev_hash=row[9], entry_hash=row[10])


def audit_stored(entry: AuditEntry) -> audit_chain.StoredEntry:
    """One stored row as the verifier sees it (body plus hashes)."""
    body = audit_chain.entry_body(
        community=entry.community_id,
        seq=entry.seq,
        created_at=entry.created_at,
        actor_id=entry.actor_id,
        actor_label=entry.actor_label,
        action=entry.action,
        object_type=entry.object_type,
        object_id=entry.object_id,
        payload_json=entry.payload_json,
    )
    return audit_chain.StoredEntry(
        body=body, prev_hash=entry.prev_hash, entry_hash=entry.entry_hash
    )


def audit_filtered(
    *,
    community: Community,
    action: str | None = None,
    actor: str | None = None,
    since: date | None = None,
    until: date | None = None,
) -> QuerySet[AuditEntry]:
    """The community's entries matching every given filter (exact action and actor label; dates
    are whole days, ``until`` included, in the server's time zone), in chain order."""
    entries = AuditEntry.objects.filter(community=community).order_by("seq")
    if action:
        entries = entries.filter(action=action)
    if actor:
        entries = entries.filter(actor_label=actor)
    # Bounds as aware datetimes, not __date lookups, so the (community, seq) index still leads
    # and the comparison means the same on PostgreSQL and SQLite.
    zone = timezone.get_current_timezone()
    if since:
        entries = entries.filter(created_at__gte=datetime.combine(since, time.min, tzinfo=zone))
    if until:
        end = datetime.combine(until + timedelta(days=1), time.min, tzinfo=zone)
        entries = entries.filter(created_at__lt=end)
    return entries


def audit_actions(*, community: Community) -> list[str]:
    """The distinct actions in the community's log, for the page's filter."""
    rows = AuditEntry.objects.filter(community=community).values_list("action", flat=True)
    return sorted(set(rows.distinct()))


def audit_locate(community_id: int, entry_hash: str) -> Any:
    """The seq of the community's entry with this hash, or None (used to diagnose reordering)."""
    return (
        AuditEntry.objects.filter(community_id=community_id, entry_hash=entry_hash)
        .values_list("seq", flat=True)
        .first()
    )


def audit_verify(*, community: Community | None = None) -> list[audit_chain.ChainState]:
    """Recompute every chain (or one community's) and return each chain's state."""
    return list(audit_chain.verify_chains(audit_stream(community=community), locate=audit_locate))


# How long a verified head stays cached. When it expires, the next request verifies the whole
# chain again, which also re-checks the entries before the head (see docs/audit.md).
AUDIT_HEAD_CACHE_SECONDS = 3600


def _audit_head_key(community: Community) -> str:
    # The creation time keeps a head cached for another database that reused the community's id
    # (a test run, a restored dump) from being compared with this chain.
    return f"governance:audit-head:{community.pk}:{community.created_at.timestamp():.6f}"


def _audit_head_intact(*, community: Community, seq: int, head_hash: str) -> bool:
    """Whether the stored entry at ``seq`` still has ``head_hash`` and content that hashes to it."""
    entry = AuditEntry.objects.filter(community=community, seq=seq).first()
    if entry is None or entry.entry_hash != head_hash:
        return False
    stored = audit_stored(entry)
    return audit_chain.entry_hash(stored.prev_hash, stored.body) == head_hash


def audit_verify_cached(*, community: Community) -> audit_chain.ChainState:
    """Verify the community's chain, hashing only the entries added since the last verification.

    The last verified head (seq, hash) is kept in Django's cache, one key per community. A
    request re-checks that head entry (still stored, same hash, content still hashes to it),
    then verifies only the entries after it, and caches the new head if all is well. Without a
    cached head, or when the head entry no longer matches, it verifies the whole chain; if that
    passes although the head verified earlier is gone or different, the chain was truncated or
    consistently rewritten since, and that is the problem reported. Entries *before* the cached
    head are not re-read: docs/audit.md says what this does and does not guarantee.
    """
    key = _audit_head_key(community)
    try:
        cached = cache.get(key)
    except Exception:  # the cache is down: verify the whole chain instead
        logger.warning("audit: the cache is unreachable; verifying the whole chain")
        cached = None
    start = None
    if cached is not None and _audit_head_intact(
        community=community, seq=cached[0], head_hash=cached[1]
    ):
        start = audit_chain.ChainState(
            community=community.pk, count=cached[0], head_seq=cached[0], head_hash=cached[1]
        )
    entries = audit_stream(community=community, after_seq=start.head_seq if start else 0)
    states = list(audit_chain.verify_chains(entries, locate=audit_locate, start=start))
    state = states[0] if states else audit_chain.ChainState(community=community.pk)
    if cached is not None and start is None and state.problem is None:
        seq, head_hash = cached
        state.problem = audit_chain.Problem(
            community=community.pk,
            seq=seq,
            kind="truncated" if state.head_seq < seq else "rewritten",
            detail=f"this server verified entry {seq} with hash {head_hash[:12]}... earlier; "
            + (
                "it is no longer stored"
                if state.head_seq < seq
                else "it now has other content or another hash"
            ),
        )
    if state.problem is None and state.head_seq:
        try:
            cache.set(key, (state.head_seq, state.head_hash), AUDIT_HEAD_CACHE_SECONDS)
        except Exception:
            logger.warning("audit: the cache is unreachable; the verified head is not kept")
    return state


def proposal_tally(*, proposal: Proposal) -> dict[str, Any]:
    """Counts of the current ballots, turnout over the frozen electorate, quorum and approval.

    ``turnout`` = voters (abstentions included) / electorate size; ``approval`` = yes / (yes + no),
    ``None`` without yes or no votes. Quorum is met when turnout >= the frozen quorum (exact
    fractions, no float rounding at the boundary).
    """
    counts = Ballot.objects.filter(proposal=proposal).aggregate(
        yes=Count("pk", filter=Q(choice="yes")),
        no=Count("pk", filter=Q(choice="no")),
        abstain=Count("pk", filter=Q(choice="abstain")),
    )
    yes, no, abstain = counts["yes"], counts["no"], counts["abstain"]
    voters = yes + no + abstain
    size = proposal.electorate_size or 0
    turnout = Fraction(voters, size) if size else Fraction(0)
    quorum = Fraction(str(proposal.quorum)) if proposal.quorum is not None else None
    return {
        "yes": yes,
        "no": no,
        "abstain": abstain,
        "voters": voters,
        "electorate_size": size,
        "turnout": float(turnout),
        "quorum": proposal.quorum,
        "quorum_met": quorum is not None and size > 0 and turnout >= quorum,
        "approval": (yes / (yes + no)) if yes + no else None,
        "approval_threshold": proposal.approval_threshold,
    }


def proposals_of(*, community: Community) -> QuerySet[Proposal]:
    """The community's proposals, newest first."""
    return Proposal.objects.filter(community=community).select_related(
        "author", "base_version", "base_charter_version"
    )


def proposals_with_counts(*, community: Community) -> QuerySet[Proposal]:
    """The community's proposals, newest first, each with its current ballot counts annotated
    (``n_yes``, ``n_no``, ``n_abstain``) in one query."""
    return proposals_of(community=community).annotate(
        n_yes=Count("ballots", filter=Q(ballots__choice="yes")),
        n_no=Count("ballots", filter=Q(ballots__choice="no")),
        n_abstain=Count("ballots", filter=Q(ballots__choice="abstain")),
    )


def membership_of_user(*, community: Community, user: Any) -> Membership | None:
    """The logged-in user's membership of ``community``, or ``None``."""
    if user is None or not user.is_authenticated:
        return None
    return Membership.objects.filter(community=community, user=user).first()


def ballot_of(*, proposal: Proposal, member: Membership | None) -> Ballot | None:
    """``member``'s current ballot on ``proposal``, or ``None``."""
    if member is None:
        return None
    return Ballot.objects.filter(proposal=proposal, member=member).first()


def policy_versions_with_diffs(*, community: Community) -> list[dict[str, Any]]:
    """Every policy version, newest first, with its changes against its parent."""
    from governance.diff import policy_diff

    versions = list(PolicyVersion.objects.filter(community=community).order_by("-number"))
    by_pk = {version.pk: version for version in versions}
    rows = []
    for version in versions:
        parent = by_pk.get(version.parent_id) if version.parent_id else None
        changes = policy_diff(parent.document, version.document) if parent else []
        rows.append({"version": version, "parent": parent, "changes": changes})
    return rows


def memberships_of(*, community: Community, query: str = "") -> QuerySet[Membership]:
    """The community's members for the members page: admins, then moderators, then members,
    each by join date; ``query`` keeps those whose external id or username starts with it."""
    members = (
        Membership.objects.filter(community=community)
        .select_related("user")
        .annotate(
            role_rank=Case(
                When(role=Membership.Role.ADMIN, then=Value(0)),
                When(role=Membership.Role.MODERATOR, then=Value(1)),
                default=Value(2),
                output_field=IntegerField(),
            )
        )
        .order_by("role_rank", "joined_at", "pk")
    )
    if query:
        members = members.filter(
            Q(external_id__startswith=query) | Q(user__username__startswith=query)
        )
    return members
