"""What feeds does when governance announces something (governance never imports feeds)."""

from __future__ import annotations

from typing import Any

from feeds.runs.services import feed_run_request
from governance.models import Community


def recompute_after_ratification(sender: Any, *, community: Community, **kwargs: Any) -> None:
    """A new policy version was ratified (and committed): recompute every member's feed.

    If this message is lost, the reconciler notices that the current version has no run.
    """
    feed_run_request(community=community)
