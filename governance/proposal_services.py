"""Proposal and ballot writes (the voting half of ``governance.services``).

Every transition is a compare-and-set update on ``Proposal.state`` and is audited in the same
transaction. Ballots and proposal transitions of one community meet under ``community_lock``
(which every audit append takes anyway), so a ballot either commits before a close counts the
votes, or sees the proposal closed and writes nothing.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
from datetime import datetime, timedelta
from fractions import Fraction
from typing import Any

from django.contrib.auth.models import AbstractBaseUser
from django.db import IntegrityError, transaction
from django.utils import timezone

from governance.errors import (
    InvalidTransition,
    NotInElectorate,
    NotPermitted,
    ProposalNotOpen,
    StaleVersion,
    VotingNotOver,
)
from governance.merge import three_way_merge
from governance.models import (
    Ballot,
    Community,
    ElectorateEntry,
    Membership,
    Proposal,
)
from governance.selectors import (
    charter_of,
    charter_version_current,
    policy_version_current,
    proposal_tally,
)
from governance.services import audit_append, community_lock, policy_version_create
from governance.signals import policy_version_ratified
from ranking.policy import PolicyError, canonical_json, policy_validate

logger = logging.getLogger(__name__)

_MODERATING_ROLES = (Membership.Role.MODERATOR, Membership.Role.ADMIN)


def _member_actor(member: Membership) -> tuple[AbstractBaseUser | None, str]:
    # Members without a login of their own are named by their pseudonymous external id.
    return member.user, (member.user.get_username() if member.user else member.external_id)


def _transition(
    proposal: Proposal, *, expected: tuple[str, ...], to: str, **fields: Any
) -> Proposal:
    """Compare-and-set ``proposal.state`` from one of ``expected`` to ``to``."""
    updated = Proposal.objects.filter(pk=proposal.pk, state__in=expected).update(state=to, **fields)
    if updated != 1:
        current = Proposal.objects.filter(pk=proposal.pk).values_list("state", flat=True).first()
        raise InvalidTransition(
            f"proposal {proposal.pk} is {current}, not {' or '.join(expected)}: cannot move it "
            f"to {to}"
        )
    proposal.state = to
    for name, value in fields.items():
        setattr(proposal, name, value)
    return proposal


def _may_propose(member: Membership) -> bool:
    charter = charter_of(charter_version_current(community=member.community))
    return charter.who_may_propose == "members" or member.role in _MODERATING_ROLES


def _may_manage(proposal: Proposal, member: Membership) -> bool:
    return member.community_id == proposal.community_id and (
        member.pk == proposal.author_id or member.role in _MODERATING_ROLES
    )


@transaction.atomic
def proposal_create(
    *, community: Community, author: Membership, title: str, rationale: str, document: Any
) -> Proposal:
    """Draft a proposal to replace the community's policy with ``document``.

    Raises :class:`PolicyError` (with dotted paths) for an invalid document or one that changes
    nothing, :class:`NotPermitted` if the charter does not let ``author`` propose.
    """
    if author.community_id != community.pk:
        raise NotPermitted(f"{author.external_id} is not a member of {community.slug}")
    if not _may_propose(author):
        raise NotPermitted("The charter lets only moderators and admins propose changes.")
    title = title.strip()
    if not title:
        raise PolicyError([{"path": "title", "message": "A proposal needs a title."}])
    policy = policy_validate(document)
    base = policy_version_current(community=community)
    proposed = policy.model_dump(mode="json")
    if canonical_json(proposed) == canonical_json(base.document):
        raise PolicyError([{"path": "", "message": "The document is the current policy."}])
    proposal = Proposal.objects.create(
        community=community,
        author=author,
        title=title,
        rationale=rationale,
        document=proposed,
        base_version=base,
    )
    user, label = _member_actor(author)
    audit_append(
        community=community,
        actor=user,
        actor_label=label,
        action="proposal.created",
        obj=proposal,
        payload={
            "title": title,
            "author": author.external_id,
            "base_version": base.number,
            "sha256": policy.sha256(),
            "document": proposed,
        },
    )
    return proposal


@transaction.atomic
def proposal_open(*, proposal: Proposal, actor: Membership) -> Proposal:
    """Open voting: freeze the electorate (every member now) and the charter's rules."""
    if not _may_manage(proposal, actor):
        raise NotPermitted("Only the author, moderators and admins may open a proposal.")
    community = proposal.community
    # Under the lock no member is added through the services while the electorate is copied.
    community_lock(community=community)
    charter_version = charter_version_current(community=community)
    charter = charter_of(charter_version)
    now = timezone.now()
    _transition(
        proposal,
        expected=(Proposal.State.DRAFT,),
        to=Proposal.State.OPEN,
        opens_at=now,
        closes_at=now + timedelta(hours=charter.voting_period_hours),
        charter_version=charter_version,
        quorum=charter.quorum,
        approval_threshold=charter.approval_threshold,
        electorate_size=0,
    )
    member_ids = Membership.objects.filter(community=community).values_list("pk", flat=True)
    entries = [ElectorateEntry(proposal_id=proposal.pk, member_id=pk) for pk in member_ids]
    ElectorateEntry.objects.bulk_create(entries, batch_size=5_000)
    Proposal.objects.filter(pk=proposal.pk).update(electorate_size=len(entries))
    proposal.electorate_size = len(entries)
    user, label = _member_actor(actor)
    audit_append(
        community=community,
        actor=user,
        actor_label=label,
        action="proposal.opened",
        obj=proposal,
        payload={
            "electorate_size": len(entries),
            "opens_at": now.isoformat(),
            "closes_at": proposal.closes_at.isoformat(),
            "charter_version": charter_version.number,
            "quorum": charter.quorum,
            "approval_threshold": charter.approval_threshold,
        },
    )
    return proposal


