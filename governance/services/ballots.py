"""Ballots: cast or change one, with its receipt and audit entry, in one transaction."""

from __future__ import annotations

import hashlib
import secrets
from datetime import datetime
from typing import Any

from django.contrib.auth.models import AbstractBaseUser
from django.db import transaction
from django.utils import timezone

from governance.audit_chain import canonical_json as audit_canonical_json
from governance.errors import (
    NotInElectorate,
    ProposalNotOpen,
)
from governance.models import (
    Ballot,
    Membership,
    Proposal,
)
from governance.services.audit import audit_append_locked, community_lock_id
from governance.services.memberships import member_actor
from ranking.policy import canonical_json


def ballot_receipt(
    *, proposal_id: int, external_id: str, choice: str, cast_at: datetime, nonce: str
) -> str:
    """SHA-256 over the ballot's content and its secret nonce; published in the audit log."""
    text = canonical_json([proposal_id, external_id, choice, cast_at.isoformat(), nonce])
    return hashlib.sha256(text.encode()).hexdigest()


def _check_open(proposal_id: int, now: datetime, *, community_id: int) -> Proposal:
    """The proposal if it is the community's and open at ``now``; otherwise the reason why not."""
    proposal = Proposal.objects.select_related("community").get(
        pk=proposal_id, community_id=community_id
    )
    if proposal.state != Proposal.State.OPEN or (
        proposal.closes_at is not None and now >= proposal.closes_at
    ):
        raise ProposalNotOpen(f"proposal {proposal.pk} is not open for voting ({proposal.state})")
    return proposal


def ballot_cast(*, proposal: Proposal, member: Membership, choice: str) -> Ballot:
    """Cast or change ``member``'s ballot; returns the ballot with its new receipt.

    Raises :class:`NotInElectorate` (403) and :class:`ProposalNotOpen` (409).
    """
    if proposal.community_id != member.community_id:
        raise NotInElectorate(
            f"{member.external_id} is not a member of the community of proposal {proposal.pk}"
        )
    return ballot_cast_id(proposal_id=proposal.pk, member=member, choice=choice)


def ballot_cast_id(*, proposal_id: int, member: Membership, choice: str) -> Ballot:
    """``ballot_cast`` by the proposal's id, without loading it first (the API's hot path).

    Raises ``Proposal.DoesNotExist`` when the member's community has no such proposal, then
    :class:`ProposalNotOpen` (409) and :class:`NotInElectorate` (403).
    """
    if choice not in Ballot.Choice.values:
        raise ValueError(f"unknown choice {choice!r}")
    return _ballot_cast(proposal_id=proposal_id, member=member, choice=choice)


# The hot path's member lookup: one indexed query, without the ORM building it on every ballot.
# Columns in the model's field order, which is the order ``Model.from_db`` expects them in.
_BALLOT_MEMBER_FIELDS = [
    f.attname
    for f in Membership._meta.concrete_fields
    if f.attname in {"id", "community_id", "external_id", "user_id"}
]

_BALLOT_MEMBER = f"""
    SELECT {", ".join(f"m.{name}" for name in _BALLOT_MEMBER_FIELDS)}
    FROM governance_membership AS m
    JOIN governance_community AS c ON c.id = m.community_id
    WHERE c.slug = %s AND m.user_id = %s
    ORDER BY m.id LIMIT 1
"""


def ballot_member(*, slug: str, user: AbstractBaseUser) -> Membership | None:
    """``user``'s membership of the community ``slug`` for ``ballot_cast_id``, or ``None``.

    Loads only what a ballot needs (id, community, external id; the other fields are deferred)
    and attaches ``user``, so casting the ballot needs no query for the actor's name.
    """
    if not user.is_authenticated:
        return None
    connection = transaction.get_connection()
    with connection.cursor() as cursor:
        cursor.execute(_BALLOT_MEMBER, [slug, user.pk])
        row = cursor.fetchone()
    if row is None:
        return None
    member = Membership.from_db(connection.alias, _BALLOT_MEMBER_FIELDS, row)
    member.user = user
    return member


