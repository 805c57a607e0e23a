"""Cold start: items nobody has interacted with yet are candidates, scored and refused like any."""

from __future__ import annotations

import io

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ranking.effects import ItemAttributes, quota_required
from ranking.pipeline import PreparedFeeds, prepare_feeds, refresh_feeds, score_feeds
from ranking.pipeline import new_items as new_items_module
from ranking.policy import ModelParams, Policy, TagRefusal, neutral_policy
from ranking.reasons import Reason

# Creators 1..4 made items 0..39 (ten each, old); creator 5 is new: items 100..103, nobody has
# engaged with them, and they have no tags. Item 50 is new, by creator 1. Item 60 is new, by
# creator 6 (new too), tagged "jazz" like creator 2's items.
OLD = list(range(40))
NEW_CREATOR_ITEMS = [100, 101, 102, 103]
NEW_BY_KNOWN = 50
NEW_TAGGED = 60
CANDIDATES = [*OLD, *NEW_CREATOR_ITEMS, NEW_BY_KNOWN, NEW_TAGGED]
MEMBERS = list(range(1, 31))


def creator_of(item: int) -> int:
    if item in NEW_CREATOR_ITEMS:
        return 5
    if item == NEW_BY_KNOWN:
        return 1
    if item == NEW_TAGGED:
        return 6
    return 1 + item // 10


def attributes() -> ItemAttributes:
    return ItemAttributes.from_records(
        CANDIDATES,
        creator_ids=[creator_of(i) for i in CANDIDATES],
        age_days=[2.0 if i >= 100 else 1.0 if i >= 50 else 900.0 for i in CANDIDATES],
        item_keys=[f"i{i}" for i in CANDIDATES],
        creator_keys=[f"c{creator_of(i)}" for i in CANDIDATES],
        tags=[
            []
            if i in NEW_CREATOR_ITEMS
            else ["jazz"]
            if 10 <= i < 20 or i == NEW_TAGGED
            else ["rock"]
            for i in CANDIDATES
        ],
    )


def interactions(seed: int = 5) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    members, items = [], []
    for member in MEMBERS:
        # Members 1..15 like creators 1 and 2; the others creators 3 and 4.
        base = 0 if member <= 15 else 20
        for item in rng.choice(20, size=8, replace=False):
            members.append(member)
            items.append(base + int(item))
    return (
        np.array(members, dtype=np.int64),
        np.array(items, dtype=np.int64),
        np.ones(len(items), dtype=np.float32),
    )


def policy(new_items: int, **ranking: object) -> Policy:
    base = neutral_policy()
    return base.model_copy(
        update={
            "model": ModelParams(factors=4, iterations=5, regularization=0.1, seed=3),
            "candidates": base.candidates.model_copy(
                update={"pool_size": 10, "new_items": new_items}
            ),
            "ranking": base.ranking.model_copy(update=ranking),
        }
    )


def prepared_for(chosen: Policy, **options: object) -> PreparedFeeds:
    members, items, weights = interactions()
    return prepare_feeds(
        member_ids=members,
        item_ids=items,
        weights=weights,
        policy=chosen,
        feed_members=np.array([*MEMBERS, 99], dtype=np.int64),  # 99: no history
        candidate_items=np.array(CANDIDATES, dtype=np.int64),
        n=10,
        num_threads=1,
        item_attributes=attributes(),
        **options,  # type: ignore[arg-type]
    )


NEW = {*NEW_CREATOR_ITEMS, NEW_BY_KNOWN, NEW_TAGGED}


def test_without_the_lever_items_nobody_engaged_with_are_never_candidates() -> None:
    batch = score_feeds(prepared_for(policy(0, new_creator_quota=1.0)))

    assert not NEW & set(batch.item_ids.ravel().tolist())


def test_a_new_creator_quota_is_met_by_items_nobody_has_engaged_with() -> None:
    batch = score_feeds(prepared_for(policy(4, new_creator_quota=0.3)))

    # Creators 5 and 6 are new: their items are at most two days old.
    for row in batch.item_ids:
        flags = np.array([creator_of(int(i)) in (5, 6) for i in row if i >= 0])
        assert flags.size == 10
        for k in range(1, 11):
            assert flags[:k].sum() >= quota_required(0.3, k)