@transaction.atomic
def proposal_withdraw(*, proposal: Proposal, actor: Membership) -> Proposal:
    """Withdraw a draft or an open proposal (its ballots stay, uncounted)."""
    if not _may_manage(proposal, actor):
        raise NotPermitted("Only the author, moderators and admins may withdraw a proposal.")
    community_lock(community=proposal.community)
    previous = proposal.state
    _transition(
        proposal,
        expected=(Proposal.State.DRAFT, Proposal.State.OPEN),
        to=Proposal.State.WITHDRAWN,
        decided_at=timezone.now(),
    )
    user, label = _member_actor(actor)
    audit_append(
        community=proposal.community,
        actor=user,
        actor_label=label,
        action="proposal.withdrawn",
        obj=proposal,
        payload={"from": previous},
    )
    return proposal


def ballot_receipt(
    *, proposal_id: int, external_id: str, choice: str, cast_at: datetime, nonce: str
) -> str:
    """SHA-256 over the ballot's content and its secret nonce; published in the audit log."""
    text = canonical_json([proposal_id, external_id, choice, cast_at.isoformat(), nonce])
    return hashlib.sha256(text.encode()).hexdigest()


def _check_open(proposal_id: int, now: datetime) -> Proposal:
    proposal = Proposal.objects.select_related("community").get(pk=proposal_id)
    if proposal.state != Proposal.State.OPEN or (
        proposal.closes_at is not None and now >= proposal.closes_at
    ):
        raise ProposalNotOpen(f"proposal {proposal.pk} is not open for voting ({proposal.state})")
    return proposal


def ballot_cast(*, proposal: Proposal, member: Membership, choice: str) -> Ballot:
    """Cast or change ``member``'s ballot; returns the ballot with its new receipt.

    Raises :class:`NotInElectorate` (403) and :class:`ProposalNotOpen` (409).
    """
    if choice not in Ballot.Choice.values:
        raise ValueError(f"unknown choice {choice!r}")
    try:
        return _ballot_cast(proposal=proposal, member=member, choice=choice)
    except IntegrityError:
        # Two first ballots of one member raced and the unique constraint turned one away; the
        # other has committed, so this time the row exists and the retry is an update.
        return _ballot_cast(proposal=proposal, member=member, choice=choice)


