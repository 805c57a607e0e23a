"""A ratified policy reaches members' feeds: the announcement requests a recompute under it."""

from __future__ import annotations

from typing import Any

import pytest

from feeds.models import FeedRun
from feeds.runs.services import feed_run_execute
from governance.selectors import policy_version_current
from governance.services import proposal_ratify
from tests.factories import CreatorFactory, ItemFactory, interact
from tests.governance.proposal_helpers import make_voting_community, open_proposal, vote_and_close

pytestmark = pytest.mark.django_db


def test_ratifying_a_proposal_recomputes_feeds_under_the_new_version(
    django_capture_on_commit_callbacks: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from feeds import enqueue

    sent: list[int] = []
    monkeypatch.setattr(enqueue, "run_recompute", lambda **kw: sent.append(kw["run_id"]))
    community, moderator, members = make_voting_community("ratified")
    creator = CreatorFactory(community=community)
    items = [ItemFactory(community=community, by=[creator]) for _ in range(12)]
    for m, member in enumerate(members):
        for k in range(3):
            interact(member, items[(m + k * 4) % 12])
    proposal = open_proposal(community, moderator, ranking={"creator_cap": 3})
    proposal = vote_and_close(proposal, {members[0]: "yes", members[1]: "yes"})

    with django_capture_on_commit_callbacks(execute=True):
        proposal_ratify(proposal=proposal)

    version = policy_version_current(community=community)
    run = FeedRun.objects.get(community=community)
    assert run.policy_version == version
    assert run.policy_sha256 == version.sha256
    assert sent == [run.pk]
    assert feed_run_execute(run_id=run.pk).status == FeedRun.Status.FINISHED
