"""Domain errors raised by governance services; views map them to clear 4xx responses."""

from __future__ import annotations


class GovernanceError(Exception):
    """Base class: ``code`` is the machine-readable error name."""

    code = "governance_error"


class StaleVersion(GovernanceError):
    """A version could not become current: its parent is no longer the current version."""

    code = "stale_version"


class InvalidVersionParent(GovernanceError):
    """The parent version belongs to another community."""

    code = "invalid_parent"


class NotPermitted(GovernanceError):
    """The acting member's role does not allow this (HTTP 403)."""

    code = "forbidden"


class NotInElectorate(GovernanceError):
    """The member was not a member when voting opened, or is of another community (HTTP 403)."""

    code = "not_in_electorate"


class ProposalNotOpen(GovernanceError):
    """The proposal is not open for voting: not yet opened, or closed (HTTP 409)."""

    code = "proposal_not_open"


class InvalidTransition(GovernanceError):
    """The proposal is not in the state this transition starts from; another request may have
    moved it first (HTTP 409)."""

    code = "invalid_transition"


class VotingNotOver(GovernanceError):
    """The proposal's voting period has not ended yet (HTTP 409)."""

    code = "voting_not_over"


class LastAdmin(GovernanceError):
    """The change would leave the community without an admin who can sign in (HTTP 409)."""

    code = "last_admin"


class MemberInUse(GovernanceError):
    """The member cannot be removed: they are in a running vote's electorate, or they authored
    proposals, which keep their author (HTTP 409)."""

    code = "member_in_use"


# HTTP status of each domain error, for views and APIs (anything else: 409).
HTTP_STATUS = {NotPermitted: 403, NotInElectorate: 403, InvalidVersionParent: 400}


def http_status(error: GovernanceError) -> int:
    for cls, status in HTTP_STATUS.items():
        if isinstance(error, cls):
            return status
    return 409