@transaction.atomic
def _ballot_cast(*, proposal: Proposal, member: Membership, choice: str) -> Ballot:
    now = timezone.now()
    proposal = _check_open(proposal.pk, now)
    if not ElectorateEntry.objects.filter(proposal=proposal, member=member).exists():
        raise NotInElectorate(
            f"{member.external_id} was not a member of {proposal.community.slug} when voting "
            f"on proposal {proposal.pk} opened"
        )
    nonce = secrets.token_hex(16)
    receipt = ballot_receipt(
        proposal_id=proposal.pk,
        external_id=member.external_id,
        choice=choice,
        cast_at=now,
        nonce=nonce,
    )
    fields = {"choice": choice, "cast_at": now, "nonce": nonce, "receipt": receipt}
    # The row lock orders two changes of one member's ballot; for a first ballot there is no
    # row to lock yet, and the unique constraint is what turns the second insert away.
    ballot = Ballot.objects.select_for_update().filter(proposal=proposal, member=member).first()
    if ballot is None:
        ballot = Ballot.objects.create(proposal=proposal, member=member, **fields)
        action = "ballot.cast"
    else:
        Ballot.objects.filter(pk=ballot.pk).update(**fields)
        for name, value in fields.items():
            setattr(ballot, name, value)
        action = "ballot.changed"
    # Re-check under the community lock, which proposal_close holds while it counts: a close that
    # committed since the first check wins and this ballot rolls back.
    community_lock(community=proposal.community)
    _check_open(proposal.pk, timezone.now())
    user, label = _member_actor(member)
    audit_append(
        community=proposal.community,
        actor=user,
        actor_label=label,
        action=action,
        obj=ballot,
        # The choice stays out of the public log: the receipt lets the voter find their entry.
        payload={"proposal": proposal.pk, "member": member.external_id, "receipt": receipt},
    )
    return ballot


def _passes(*, tally: dict[str, Any], threshold: float) -> bool:
    if not tally["quorum_met"]:
        return False
    yes, no = tally["yes"], tally["no"]
    if yes + no == 0:
        return False
    share = Fraction(yes, yes + no)
    bar = Fraction(str(threshold))
    # Charter: at 0.5 strictly more than half; above 0.5 at least that share.
    return share > bar if bar == Fraction(1, 2) else share >= bar


@transaction.atomic
def proposal_close(*, proposal: Proposal, now: datetime | None = None) -> Proposal:
    """Count the ballots of an open proposal whose voting period is over: passed or failed."""
    community_lock(community=proposal.community)
    now = now or timezone.now()
    proposal = Proposal.objects.select_related("community").get(pk=proposal.pk)
    if proposal.state == Proposal.State.OPEN and now < proposal.closes_at:
        raise VotingNotOver(f"voting on proposal {proposal.pk} ends at {proposal.closes_at}")
    tally = proposal_tally(proposal=proposal)
    passed = _passes(tally=tally, threshold=proposal.approval_threshold or 0.5)
    _transition(
        proposal,
        expected=(Proposal.State.OPEN,),
        to=Proposal.State.PASSED if passed else Proposal.State.FAILED,
        closed_at=now,
        yes_count=tally["yes"],
        no_count=tally["no"],
        abstain_count=tally["abstain"],
    )
    audit_append(
        community=proposal.community,
        actor=None,
        action="proposal.closed",
        obj=proposal,
        payload={
            "result": proposal.state,
            "yes": tally["yes"],
            "no": tally["no"],
            "abstain": tally["abstain"],
            "electorate_size": proposal.electorate_size,
            "quorum_met": tally["quorum_met"],
        },
    )
    return proposal


