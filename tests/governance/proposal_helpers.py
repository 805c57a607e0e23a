"""Helpers for proposal tests: personas and a proposal run through the services."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.utils import timezone

from governance.charter import Charter
from governance.models import Community, Membership, Proposal
from governance.selectors import charter_version_current, policy_version_current
from governance.services import (
    ballot_cast,
    charter_version_create,
    community_create,
    membership_create,
    proposal_close,
    proposal_create,
    proposal_open,
)


def make_voting_community(
    slug: str, *, members: int = 4, charter: Charter | None = None
) -> tuple[Community, Membership, list[Membership]]:
    """A community with a moderator and ``members`` plain members."""
    community = community_create(slug=slug, name=slug.title(), charter=charter)
    moderator = membership_create(
        community=community, external_id=f"{slug}-mod", actor=None, role="moderator"
    )
    plain = [
        membership_create(community=community, external_id=f"{slug}-m{i}", actor=None)
        for i in range(members)
    ]
    return community, moderator, plain


def set_charter(community: Community, **fields: Any) -> None:
    current = charter_version_current(community=community)
    charter_version_create(
        community=community,
        charter=Charter.model_validate({**current.document, **fields}),
        parent=current,
        actor=None,
        make_current=True,
    )


def changed_policy(community: Community, **sections: dict[str, Any]) -> dict[str, Any]:
    """The current policy document with some fields of some sections replaced."""
    document = dict(policy_version_current(community=community).document)
    for section, fields in sections.items():
        if isinstance(fields, dict):
            document[section] = {**document[section], **fields}
        else:
            document[section] = fields
    return document


def open_proposal(
    community: Community, author: Membership, *, title: str = "More factors", **sections: Any
) -> Proposal:
    document = changed_policy(community, **(sections or {"model": {"factors": 32}}))
    proposal = proposal_create(
        community=community, author=author, title=title, rationale="Because.", document=document
    )
    return proposal_open(proposal=proposal, actor=author)


def vote_and_close(proposal: Proposal, votes: dict[Membership, str]) -> Proposal:
    for member, choice in votes.items():
        ballot_cast(proposal=proposal, member=member, choice=choice)
    return proposal_close(proposal=proposal, now=proposal.closes_at + timedelta(seconds=1))


def past(proposal: Proposal) -> Any:
    return (proposal.closes_at or timezone.now()) + timedelta(seconds=1)
