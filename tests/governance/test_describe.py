"""policy_describe: the plain-words summary a member reads before voting."""

from __future__ import annotations

from governance.describe import policy_describe
from ranking.policy import neutral_policy, policy_validate


def test_a_quota_is_described_as_a_share_of_every_stretch_of_the_feed() -> None:
    policy = policy_validate(
        neutral_policy()
        .model_copy(
            update={
                "ranking": neutral_policy().ranking.model_copy(
                    update={"long_tail_quota": 0.25, "new_creator_quota": 0.1}
                )
            }
        )
        .canonical_json()
    )

    lines = dict(policy_describe(policy)["sections"])["Re-ranking"]

    assert lines == [
        "At least 25% of any stretch of a feed, its first page included, goes to long-tail "
        "creators (2 of any 10 entries in a row).",
        "At least 10% of any stretch of a feed, its first page included, goes to new creators "
        "(first item younger than 90 days; 1 of any 10 entries in a row).",
    ]


def test_the_new_items_lever_is_described_on_and_off() -> None:
    off = dict(policy_describe(neutral_policy())["sections"])["Model"]
    on = policy_validate(
        neutral_policy()
        .model_copy(
            update={"candidates": neutral_policy().candidates.model_copy(update={"new_items": 20})}
        )
        .canonical_json()
    )

    assert off[-1].startswith("Items nobody has engaged with yet are not candidates")
    assert dict(policy_describe(on)["sections"])["Model"][-1].startswith(
        "Besides, each member's 20 best of the community's newest items"
    )