@transaction.atomic
def proposal_ratify(*, proposal: Proposal) -> Proposal:
    """Turn a passed proposal into the community's current policy version, exactly once.

    If another proposal was ratified since this one was drafted, its changes are merged onto the
    current version (``governance.merge``); on a clash the proposal becomes ``conflicted`` with the
    clashing paths, and nothing is overwritten.
    """
    community = proposal.community
    community_lock(community=community)
    proposal = Proposal.objects.select_related("community", "base_version").get(pk=proposal.pk)
    if proposal.state != Proposal.State.PASSED:
        raise InvalidTransition(f"proposal {proposal.pk} is {proposal.state}, not passed")
    current = policy_version_current(community=community)
    base = proposal.base_version
    if current.pk == base.pk:
        merged: dict[str, Any] | None = proposal.document
        conflicts: list[str] = []
    else:
        result = three_way_merge(
            base=base.document, proposed=proposal.document, current=current.document
        )
        merged, conflicts = result.document, result.conflicts
    policy = None
    if merged is not None:
        try:
            policy = policy_validate(merged)
        except PolicyError as error:
            conflicts = sorted({e["path"] for e in error.errors})
    now = timezone.now()
    if policy is None:
        _transition(
            proposal,
            expected=(Proposal.State.PASSED,),
            to=Proposal.State.CONFLICTED,
            conflict_paths=conflicts,
            decided_at=now,
        )
        audit_append(
            community=community,
            actor=None,
            action="proposal.conflicted",
            obj=proposal,
            payload={
                "base_version": base.number,
                "current_version": current.number,
                "paths": conflicts,
            },
        )
        return proposal
    try:
        version = policy_version_create(
            community=community, policy=policy, parent=current, actor=None, make_current=True
        )
    except StaleVersion as error:  # pragma: no cover - the community lock rules it out
        raise InvalidTransition(str(error)) from error
    _transition(
        proposal,
        expected=(Proposal.State.PASSED,),
        to=Proposal.State.RATIFIED,
        ratified_version=version,
        decided_at=now,
    )
    audit_append(
        community=community,
        actor=None,
        action="proposal.ratified",
        obj=proposal,
        payload={
            "version": version.number,
            "base_version": base.number,
            "merged_onto": current.number if current.pk != base.pk else None,
            "sha256": version.sha256,
        },
    )
    transaction.on_commit(
        lambda: policy_version_ratified.send(
            sender=Proposal, community=community, version=version, proposal=proposal
        )
    )
    return proposal


def proposals_close_due(*, now: datetime | None = None) -> dict[str, int]:
    """Close every open proposal past its end and ratify every passed one.

    Idempotent: each step is a compare-and-set, so a second run finds nothing to do. One
    proposal's failure is logged and does not stop the others.
    """
    now = now or timezone.now()
    counts = {"closed": 0, "ratified": 0, "conflicted": 0, "errors": 0}
    due = Proposal.objects.filter(state=Proposal.State.OPEN, closes_at__lte=now)
    for proposal in due.select_related("community").order_by("closes_at", "pk"):
        try:
            proposal_close(proposal=proposal, now=now)
            counts["closed"] += 1
        except InvalidTransition:
            pass  # closed by a concurrent run
        except Exception:
            counts["errors"] += 1
            logger.exception("closing proposal %s failed", proposal.pk)
    passed = Proposal.objects.filter(state=Proposal.State.PASSED).select_related("community")
    # Oldest decision first: proposals ratify in the order their votes ended.
    for proposal in passed.order_by("closed_at", "pk"):
        try:
            result = proposal_ratify(proposal=proposal)
        except InvalidTransition:
            continue
        except Exception:
            counts["errors"] += 1
            logger.exception("ratifying proposal %s failed", proposal.pk)
            continue
        counts["ratified" if result.state == Proposal.State.RATIFIED else "conflicted"] += 1
    return counts


__all__ = [
    "ballot_cast",
    "ballot_receipt",
    "proposal_close",
    "proposal_create",
    "proposal_open",
    "proposal_ratify",
    "proposal_withdraw",
    "proposals_close_due",
]