def _ballot_new(*, proposal_id: int, member: Membership, choice: str) -> Ballot:
    """An unsaved ballot with its time, nonce and receipt."""
    now = timezone.now()
    nonce = secrets.token_hex(16)
    receipt = ballot_receipt(
        proposal_id=proposal_id,
        external_id=member.external_id,
        choice=choice,
        cast_at=now,
        nonce=nonce,
    )
    return Ballot(
        proposal_id=proposal_id,
        member=member,
        choice=choice,
        cast_at=now,
        nonce=nonce,
        receipt=receipt,
    )


def _ballot_audit_fields(ballot: Ballot, action: str, object_id: str) -> dict[str, Any]:
    user, label = member_actor(ballot.member)
    return {
        "actor_id": user.pk if user is not None else None,
        "actor_label": label,
        "action": action,
        "object_type": Ballot._meta.label_lower,
        "object_id": object_id,
        # The choice stays out of the public log: the receipt lets the voter find their entry.
        "payload_json": audit_canonical_json(
            {
                "proposal": ballot.proposal_id,
                "member": ballot.member.external_id,
                "receipt": ballot.receipt,
            }
        ),
    }


def _ballot_stored(ballot: Ballot, ballot_id: int, alias: str) -> Ballot:
    ballot.pk = ballot_id
    ballot._state.adding = False
    ballot._state.db = alias
    return ballot


# The ballot is written if, and only if, the proposal is the member's community's, is open, and
# has the member in its electorate. The community lock is held from before the checks to the
# commit, so nothing a close or another ballot writes can slip between them.
_BALLOT_UPSERT = """
    INSERT INTO governance_ballot AS b (proposal_id, member_id, choice, cast_at, nonce, receipt)
    SELECT p.id, e.member_id, %s, %s, %s, %s
    FROM governance_proposal AS p
    JOIN governance_electorateentry AS e ON e.proposal_id = p.id AND e.member_id = %s
    WHERE p.id = %s AND p.community_id = %s AND p.state = 'open' AND p.closes_at > %s
    ON CONFLICT (proposal_id, member_id) DO UPDATE SET choice = excluded.choice,
        cast_at = excluded.cast_at, nonce = excluded.nonce, receipt = excluded.receipt
    RETURNING id
"""


@transaction.atomic
def _ballot_cast(*, proposal_id: int, member: Membership, choice: str) -> Ballot:
    """The ballot and its audit entry in one transaction, under the community lock: the lock,
    whether the member voted before, the upsert, the chain head and the entry (the hash computed
    in ``governance.audit_chain``, as for every entry)."""
    connection = transaction.get_connection()
    adapt = connection.ops.adapt_datetimefield_value
    community_lock_id(community_id=member.community_id)
    # Stamped under the lock, so the deadline is checked against the time the ballot is written.
    ballot = _ballot_new(proposal_id=proposal_id, member=member, choice=choice)
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT id FROM governance_ballot WHERE proposal_id = %s AND member_id = %s",
            [proposal_id, member.pk],
        )
        existed = cursor.fetchone() is not None
        cursor.execute(
            _BALLOT_UPSERT,
            [
                choice,
                adapt(ballot.cast_at),
                ballot.nonce,
                ballot.receipt,
                member.pk,
                proposal_id,
                member.community_id,
                adapt(ballot.cast_at),
            ],
        )
        written = cursor.fetchone()
    if written is None:
        # Nothing written: find out why, in the order the API reports it (404, 409, 403).
        proposal = _check_open(proposal_id, ballot.cast_at, community_id=member.community_id)
        raise NotInElectorate(
            f"{member.external_id} was not a member of {proposal.community.slug} when voting "
            f"on proposal {proposal.pk} opened"
        )
    fields = _ballot_audit_fields(
        ballot, "ballot.changed" if existed else "ballot.cast", str(written[0])
    )
    audit_append_locked(community_id=member.community_id, **fields)
    return _ballot_stored(ballot, written[0], connection.alias)