def test_new_entries_say_whether_the_member_knows_the_creator() -> None:
    batch = score_feeds(prepared_for(policy(4, new_creator_quota=0.3)))
    members, items, _ = interactions()
    engaged = {(int(m), creator_of(int(i))) for m, i in zip(members, items, strict=True)}

    seen_new = 0
    for member, row, reasons in zip(batch.member_ids, batch.item_ids, batch.reasons, strict=True):
        for item, reason in zip(row.tolist(), reasons.tolist(), strict=True):
            if item not in NEW:
                assert not reason & (Reason.NEW_FROM_KNOWN_CREATOR | Reason.NEW_FROM_UNSEEN_CREATOR)
                continue
            seen_new += 1
            assert not reason & (Reason.PERSONALISED | Reason.POPULAR)
            if (int(member), creator_of(item)) in engaged:
                assert reason & Reason.NEW_FROM_KNOWN_CREATOR
            else:
                assert reason & Reason.NEW_FROM_UNSEEN_CREATOR
            if creator_of(item) == 5:
                assert reason & Reason.RAISED_NEW_CREATOR or reason & Reason.NEW_FROM_UNSEEN_CREATOR
    assert seen_new >= len(MEMBERS)


def test_a_new_item_is_scored_from_its_creators_other_items_or_its_tags() -> None:
    prepared = prepared_for(policy(10))
    model = prepared.model
    assert model is not None
    space = list(prepared.space_ids)
    vector = dict(
        zip(
            [int(prepared.space_ids[i]) for i in prepared.new_items],
            prepared.new_item_vectors,
            strict=True,
        )
    )
    factors = model.item_factors

    creator_1 = [space.index(i) for i in range(10)]
    assert np.allclose(vector[NEW_BY_KNOWN], factors[creator_1].mean(axis=0), atol=1e-6)
    jazz = [space.index(i) for i in range(10, 20)]
    assert np.allclose(vector[NEW_TAGGED], factors[jazz].mean(axis=0), atol=1e-6)
    everything = [space.index(i) for i in OLD if i in set(space[: prepared.n_model_items])]
    assert np.allclose(vector[100], factors[everything].mean(axis=0), atol=1e-6)

    batch = score_feeds(prepared)
    row = list(batch.member_ids).index(1)
    for item, base in zip(batch.item_ids[row], batch.base_scores[row], strict=True):
        if item == NEW_BY_KNOWN:
            expected = model.user_factors[prepared.model_rows[row]] @ vector[NEW_BY_KNOWN]
            assert base == pytest.approx(float(expected), rel=1e-5)


def test_new_items_are_refused_blocked_and_opted_out_like_any_item() -> None:
    refusal = TagRefusal(kind="tag", tag="jazz", reason="no jazz here")
    chosen = policy(10, new_creator_quota=0.5).model_copy(update={"refusals": [refusal]})
    prepared = prepared_for(
        chosen,
        refused_items=np.array([NEW_BY_KNOWN]),  # its creator opted out
        member_blocks=(np.array([1, 1, 2, 2]), np.array([100, 101, 100, 101])),  # muted
    )

    batch = score_feeds(prepared)

    shown = set(batch.item_ids.ravel().tolist())
    assert NEW_TAGGED not in shown and NEW_BY_KNOWN not in shown
    assert {100, 101} & shown, "others still get the new creator's items"
    for member in (1, 2):
        row = batch.item_ids[list(batch.member_ids).index(member)]
        assert not {100, 101} & set(row.tolist())


def test_a_member_without_history_gets_the_newest_items_when_a_quota_asks() -> None:
    batch = score_feeds(prepared_for(policy(4, new_creator_quota=0.3)))

    row = batch.item_ids[list(batch.member_ids).index(99)]
    assert {int(i) for i in row[:4]} & {NEW_TAGGED, *NEW_CREATOR_ITEMS}


def test_the_new_items_survive_an_archive_and_shards_and_fold_in_blocks_what_was_seen() -> None:
    prepared = prepared_for(policy(4, new_creator_quota=0.3))
    buffer = io.BytesIO()
    prepared.save(buffer)
    buffer.seek(0)
    loaded = PreparedFeeds.load(buffer)
    assert np.array_equal(loaded.new_items, prepared.new_items)
    assert np.array_equal(loaded.new_item_vectors, prepared.new_item_vectors)
    whole = score_feeds(prepared, chunk_size=8)
    parts = [score_feeds(loaded, start=a, stop=b, chunk_size=8) for a, b in ((0, 8), (8, 31))]
    assert np.array_equal(np.vstack([p.item_ids for p in parts]), whole.item_ids)
    assert np.array_equal(np.vstack([p.reasons for p in parts]), whole.reasons)

    members, items, weights = interactions()
    mine = members == 3
    refreshed = refresh_feeds(
        prepared,
        feed_members=[3],
        member_ids=np.append(members[mine], 3),
        item_ids=np.append(items[mine], 100),  # member 3 engaged with a new item since
        weights=np.append(weights[mine], 1.0),
    )
    row = refreshed.item_ids[0].tolist()
    assert 100 not in row
    assert {101, 102, 103} & set(row)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(new_items=st.integers(0, 8), quota=st.sampled_from([0.0, 0.2, 0.5]), seed=st.integers(0, 50))
