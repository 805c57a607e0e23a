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
