"""Proposals: create, edit, open, withdraw, close and ratify, each a compare-and-set on the
state, audited in the same transaction. Ballots and transitions of one community meet under
``community_lock``, so a ballot either commits before a close counts the votes, or sees the
proposal closed and writes nothing."""

from __future__ import annotations

import json
import logging
from datetime import datetime, timedelta
from fractions import Fraction
from typing import Any

from django.db import transaction
from django.utils import timezone
from pydantic import ValidationError

from governance.charter import Charter
from governance.diff import policy_diff
from governance.errors import (
    InvalidTransition,
    NotPermitted,
    StaleVersion,
    VotingNotOver,
)
from governance.merge import three_way_merge
from governance.models import (
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
from governance.services.audit import audit_append, community_lock
from governance.services.memberships import member_actor
from governance.services.versions import charter_version_create, policy_version_create
from governance.signals import policy_version_ratified
from ranking.policy import PolicyError, canonical_json, policy_validate

logger = logging.getLogger(__name__)

_MODERATING_ROLES = (Membership.Role.MODERATOR, Membership.Role.ADMIN)


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


def charter_validate(data: object) -> Charter:
    """Validate an untrusted charter document (dict or JSON text), as ``policy_validate`` does a
    policy: raises :class:`PolicyError` with one ``{"path", "message"}`` per problem."""
    if isinstance(data, str | bytes | bytearray):
        try:
            data = json.loads(data)
        except ValueError as error:
            raise PolicyError([{"path": "", "message": f"not valid JSON: {error}"}]) from None
    try:
        return Charter.model_validate(data)
    except ValidationError as error:
        errors = [
            {"path": ".".join(str(part) for part in e["loc"]), "message": e["msg"]}
            for e in error.errors()
        ]
        raise PolicyError(errors) from None


def _may_propose(member: Membership) -> bool:
    charter = charter_of(charter_version_current(community=member.community))
    return charter.who_may_propose == "members" or member.role in _MODERATING_ROLES


def _may_manage(proposal: Proposal, member: Membership) -> bool:
    return member.community_id == proposal.community_id and (
        member.pk == proposal.author_id or member.role in _MODERATING_ROLES
    )


@transaction.atomic
def proposal_create(
    *,
    community: Community,
    author: Membership,
    title: str,
    rationale: str,
    document: Any,
    kind: str = Proposal.Kind.POLICY,
) -> Proposal:
    """Draft a proposal to replace the community's policy (``kind="policy"``) or its charter
    (``kind="charter"``) with ``document``, based on the version current now.

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
    if kind not in Proposal.Kind.values:
        raise PolicyError([{"path": "kind", "message": "kind is policy or charter."}])
    validated: Charter | Any
    if kind == Proposal.Kind.CHARTER:
        validated = charter_validate(document)
        base: Any = charter_version_current(community=community)
        bases = {"base_charter_version": base}
    else:
        validated = policy_validate(document)
        base = policy_version_current(community=community)
        bases = {"base_version": base}
    proposed = validated.model_dump(mode="json")
    if canonical_json(proposed) == canonical_json(base.document):
        raise PolicyError([{"path": "", "message": f"The document is the current {kind}."}])
    proposal = Proposal.objects.create(
        community=community,
        author=author,
        title=title,
        rationale=rationale,
        kind=kind,
        document=proposed,
        **bases,
    )
    user, label = member_actor(author)
    audit_append(
        community=community,
        actor=user,
        actor_label=label,
        action="proposal.created",
        obj=proposal,
        payload={
            "kind": kind,
            "title": title,
            "author": author.external_id,
            "base_version": base.number,
            "sha256": validated.sha256(),
            "document": proposed,
        },
    )
    return proposal


@transaction.atomic
def proposal_update(
    *,
    proposal: Proposal,
    actor: Membership,
    title: str | None = None,
    rationale: str | None = None,
    document: Any = None,
) -> Proposal:
    """Edit a draft's title, rationale or document (``None``: leave it as it is).

    Only while the proposal is a draft: once open, it is what the electorate votes on and never
    changes. The document is validated as :func:`proposal_create` does and stays based on the
    version the draft was made from (ratification merges onto whatever is current then).
    Audited (``proposal.updated``: the fields changed and the new document's hash and body); an
    edit that changes nothing writes nothing.

    Raises :class:`NotPermitted` unless ``actor`` is the author, a moderator or an admin;
    :class:`InvalidTransition` unless the proposal is a draft; :class:`PolicyError` (dotted
    paths) for a blank title or an invalid document, or one equal to its base version.
    """
    if not _may_manage(proposal, actor):
        raise NotPermitted("Only the author, moderators and admins may edit a draft.")
    # The community lock orders this edit with proposal_open, which takes it too: an edit never
    # lands in a proposal that has just been opened.
    community_lock(community=proposal.community)
    current = Proposal.objects.select_for_update().get(pk=proposal.pk)
    if current.state != Proposal.State.DRAFT:
        raise InvalidTransition(
            f"proposal {current.pk} is {current.state}: only a draft can be edited"
        )
    changes: dict[str, Any] = {}
    if title is not None:
        title = title.strip()
        if not title:
            raise PolicyError([{"path": "title", "message": "A proposal needs a title."}])
        if title != current.title:
            changes["title"] = title
    if rationale is not None and rationale != current.rationale:
        changes["rationale"] = rationale
    sha256 = None
    if document is not None:
        validated: Any = (
            charter_validate(document) if current.is_charter else policy_validate(document)
        )
        proposed = validated.model_dump(mode="json")
        base: Any = current.base
        if canonical_json(proposed) == canonical_json(base.document):
            raise PolicyError(
                [{"path": "", "message": f"The document is version {base.number} unchanged."}]
            )
        if canonical_json(proposed) != canonical_json(current.document):
            changes["document"] = proposed
            sha256 = validated.sha256()
    if not changes:
        return current
    Proposal.objects.filter(pk=current.pk, state=Proposal.State.DRAFT).update(**changes)
    for name, value in changes.items():
        setattr(current, name, value)
    user, label = member_actor(actor)
    payload: dict[str, Any] = {"fields": sorted(changes), "title": current.title}
    if sha256 is not None:
        payload.update(sha256=sha256, document=changes["document"])
    audit_append(
        community=current.community,
        actor=user,
        actor_label=label,
        action="proposal.updated",
        obj=current,
        payload=payload,
    )
    return current


@transaction.atomic
def proposal_open(*, proposal: Proposal, actor: Membership) -> Proposal:
    """Open voting: freeze the electorate (every member now) and the charter's rules.

    The bar frozen as ``approval_threshold`` is the charter's ``charter_change_supermajority`` for
    a charter proposal, its ``approval_threshold`` for a policy proposal.
    """
    if not _may_manage(proposal, actor):
        raise NotPermitted("Only the author, moderators and admins may open a proposal.")
    community = proposal.community
    # Under the lock no member is added through the services while the electorate is copied.
    community_lock(community=community)
    charter_version = charter_version_current(community=community)
    charter = charter_of(charter_version)
    threshold = (
        charter.charter_change_supermajority if proposal.is_charter else charter.approval_threshold
    )
    now = timezone.now()
    _transition(
        proposal,
        expected=(Proposal.State.DRAFT,),
        to=Proposal.State.OPEN,
        opens_at=now,
        closes_at=now + timedelta(hours=charter.voting_period_hours),
        charter_version=charter_version,
        quorum=charter.quorum,
        approval_threshold=threshold,
        electorate_size=0,
    )
    member_ids = Membership.objects.filter(community=community).values_list("pk", flat=True)
    entries = [ElectorateEntry(proposal_id=proposal.pk, member_id=pk) for pk in member_ids]
    ElectorateEntry.objects.bulk_create(entries, batch_size=5_000)
    Proposal.objects.filter(pk=proposal.pk).update(electorate_size=len(entries))
    proposal.electorate_size = len(entries)
    user, label = member_actor(actor)
    audit_append(
        community=community,
        actor=user,
        actor_label=label,
        action="proposal.opened",
        obj=proposal,
        payload={
            "kind": proposal.kind,
            "electorate_size": len(entries),
            "opens_at": now.isoformat(),
            "closes_at": proposal.closes_at.isoformat(),
            "charter_version": charter_version.number,
            "quorum": charter.quorum,
            "approval_threshold": threshold,
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
    user, label = member_actor(actor)
    audit_append(
        community=proposal.community,
        actor=user,
        actor_label=label,
        action="proposal.withdrawn",
        obj=proposal,
        payload={"from": previous},
    )
    return proposal


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
    """Turn a passed proposal into the community's current policy (or charter) version, exactly
    once.

    If another proposal of the same kind was ratified since this one was drafted, its changes are
    merged onto the current version (``governance.merge``); on a clash the proposal becomes
    ``conflicted`` with the clashing paths, and nothing is overwritten.
    """
    community = proposal.community
    community_lock(community=community)
    proposal = Proposal.objects.select_related(
        "community", "base_version", "base_charter_version"
    ).get(pk=proposal.pk)
    if proposal.state != Proposal.State.PASSED:
        raise InvalidTransition(f"proposal {proposal.pk} is {proposal.state}, not passed")
    current: Any
    if proposal.is_charter:
        current, validate = charter_version_current(community=community), charter_validate
    else:
        current, validate = policy_version_current(community=community), policy_validate
    base = proposal.base
    assert base is not None  # proposal_versions_match_kind
    if current.pk == base.pk:
        merged: dict[str, Any] | None = proposal.document
        conflicts: list[str] = []
    else:
        result = three_way_merge(
            base=base.document, proposed=proposal.document, current=current.document
        )
        merged, conflicts = result.document, result.conflicts
    validated: Any = None
    if merged is not None:
        try:
            validated = validate(merged)
        except PolicyError as error:
            # Each side valid, the merge not: a conflict too, at the offending paths. A rule
            # between fields (a charter's supermajority below its threshold) has no path of its
            # own; then the proposal's own changes are what no longer fit.
            paths = {e["path"] for e in error.errors}
            if "" in paths:
                paths.discard("")
                paths.update(c.path for c in policy_diff(base.document, proposal.document))
            conflicts = sorted(paths)
    now = timezone.now()
    if validated is None:
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
                "kind": proposal.kind,
                "base_version": base.number,
                "current_version": current.number,
                "paths": conflicts,
            },
        )
        return proposal
    made: dict[str, Any]
    try:
        if proposal.is_charter:
            version = charter_version_create(
                community=community,
                charter=validated,
                parent=current,
                actor=None,
                make_current=True,
            )
            made = {"ratified_charter_version": version}
        else:
            version = policy_version_create(
                community=community, policy=validated, parent=current, actor=None, make_current=True
            )
            made = {"ratified_version": version}
    except StaleVersion as error:  # pragma: no cover - the community lock rules it out
        raise InvalidTransition(str(error)) from error
    _transition(
        proposal,
        expected=(Proposal.State.PASSED,),
        to=Proposal.State.RATIFIED,
        decided_at=now,
        **made,
    )
    audit_append(
        community=community,
        actor=None,
        action="proposal.ratified",
        obj=proposal,
        payload={
            "kind": proposal.kind,
            "version": version.number,
            "base_version": base.number,
            "merged_onto": current.number if current.pk != base.pk else None,
            "sha256": version.sha256,
        },
    )
    if not proposal.is_charter:
        # The feeds app recomputes on a new policy; a new charter changes no feed.
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
