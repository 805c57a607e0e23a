"""refresh_feeds: a few members re-ranked against a prepared run from their current histories."""

from __future__ import annotations

import numpy as np
import pytest

from ranking.pipeline import (
    ROUTE_POPULAR,
    ROUTE_RECALCULATED,
    ROUTE_REFUSING,
    ROUTE_TRAINED,
    PreparedFeeds,
    prepare_feeds,
    refresh_feeds,
    score_feeds,
)
from ranking.reasons import Reason
from tests.ranking.test_feeds import _shardable_inputs


@pytest.fixture(scope="module")
def run() -> tuple[dict[str, object], PreparedFeeds]:
    inputs = _shardable_inputs()
    return inputs, prepare_feeds(**inputs)  # type: ignore[arg-type]


def _history(inputs: dict[str, object], members: list[int]) -> dict[str, np.ndarray]:
    """The members' rows of the run's interactions."""
    who = np.asarray(inputs["member_ids"])
    mine = np.isin(who, members)
    return {
        "member_ids": who[mine],
        "item_ids": np.asarray(inputs["item_ids"])[mine],
        "weights": np.asarray(inputs["weights"])[mine],
    }


def _blocks(inputs: dict[str, object], members: list[int]) -> tuple[np.ndarray, np.ndarray]:
    who, what = inputs["member_blocks"]  # type: ignore[misc]
    mine = np.isin(who, members)
    return who[mine], what[mine]


def _refused_by_run(prepared: PreparedFeeds) -> set[int]:
    return set(prepared.space_ids[prepared.catalogue.refused].tolist())


def _members_on(prepared: PreparedFeeds, route: int, count: int) -> list[int]:
    return prepared.targets[prepared.route == route][:count].tolist()


def test_a_recalculated_member_whose_history_did_not_change_gets_the_runs_feed_back(
    run: tuple[dict[str, object], PreparedFeeds],
) -> None:
    inputs, prepared = run
    members = _members_on(prepared, ROUTE_RECALCULATED, 3)
    assert len(members) == 3
    whole = score_feeds(prepared)
    refusing = np.asarray(inputs["no_personalisation_members"])

    batch = refresh_feeds(
        prepared,
        feed_members=members,
        **_history(inputs, members),
        member_blocks=_blocks(inputs, members),
        no_personalisation_members=refusing[np.isin(refusing, members)],
    )

    rows = np.searchsorted(whole.member_ids, members)
    assert batch.member_ids.tolist() == members
    assert np.array_equal(batch.item_ids, whole.item_ids[rows])
    assert np.array_equal(batch.reasons, whole.reasons[rows])
    assert np.allclose(batch.scores, whole.scores[rows], rtol=1e-5, atol=1e-6)
    assert batch.metadata["refresh_routes"] == {"recalculated": 3, "popular": 0, "refusing": 0}


def test_new_interactions_leave_the_feed_and_change_the_ranking(
    run: tuple[dict[str, object], PreparedFeeds],
) -> None:
    inputs, prepared = run
    member = _members_on(prepared, ROUTE_TRAINED, 1)
    before = score_feeds(prepared).item_ids[np.searchsorted(prepared.targets, member)][0]
    history = _history(inputs, member)
    liked = before[:3]  # the member now likes the top of their feed

    batch = refresh_feeds(
        prepared,
        feed_members=member,
        member_ids=np.concatenate([history["member_ids"], np.full(3, member[0])]),
        item_ids=np.concatenate([history["item_ids"], liked]),
        weights=np.concatenate([history["weights"], np.full(3, 3.0, dtype=np.float32)]),
        member_blocks=_blocks(inputs, member),
    )

    after = batch.item_ids[0]
    assert not set(liked.tolist()) & set(after.tolist())
    assert (after >= 0).sum() == prepared.n
    assert np.all(batch.reasons[0][after >= 0] & Reason.PERSONALISED)