def test_feeds_with_new_items_hold_only_candidates_unseen_without_repeats(
    new_items: int, quota: float, seed: int
) -> None:
    members, items, weights = interactions(seed)
    prepared = prepare_feeds(
        member_ids=members,
        item_ids=items,
        weights=weights,
        policy=policy(new_items, new_creator_quota=quota),
        feed_members=np.array(MEMBERS, dtype=np.int64),
        candidate_items=np.array(CANDIDATES, dtype=np.int64),
        n=10,
        num_threads=1,
        item_attributes=attributes(),
    )
    batch = score_feeds(prepared)
    seen = {(int(m), int(i)) for m, i in zip(members, items, strict=True)}
    for member, row in zip(batch.member_ids, batch.item_ids, strict=True):
        filled = [int(i) for i in row if i >= 0]
        assert len(set(filled)) == len(filled)
        assert set(filled) <= set(CANDIDATES)
        assert not any((int(member), i) in seen for i in filled)
        if new_items == 0:
            assert not NEW & set(filled)


def test_only_the_newest_items_are_considered(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(new_items_module, "NEW_ITEMS_CONSIDERED", 2)
    prepared = prepared_for(policy(4))

    # Items 50 and 60 are a day old, the new creator's two days old.
    assert sorted(int(prepared.space_ids[i]) for i in prepared.new_items) == [50, 60]


def test_items_published_after_the_run_reach_a_refreshed_feed_and_are_refused_like_any() -> None:
    refusal = TagRefusal(kind="tag", tag="banned", reason="not here")
    chosen = policy(8, new_creator_quota=0.3).model_copy(update={"refusals": [refusal]})
    prepared = prepared_for(chosen)
    # After the run: creator 7 (new to the run) publishes 200 and a banned 201; creator 1 (whom
    # members 1..15 know) publishes 202; 203 is by creator 7 but its creator opted out since.
    published = ItemAttributes.from_records(
        [200, 201, 202, 203, 5],  # 5 is in the run already: ignored
        creator_ids=[7, 7, 1, 7, 1],
        age_days=[0.01, 0.01, 0.01, 0.01, 900.0],
        item_keys=["i200", "i201", "i202", "i203", "i5"],
        creator_keys=["c7", "c7", "c1", "c7", "c1"],
        tags=[["rock"], ["banned"], ["rock"], [], ["rock"]],
    )
    members, items, weights = interactions()
    mine = np.isin(members, [1, 20])

    refreshed = refresh_feeds(
        prepared,
        feed_members=[1, 20],
        member_ids=members[mine],
        item_ids=items[mine],
        weights=weights[mine],
        refused_items=np.array([203]),
        published_items=published,
    )

    shown = set(refreshed.item_ids.ravel().tolist())
    assert 200 in shown, "a new creator's item published after the run reaches feeds"
    assert not {201, 203} & shown
    for row, reasons in zip(refreshed.item_ids, refreshed.reasons, strict=True):
        for item, reason in zip(row.tolist(), reasons.tolist(), strict=True):
            if item == 200:
                assert reason & Reason.NEW_FROM_UNSEEN_CREATOR
            if item == 202 and refreshed.member_ids[0] == 1:
                assert reason & Reason.NEW_FROM_KNOWN_CREATOR
        flags = [creator_of(int(i)) in (5, 6) or int(i) in (200,) for i in row if i >= 0]
        for k in range(1, len(flags) + 1):
            assert sum(flags[:k]) >= quota_required(0.3, k)
    # Without cold start in the policy, published items are ignored.
    plain = prepared_for(policy(0))
    again = refresh_feeds(
        plain,
        feed_members=[1],
        member_ids=members[members == 1],
        item_ids=items[members == 1],
        weights=weights[members == 1],
        published_items=published,
    )
    assert not {200, 201, 202, 203} & set(again.item_ids.ravel().tolist())