def test_refusals_mutes_and_exclusions_never_leak_into_a_refreshed_feed(
    run: tuple[dict[str, object], PreparedFeeds],
) -> None:
    inputs, prepared = run
    members = [
        *_members_on(prepared, ROUTE_TRAINED, 4),
        *_members_on(prepared, ROUTE_POPULAR, 2),
        *_members_on(prepared, ROUTE_REFUSING, 2),
        9_999,  # joined after the run
    ]
    muted = np.asarray(inputs["candidate_items"])[:40]  # every member mutes the same items
    history = _history(inputs, members)
    batch = refresh_feeds(
        prepared,
        feed_members=members,
        member_ids=np.concatenate([history["member_ids"], [9_999, 9_999]]),
        item_ids=np.concatenate([history["item_ids"], [1_010, 1_020]]),
        weights=np.concatenate([history["weights"], [1.0, 1.0]]),
        member_blocks=(np.repeat(members, muted.size), np.tile(muted, len(members))),
        no_personalisation_members=_members_on(prepared, ROUTE_REFUSING, 2),
        refused_items=[1_050, 1_051],
    )

    shown = batch.item_ids[batch.item_ids >= 0]
    assert shown.size
    forbidden = _refused_by_run(prepared) | set(muted.tolist()) | {1_050, 1_051}
    assert not set(shown.tolist()) & forbidden
    refusing = np.isin(batch.member_ids, _members_on(prepared, ROUTE_REFUSING, 2))
    assert not np.any(batch.reasons[refusing] & Reason.PERSONALISED)
    with_history = np.isin(batch.member_ids, [*members[:4], 9_999])
    assert np.all(
        batch.reasons[with_history][batch.item_ids[with_history] >= 0] & Reason.PERSONALISED
    )
    newcomer = batch.item_ids[batch.member_ids == 9_999][0]
    assert not {1_010, 1_020} & set(newcomer.tolist())
    for row in batch.item_ids:
        assert len(set(row[row >= 0].tolist())) == (row >= 0).sum()


def test_a_member_who_now_refuses_personalisation_keeps_the_fallback_without_seen_items(
    run: tuple[dict[str, object], PreparedFeeds],
) -> None:
    inputs, prepared = run
    member = _members_on(prepared, ROUTE_TRAINED, 1)
    fallback_top = score_feeds(prepared).item_ids[prepared.route == ROUTE_REFUSING][0][:2]
    history = _history(inputs, member)

    batch = refresh_feeds(
        prepared,
        feed_members=member,
        member_ids=np.concatenate([history["member_ids"], np.full(2, member[0])]),
        item_ids=np.concatenate([history["item_ids"], fallback_top]),
        weights=np.concatenate([history["weights"], np.ones(2, dtype=np.float32)]),
        no_personalisation_members=member,
    )

    assert batch.metadata["refresh_routes"] == {"recalculated": 0, "popular": 0, "refusing": 1}
    row = batch.item_ids[0]
    assert (row >= 0).any()
    assert not set(fallback_top.tolist()) & set(row.tolist())
    assert not set(history["item_ids"].tolist()) & set(row.tolist())
    assert not np.any(batch.reasons[0] & Reason.PERSONALISED)


def test_refreshing_is_deterministic_and_ignores_other_members_rows(
    run: tuple[dict[str, object], PreparedFeeds],
) -> None:
    inputs, prepared = run
    members = _members_on(prepared, ROUTE_TRAINED, 5)
    everyone = {
        "member_ids": np.asarray(inputs["member_ids"]),
        "item_ids": np.asarray(inputs["item_ids"]),
        "weights": np.asarray(inputs["weights"]),
    }

    first = refresh_feeds(prepared, feed_members=members, **everyone)
    second = refresh_feeds(prepared, feed_members=members[::-1], **_history(inputs, members))

    for name in ("member_ids", "item_ids", "scores", "base_scores", "reasons"):
        assert np.array_equal(getattr(first, name), getattr(second, name)), name


def test_it_refuses_interaction_arrays_of_different_lengths(
    run: tuple[dict[str, object], PreparedFeeds],
) -> None:
    _, prepared = run
    with pytest.raises(ValueError, match="parallel"):
        refresh_feeds(prepared, feed_members=[1], member_ids=[1, 1], item_ids=[1_000], weights=[1])
