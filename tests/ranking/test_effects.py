"""apply_policy: refusals, score adjustments and greedy selection, vectorised over members."""

from __future__ import annotations

import dataclasses
import math
from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy.sparse import csr_matrix

from ranking import effects
from ranking.effects import (
    PROVENANCE_CODES,
    Catalogue,
    ItemAttributes,
    RankedFeeds,
    apply_policy,
    blocked_mask,
    greedy,
)
from ranking.effects import apply as effects_apply
from ranking.policy import (
    PROVENANCE_CLASSES,
    Allow,
    CapShare,
    CreatorRefusal,
    Downrank,
    Exclude,
    ItemRefusal,
    Label,
    OlderThanRefusal,
    ProvenanceRefusal,
    RankingParams,
    RefusalRule,
    TagRefusal,
)
from ranking.reasons import Reason, explain, explain_many

ALLOW_ALL = {name: Allow(action="allow") for name in PROVENANCE_CLASSES}
NEUTRAL = RankingParams(provenance=ALLOW_ALL)
HUMAN, ASSISTED, GENERATED, UNKNOWN = range(4)


def neutral(**changes: Any) -> RankingParams:
    return NEUTRAL.model_copy(update=changes)


def provenance(**treatments: Any) -> dict[str, Any]:
    return {**ALLOW_ALL, **treatments}


def run(
    items: list[list[int]],
    scores: list[list[float]],
    catalogue: Catalogue,
    params: RankingParams,
    n: int,
    **options: Any,
) -> RankedFeeds:
    return apply_policy(
        np.array(items, dtype=np.int64),
        np.array(scores, dtype=np.float32),
        catalogue=catalogue,
        params=params,
        n=n,
        **options,
    )


# --- Hand-computed cases ----------------------------------------------------------------------

SIX = Catalogue.build(6)
DESCENDING = [[0, 1, 2, 3, 4, 5]], [[6.0, 5.0, 4.0, 3.0, 2.0, 1.0]]


def test_the_neutral_policy_keeps_the_candidates_in_score_order() -> None:
    feeds = run([[3, 1, 4, -1, 5]], [[0.5, 0.9, 0.1, -np.inf, 0.7]], SIX, NEUTRAL, n=5)

    assert feeds.items.tolist() == [[1, 5, 3, 4, -1]]
    assert feeds.scores.tolist() == feeds.base_scores.tolist()
    assert np.allclose(feeds.scores[0, :4], [0.9, 0.7, 0.5, 0.1])
    assert feeds.reasons.tolist() == [[1, 1, 1, 1, 0]]


def test_ties_keep_the_candidate_order_and_repeats_keep_the_first() -> None:
    feeds = run([[2, 0, 2, 1]], [[1.0, 1.0, 9.0, 1.0]], SIX, NEUTRAL, n=4)

    assert feeds.items.tolist() == [[2, 0, 1, -1]]


def test_refused_items_never_appear_and_the_rest_moves_up() -> None:
    catalogue = Catalogue.build(6, refused=[False, True, False, False, False, False])

    feeds = run(*DESCENDING, catalogue, NEUTRAL, n=3)

    assert feeds.items.tolist() == [[0, 2, 3]]


def test_a_member_never_gets_an_item_they_blocked() -> None:
    blocked = csr_matrix(np.array([[1, 0, 1, 0, 0, 0], [0, 0, 0, 0, 0, 0]], dtype=np.float32))

    feeds = run(DESCENDING[0] * 2, DESCENDING[1] * 2, SIX, NEUTRAL, n=2, member_blocked=blocked)

    assert feeds.items.tolist() == [[1, 3], [0, 1]]


def test_explicit_zeros_block_nothing_and_a_blocked_repeat_is_dropped_everywhere() -> None:
    blocked = csr_matrix(
        (np.array([0.0, 1.0], dtype=np.float32), (np.array([0, 1]), np.array([0, 2]))),
        shape=(2, 6),
    )
    items = [[0, 1, 2, 3], [2, 1, 2, 3]]
    scores = [[4.0, 3.0, 2.0, 1.0], [4.0, 3.0, 2.5, 1.0]]

    feeds = run(items, scores, SIX, NEUTRAL, n=4, member_blocked=blocked)

    assert feeds.items.tolist() == [[0, 1, 2, 3], [1, 3, -1, -1]]


def test_splitting_members_into_blocks_changes_nothing(rng: np.random.Generator) -> None:
    catalogue = Catalogue.build(
        50,
        creator=rng.integers(-1, 8, 50),
        provenance=rng.integers(0, 4, 50).astype(np.int8),
        popularity=rng.integers(0, 30, 50),
        refused=rng.random(50) < 0.1,
    )
    items = rng.integers(-1, 50, (9, 30))
    scores = rng.normal(size=(9, 30)).astype(np.float32)
    blocked = csr_matrix(rng.random((9, 50)) < 0.2, dtype=np.float32)
    params = neutral(creator_cap=2, popularity_penalty=0.4)

    def feeds() -> RankedFeeds:
        return run(items.tolist(), scores.tolist(), catalogue, params, 6, member_blocked=blocked)

    whole = feeds()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(effects_apply, "_BLOCK", 2)
        split = feeds()

    for field in ("items", "scores", "base_scores", "reasons"):
        assert np.array_equal(getattr(whole, field), getattr(split, field))


def test_an_excluded_provenance_class_is_never_recommended() -> None:
    catalogue = Catalogue.build(6, provenance=[0, 2, 2, 1, 3, 0])
    params = neutral(provenance=provenance(ai_generated=Exclude(action="exclude")))

    feeds = run(*DESCENDING, catalogue, params, n=4)

    assert feeds.items.tolist() == [[0, 3, 4, 5]]


def test_a_label_sets_its_reason_bit_without_moving_anything() -> None:
    catalogue = Catalogue.build(6, provenance=[0, 2, 0, 1, 0, 0])
    params = neutral(provenance=provenance(ai_generated=Label(action="label")))

    feeds = run(*DESCENDING, catalogue, params, n=3)

    assert feeds.items.tolist() == [[0, 1, 2]]
    assert feeds.reasons[0].tolist() == [1, 1 | int(Reason.LABELLED_AI_GENERATED), 1]
    assert explain(int(feeds.reasons[0, 1])) == [
        "Members with similar taste engaged with this.",
        "Labelled: AI-generated.",
    ]


def test_the_popularity_penalty_follows_its_formula() -> None:
    # Normalised scores: 1, 0.5, 0; log-popularity share: 1, 0, log1p(3)/log1p(15) = 0.5.
    catalogue = Catalogue.build(3, popularity=[15, 0, 3])

    feeds = run([[0, 1, 2]], [[3.0, 2.0, 1.0]], catalogue, neutral(popularity_penalty=0.8), n=3)

    assert feeds.items.tolist() == [[1, 0, 2]]
    assert np.allclose(feeds.scores[0], [0.5, 1 - 0.8, 0 - 0.8 * 0.5], atol=1e-6)
    assert feeds.base_scores[0].tolist() == [2.0, 3.0, 1.0]
    penalised = int(Reason.POPULARITY_PENALISED)
    assert [bool(r & penalised) for r in feeds.reasons[0]] == [False, True, True]


def test_a_downranked_class_is_multiplied_by_its_factor() -> None:
    catalogue = Catalogue.build(3, provenance=[GENERATED, HUMAN, HUMAN])
    params = neutral(provenance=provenance(ai_generated=Downrank(action="downrank", factor=0.4)))

    feeds = run([[0, 1, 2]], [[5.0, 4.0, 1.0]], catalogue, params, n=3)

    # Normalised: 1, 0.75, 0; item 0 becomes 0.4 and drops below item 1.
    assert feeds.items.tolist() == [[1, 0, 2]]
    assert np.allclose(feeds.scores[0], [0.75, 0.4, 0.0])
    assert feeds.reasons[0, 1] & Reason.DOWNRANKED_PROVENANCE


def test_freshness_halves_the_score_every_half_life() -> None:
    catalogue = Catalogue.build(3, age_days=[20.0, 0.0, np.nan])

    feeds = run(
        [[0, 1, 2]], [[3.0, 2.0, 1.0]], catalogue, neutral(freshness_half_life_days=10), n=3
    )

    # Normalised 1, 0.5, 0; item 0 is two half-lives old: 0.25. Unknown age: no decay.
    assert feeds.items.tolist() == [[1, 0, 2]]
    assert np.allclose(feeds.scores[0], [0.5, 0.25, 0.0])
    assert feeds.reasons[0, 1] & Reason.FRESHNESS_DECAYED
    assert not feeds.reasons[0, 0] & Reason.FRESHNESS_DECAYED


def test_the_creator_cap_limits_items_per_creator() -> None:
    catalogue = Catalogue.build(6, creator=[0, 0, 0, 1, 1, -1])

    feeds = run(*DESCENDING, catalogue, neutral(creator_cap=1), n=4)

    assert feeds.items.tolist() == [[0, 3, 5, -1]]
    assert feeds.reasons[0].tolist() == [1, 1 | int(Reason.RAISED_BY_CAP), 33, 0]


def test_a_share_cap_limits_a_provenance_class() -> None:
    catalogue = Catalogue.build(6, provenance=[2, 2, 2, 0, 2, 0])
    params = neutral(
        provenance=provenance(ai_generated=CapShare(action="cap_share", max_share=0.5))
    )

    feeds = run(*DESCENDING, catalogue, params, n=4)

    assert feeds.items.tolist() == [[0, 1, 3, 5]]  # floor(0.5 * 4) = 2 AI-generated items


def test_the_long_tail_quota_raises_long_tail_items_where_every_window_needs_them() -> None:
    # Creator 0 has all the interactions: with 3 creators, ceil(0.6) = 1 is the head.
    catalogue = Catalogue.build(6, creator=[0, 0, 0, 0, 1, 2], popularity=[9, 9, 9, 9, 1, 1])
    assert catalogue.creator_long_tail.tolist() == [False, True, True]

    feeds = run(*DESCENDING, catalogue, neutral(long_tail_quota=0.5), n=4)

    # Any 2 entries in a row hold floor(0.5 * 2) = 1 long-tail item, the first two included.
    assert feeds.items.tolist() == [[0, 4, 1, 5]]
    assert feeds.reasons[0, 1] & Reason.RAISED_LONG_TAIL
    assert feeds.reasons[0, 3] & Reason.RAISED_LONG_TAIL
    assert not feeds.reasons[0, 2] & Reason.RAISED_LONG_TAIL


def test_a_quota_of_three_tenths_raises_an_item_at_every_fourth_place_at_the_latest() -> None:
    # Creators 0..3 are the head (of 20, by interactions); items 0..29 are theirs, best first.
    creator = [k % 4 for k in range(30)] + [4 + k for k in range(16)]
    popularity = [100] * 30 + [1] * 16
    catalogue = Catalogue.build(46, creator=creator, popularity=popularity)
    scores = [[float(100 - k) for k in range(46)]]

    feeds = run([list(range(46))], scores, catalogue, neutral(long_tail_quota=0.3), n=20)

    tail = catalogue.creator_long_tail[catalogue.creator[feeds.items[0]]]
    assert np.flatnonzero(tail).tolist() == [3, 6, 9, 13, 16, 19]
    for start in range(20):
        for end in range(start + 1, 21):
            assert tail[start:end].sum() >= effects.quota_required(0.3, end - start)
    raised = (feeds.reasons[0] & Reason.RAISED_LONG_TAIL) != 0
    assert np.array_equal(raised, tail)


def test_the_new_creator_quota_uses_the_age_of_the_creators_first_item() -> None:
    catalogue = Catalogue.build(6, creator=[0, 0, 1, 1, 2, 2], age_days=[400, 10, 500, 5, 30, 20])
    assert np.allclose(catalogue.creator_first_age_days, [400, 500, 30])

    feeds = run(*DESCENDING, catalogue, neutral(new_creator_quota=0.25), n=4)

    # Only creator 2 is newer than 90 days; one of four slots is reserved for it.
    assert feeds.items.tolist() == [[0, 1, 2, 4]]
    assert feeds.reasons[0, 3] & Reason.RAISED_NEW_CREATOR
    later = run(*DESCENDING, catalogue, neutral(new_creator_quota=0.25, new_creator_days=1000), n=4)
    assert later.items.tolist() == [[0, 1, 2, 3]]


def test_diversity_prefers_an_item_unlike_those_chosen() -> None:
    vectors = np.array([[1, 0], [1, 0.05], [0, 1], [1, 0]], dtype=np.float32)

    plain = run([[0, 1, 2, 3]], [[1.0, 0.9, 0.8, 0.1]], Catalogue.build(4), NEUTRAL, n=2)
    diverse = run(
        [[0, 1, 2, 3]],
        [[1.0, 0.9, 0.8, 0.1]],
        Catalogue.build(4),
        neutral(diversity=0.5),
        n=2,
        item_vectors=vectors,
    )

    assert plain.items.tolist() == [[0, 1]]
    assert diverse.items.tolist() == [[0, 2]]
    assert diverse.reasons[0, 1] & Reason.DIVERSIFIED


def test_rows_are_independent_and_each_gets_its_source_bit() -> None:
    feeds = run(
        [[0, 1], [1, 0]],
        [[2.0, 1.0], [2.0, 1.0]],
        SIX,
        NEUTRAL,
        n=2,
        source=np.array([int(Reason.PERSONALISED), int(Reason.POPULAR)]),
    )

    assert feeds.items.tolist() == [[0, 1], [1, 0]]
    assert feeds.reasons.tolist() == [[1, 1], [2, 2]]
    assert explain_many(feeds.reasons[1]) == [["Popular in this community."]] * 2


def test_it_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="item_vectors"):
        run(*DESCENDING, SIX, neutral(diversity=0.3), n=2)
    with pytest.raises(ValueError, match="beyond"):
        run([[7]], [[1.0]], SIX, NEUTRAL, n=1)
    with pytest.raises(ValueError):
        run([[1, 2]], [[1.0]], SIX, NEUTRAL, n=1)
    with pytest.raises(ValueError):
        run(*DESCENDING, SIX, NEUTRAL, n=-1)
    with pytest.raises(ValueError, match="member_blocked"):
        run(*DESCENDING, SIX, NEUTRAL, n=1, member_blocked=csr_matrix((2, 6)))


def test_empty_input_gives_padded_feeds() -> None:
    feeds = apply_policy(
        np.empty((3, 0), dtype=np.int64),
        np.empty((3, 0), dtype=np.float32),
        catalogue=SIX,
        params=NEUTRAL,
        n=2,
    )

    assert feeds.items.tolist() == [[-1, -1]] * 3
    assert np.all(np.isneginf(feeds.scores))


def test_blocked_mask_looks_up_pairs() -> None:
    blocked = csr_matrix(np.array([[0, 1, 0], [1, 0, 1]], dtype=np.float32))

    mask = blocked_mask(blocked, np.array([[1, 0, -1], [2, 1, 5]]))

    assert mask.tolist() == [[True, False, False], [True, False, False]]


def test_item_attributes_resolve_every_kind_of_refusal() -> None:
    attributes = ItemAttributes.from_records(
        [10, 11, 12, 13, 14, 15],
        creator_ids=[1, 2, -1, 2, 3, 1],
        provenance=["human", "ai_generated", "human", "unknown", "ai_assisted", "human"],
        age_days=[1.0, 2.0, 500.0, np.nan, 3.0, 4.0],
        item_keys=["a", "b", "c", "d", "e", "f"],
        creator_keys=["ann", "bob", "", "bob", "cy", "ann"],
        tags=[["x"], [], ["y", "x"], [], ["z"], []],
    )

    def refused(*rules: RefusalRule) -> list[int]:
        return attributes.item_ids[attributes.refused_by(rules)].tolist()

    assert refused() == []
    assert refused(TagRefusal(kind="tag", tag="x", reason="r")) == [10, 12]
    assert refused(TagRefusal(kind="tag", tag="nope", reason="r")) == []
    assert refused(CreatorRefusal(kind="creator", creator="bob", reason="r")) == [11, 13]
    assert refused(ItemRefusal(kind="item", item="e", reason="r")) == [14]
    assert refused(ProvenanceRefusal(kind="provenance", provenance="human", reason="r")) == [
        10,
        12,
        15,
    ]
    assert refused(OlderThanRefusal(kind="older_than", days=4, reason="r")) == [12]
    with pytest.raises(ValueError):
        ItemAttributes.from_records([1], provenance=["robot"])
    with pytest.raises(ValueError):
        ItemAttributes.from_records([1, 1])


# --- Properties over random catalogues, policies and scores -----------------------------------

TAGS = ["t0", "t1", "t2"]


@dataclass
class World:
    attributes: ItemAttributes
    rules: list[RefusalRule]
    catalogue: Catalogue
    params: RankingParams
    items: np.ndarray
    scores: np.ndarray
    blocked: np.ndarray
    n: int
    vectors: np.ndarray


def treatments(allow_share: bool) -> st.SearchStrategy[Any]:
    options: list[st.SearchStrategy[Any]] = [
        st.just(Allow(action="allow")),
        st.just(Label(action="label")),
        st.just(Exclude(action="exclude")),
        st.builds(lambda f: Downrank(action="downrank", factor=f), st.floats(0.05, 1.0)),
    ]
    if allow_share:
        options.append(
            st.builds(lambda s: CapShare(action="cap_share", max_share=s), st.floats(0.0, 1.0))
        )
    return st.one_of(options)


@st.composite
def worlds(draw: st.DrawFn, *, quota: str = "any", share: bool = True) -> World:
    n_items = draw(st.integers(1, 25))
    n_creators = draw(st.integers(1, 6))
    creator = draw(st.lists(st.integers(-1, n_creators - 1), min_size=n_items, max_size=n_items))
    prov = draw(st.lists(st.sampled_from(PROVENANCE_CLASSES), min_size=n_items, max_size=n_items))
    ages = draw(
        st.lists(
            st.one_of(st.just(float("nan")), st.floats(0.0, 400.0)),
            min_size=n_items,
            max_size=n_items,
        )
    )
    tags = draw(
        st.lists(
            st.lists(st.sampled_from(TAGS), max_size=2, unique=True),
            min_size=n_items,
            max_size=n_items,
        )
    )
    popularity = draw(st.lists(st.integers(0, 50), min_size=n_items, max_size=n_items))
    item_keys = [f"i{k}" for k in range(n_items)]
    creator_keys = [f"c{c}" if c >= 0 else "" for c in creator]
    attributes = ItemAttributes.from_records(
        np.arange(n_items),
        creator_ids=creator,
        provenance=prov,
        age_days=ages,
        item_keys=item_keys,
        creator_keys=creator_keys,
        tags=tags,
    )
    reason = "refused by the community"
    rules: list[RefusalRule] = draw(
        st.lists(
            st.one_of(
                st.builds(
                    lambda t: TagRefusal(kind="tag", tag=t, reason=reason), st.sampled_from(TAGS)
                ),
                st.builds(
                    lambda c: CreatorRefusal(kind="creator", creator=f"c{c}", reason=reason),
                    st.integers(0, n_creators),
                ),
                st.builds(
                    lambda i: ItemRefusal(kind="item", item=f"i{i}", reason=reason),
                    st.integers(0, n_items),
                ),
                st.builds(
                    lambda p: ProvenanceRefusal(kind="provenance", provenance=p, reason=reason),
                    st.sampled_from(PROVENANCE_CLASSES),
                ),
                st.builds(
                    lambda d: OlderThanRefusal(kind="older_than", days=d, reason=reason),
                    st.integers(1, 400),
                ),
            ),
            max_size=3,
        )
    )
    opted_out = np.array(draw(st.lists(st.booleans(), min_size=n_items, max_size=n_items)))
    refused = attributes.refused_by(rules) | (opted_out & draw(st.booleans()))
    catalogue = Catalogue.build(
        n_items,
        creator=np.where(np.array(creator) >= 0, creator, -1),
        provenance=attributes.provenance,
        age_days=attributes.age_days,
        popularity=popularity,
        refused=refused,
    )
    long_tail = new = 0.0
    if quota in ("any", "long_tail"):
        long_tail = draw(st.sampled_from([0.0, draw(st.floats(0.0, 1.0))]))
    if quota in ("any", "new"):
        new = draw(st.sampled_from([0.0, draw(st.floats(0.0, 1.0))]))
    if quota == "both_half":
        long_tail, new = draw(st.floats(0.0, 0.5)), draw(st.floats(0.0, 0.5))
    params = RankingParams(
        popularity_penalty=draw(st.sampled_from([0.0, draw(st.floats(0.0, 3.0))])),
        creator_cap=draw(st.none() | st.integers(1, 3)),
        long_tail_quota=long_tail,
        new_creator_quota=new,
        new_creator_days=draw(st.integers(1, 300)),
        diversity=draw(st.sampled_from([0.0, draw(st.floats(0.0, 1.0))])),
        freshness_half_life_days=draw(st.none() | st.floats(1.0, 100.0)),
        provenance={name: draw(treatments(share)) for name in PROVENANCE_CLASSES},
    )
    m = draw(st.integers(1, 5))
    width = draw(st.integers(0, 20))
    items = np.array(
        draw(st.lists(st.integers(-1, n_items - 1), min_size=m * width, max_size=m * width)),
        dtype=np.int64,
    ).reshape(m, width)
    scores = np.array(
        draw(
            st.lists(
                st.one_of(st.floats(-5.0, 5.0, width=32), st.just(float("-inf"))),
                min_size=m * width,
                max_size=m * width,
            )
        ),
        dtype=np.float32,
    ).reshape(m, width)
    blocked = np.array(
        draw(st.lists(st.booleans(), min_size=m * n_items, max_size=m * n_items))
    ).reshape(m, n_items)
    vectors = np.random.default_rng(draw(st.integers(0, 1000))).normal(size=(n_items, 3))
    return World(
        attributes=attributes,
        rules=rules,
        catalogue=catalogue,
        params=params,
        items=items,
        scores=scores,
        blocked=blocked,
        n=draw(st.integers(0, 8)),
        vectors=vectors.astype(np.float32),
    )


def feeds_of(world: World, params: RankingParams | None = None) -> RankedFeeds:
    return apply_policy(
        world.items,
        world.scores,
        catalogue=world.catalogue,
        params=world.params if params is None else params,
        n=world.n,
        member_blocked=csr_matrix(world.blocked.astype(np.float32)),
        item_vectors=world.vectors,
    )


def oracle_refused(world: World, item: int) -> bool:
    """Whether ``item`` is refused, written out rule by rule (independently of the library)."""
    attributes = world.attributes
    item_tags = {str(attributes.tag_names[c]) for c in attributes.tags[item].indices}
    age = float(attributes.age_days[item])
    for rule in world.rules:
        if isinstance(rule, TagRefusal) and rule.tag in item_tags:
            return True
        if isinstance(rule, CreatorRefusal) and rule.creator == attributes.creator_keys[item]:
            return True
        if isinstance(rule, ItemRefusal) and rule.item == attributes.item_keys[item]:
            return True
        if isinstance(rule, ProvenanceRefusal) and (
            PROVENANCE_CODES[rule.provenance] == attributes.provenance[item]
        ):
            return True
        if isinstance(rule, OlderThanRefusal) and not math.isnan(age) and age > rule.days:
            return True
    return False


def eligible(world: World, row: int) -> list[int]:
    """The distinct items of a row that no refusal, block or exclusion removes."""
    treatments = world.params.provenance
    result = []
    for item, score in zip(world.items[row], world.scores[row], strict=True):
        if item < 0 or not np.isfinite(score) or item in result:
            continue
        cls = PROVENANCE_CLASSES[world.catalogue.provenance[item]]
        if (
            world.catalogue.refused[item]
            or world.blocked[row, item]
            or isinstance(treatments[cls], Exclude)
        ):
            continue
        result.append(int(item))
    return result


SETTINGS = settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(world=worlds())
def test_every_feed_obeys_refusals_caps_and_shape(world: World) -> None:
    feeds = feeds_of(world)
    m, n = world.items.shape[0], world.n
    assert feeds.items.shape == feeds.scores.shape == feeds.reasons.shape == (m, n)
    assert feeds.items.dtype == np.int64 and feeds.reasons.dtype == np.int32
    limits = {
        code: math.floor(t.max_share * n + 1e-9)
        for code, t in enumerate(world.params.provenance.values())
        if isinstance(t, CapShare)
    }
    for row in range(m):
        chosen = feeds.items[row]
        filled = chosen[chosen >= 0].tolist()
        assert chosen[: len(filled)].tolist() == filled, "padding only at the end"
        assert len(set(filled)) == len(filled), "no duplicates"
        allowed = eligible(world, row)
        assert set(filled) <= set(allowed), "never a refused, blocked or excluded item"
        for item in filled:
            assert not oracle_refused(world, item)
            assert not world.blocked[row, item]
        assert np.all(np.isfinite(feeds.scores[row, : len(filled)]))
        assert np.all(np.isneginf(feeds.scores[row, len(filled) :]))
        assert np.all(feeds.reasons[row, : len(filled)] & Reason.PERSONALISED)
        assert np.all(feeds.reasons[row, len(filled) :] == 0)
        if world.params.creator_cap is not None:
            creators = Counter(int(world.catalogue.creator[i]) for i in filled)
            creators.pop(-1, None)
            assert max(creators.values(), default=0) <= world.params.creator_cap
        classes = Counter(int(world.catalogue.provenance[i]) for i in filled)
        for code, limit in limits.items():
            assert classes[code] <= limit
        if len(filled) < n and not limits and world.params.creator_cap is None:
            assert len(filled) == len(allowed), "a short feed took every eligible item"


@SETTINGS
@given(world=worlds())
def test_without_quotas_or_diversity_scores_never_increase(world: World) -> None:
    params = world.params.model_copy(
        update={"long_tail_quota": 0.0, "new_creator_quota": 0.0, "diversity": 0.0}
    )

    feeds = feeds_of(world, params)

    for row in feeds.scores:
        filled = row[np.isfinite(row)]
        assert np.all(np.diff(filled) <= 0)


@SETTINGS
@given(world=worlds())
def test_a_cap_that_never_binds_changes_nothing(world: World) -> None:
    params = world.params.model_copy(
        update={"long_tail_quota": 0.0, "new_creator_quota": 0.0, "diversity": 0.0}
    )
    free = params.model_copy(
        update={
            "creator_cap": None,
            "provenance": {
                k: (Allow(action="allow") if isinstance(v, CapShare) else v)
                for k, v in params.provenance.items()
            },
        }
    )
    loose = free.model_copy(update={"creator_cap": max(world.n, 1)})

    fast, greedy = feeds_of(world, free), feeds_of(world, loose)

    assert np.array_equal(fast.items, greedy.items)
    assert np.array_equal(fast.scores, greedy.scores)
    assert np.array_equal(fast.reasons, greedy.reasons)


def quota_capacity(world: World, row: int, group: np.ndarray) -> int:
    """How many items of ``group``'s creators the feed could hold under the creator cap."""
    per_creator = Counter(
        int(world.catalogue.creator[i])
        for i in eligible(world, row)
        if world.catalogue.creator[i] >= 0 and group[world.catalogue.creator[i]]
    )
    cap = world.params.creator_cap
    return sum(c if cap is None else min(c, cap) for c in per_creator.values())


def group_flags(world: World, row: int, group: np.ndarray) -> np.ndarray:
    """Whether each filled entry of the row's feed is an item of ``group``'s creators."""
    creators = world.catalogue.creator[[i for i in feeds_of(world).items[row] if i >= 0]]
    return np.array([c >= 0 and bool(group[c]) for c in creators], dtype=bool)


def assert_windows_keep_the_quota(flags: np.ndarray, quota: float, capacity: int) -> None:
    """Every run of consecutive entries holds ``floor(quota * length)`` group items, up to the
    last group item when the feed took every one the caps allow, and every prefix of ``k``
    entries at least ``min(floor(quota * k), capacity)``."""
    exhausted = int(flags.sum()) >= capacity
    last = int(np.flatnonzero(flags).max(initial=-1))
    for start in range(flags.size):
        for end in range(start + 1, flags.size + 1):
            if exhausted and end - 1 > last:
                break
            assert flags[start:end].sum() >= effects.quota_required(quota, end - start), (
                f"entries {start}..{end - 1} hold {flags[start:end].sum()} of the group"
            )
    for k in range(1, flags.size + 1):
        assert flags[:k].sum() >= min(effects.quota_required(quota, k), capacity)


def new_creators(world: World) -> np.ndarray:
    with np.errstate(invalid="ignore"):
        flags: np.ndarray = world.catalogue.creator_first_age_days < world.params.new_creator_days
    return flags


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(world=worlds(quota="long_tail", share=False), n=st.integers(0, 20))
def test_the_long_tail_quota_holds_in_every_window_whenever_it_can(world: World, n: int) -> None:
    world = dataclasses.replace(world, n=n)
    group = world.catalogue.creator_long_tail
    for row in range(world.items.shape[0]):
        assert_windows_keep_the_quota(
            group_flags(world, row, group),
            world.params.long_tail_quota,
            quota_capacity(world, row, group),
        )


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(world=worlds(quota="new", share=False), n=st.integers(0, 20))
def test_the_new_creator_quota_holds_in_every_window_whenever_it_can(world: World, n: int) -> None:
    world = dataclasses.replace(world, n=n)
    group = new_creators(world)
    for row in range(world.items.shape[0]):
        assert_windows_keep_the_quota(
            group_flags(world, row, group),
            world.params.new_creator_quota,
            quota_capacity(world, row, group),
        )


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(world=worlds(quota="both_half", share=False), n=st.integers(0, 20))
def test_two_quotas_of_at_most_half_both_hold_in_every_window(world: World, n: int) -> None:
    world = dataclasses.replace(world, n=n)
    for group, quota in (
        (world.catalogue.creator_long_tail, world.params.long_tail_quota),
        (new_creators(world), world.params.new_creator_quota),
    ):
        for row in range(world.items.shape[0]):
            assert_windows_keep_the_quota(
                group_flags(world, row, group), quota, quota_capacity(world, row, group)
            )


@SETTINGS
@given(world=worlds(quota="any"))
def test_only_entries_a_quota_raised_carry_its_reason(world: World) -> None:
    feeds = feeds_of(world)
    without = feeds_of(
        world, world.params.model_copy(update={"long_tail_quota": 0.0, "new_creator_quota": 0.0})
    )
    raised = (feeds.reasons & (Reason.RAISED_LONG_TAIL | Reason.RAISED_NEW_CREATOR)) != 0
    assert not np.any(raised & (feeds.items < 0))
    if world.params.long_tail_quota == 0 and world.params.new_creator_quota == 0:
        assert not raised.any()
        assert np.array_equal(feeds.items, without.items)
    for row in range(feeds.items.shape[0]):
        for k in np.flatnonzero(raised[row]):
            creator = world.catalogue.creator[feeds.items[row, k]]
            assert creator >= 0
            if feeds.reasons[row, k] & Reason.RAISED_LONG_TAIL:
                assert world.catalogue.creator_long_tail[creator]
            if feeds.reasons[row, k] & Reason.RAISED_NEW_CREATOR:
                assert new_creators(world)[creator]


@SETTINGS
@given(world=worlds())
def test_members_are_ranked_independently(world: World) -> None:
    together = feeds_of(world)
    for row in range(world.items.shape[0]):
        alone = apply_policy(
            world.items[row : row + 1],
            world.scores[row : row + 1],
            catalogue=world.catalogue,
            params=world.params,
            n=world.n,
            member_blocked=csr_matrix(world.blocked[row : row + 1].astype(np.float32)),
            item_vectors=world.vectors,
        )
        assert np.array_equal(alone.items[0], together.items[row])
        assert np.array_equal(alone.reasons[0], together.reasons[row])


@SETTINGS
@given(world=worlds())
def test_the_loop_free_paths_give_what_the_greedy_loop_gives(world: World) -> None:
    params = world.params.model_copy(
        update={"long_tail_quota": 0.0, "new_creator_quota": 0.0, "diversity": 0.0}
    )
    fast = feeds_of(world, params)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(effects_apply, "_SHORTCUTS", False)
        slow = feeds_of(world, params)

    assert np.array_equal(fast.items, slow.items)
    assert np.array_equal(fast.scores, slow.scores)
    assert np.array_equal(fast.reasons, slow.reasons)


@pytest.mark.parametrize("cap", ["creator", "share", "both"])
def test_rows_the_best_candidates_cannot_fill_are_redone_in_full(cap: str) -> None:
    rng = np.random.default_rng(3)
    n_items, m, width, n = 400, 300, 120, 10
    # Few creators and a skewed provenance mix, so caps often leave rows short at first.
    catalogue = Catalogue.build(
        n_items,
        creator=rng.integers(0, 6, n_items),
        provenance=rng.choice(4, n_items, p=[0.1, 0.1, 0.7, 0.1]).astype(np.int8),
        popularity=rng.integers(0, 100, n_items),
    )
    items = np.stack([rng.choice(n_items, width, replace=False) for _ in range(m)])
    scores = rng.random((m, width), dtype=np.float32)
    share = CapShare(action="cap_share", max_share=0.2)
    params = neutral(
        popularity_penalty=0.3,
        creator_cap=None if cap == "share" else 1,
        provenance=provenance(ai_generated=share) if cap != "creator" else ALLOW_ALL,
    )

    fast = apply_policy(items, scores, catalogue=catalogue, params=params, n=n)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(effects_apply, "_SHORTCUTS", False)
        slow = apply_policy(items, scores, catalogue=catalogue, params=params, n=n)

    assert np.array_equal(fast.items, slow.items)
    assert np.array_equal(fast.reasons, slow.reasons)
    assert np.any(fast.items == -1) or cap == "share"


@settings(max_examples=100, deadline=None)
@given(
    values=st.lists(
        st.lists(
            st.sampled_from([0.0, -0.0, 1.5, -2.0, 1e-30, -np.inf, 3.25, 1.5]),
            min_size=1,
            max_size=12,
        ),
        min_size=1,
        max_size=4,
    ).filter(lambda rows: len({len(r) for r in rows}) == 1)
)
def test_the_fast_descending_sort_is_stable(values: list[list[float]]) -> None:
    array = np.array(values, dtype=np.float32)

    assert np.array_equal(greedy._descending(array), np.argsort(-array, axis=1, kind="stable"))


@dataclass
class QuotaPool:
    catalogue: Catalogue
    params: RankingParams
    items: np.ndarray
    scores: np.ndarray
    n: int
    quota_lt: int
    quota_new: int
    vectors: np.ndarray


@st.composite
def quota_pools(draw: st.DrawFn) -> QuotaPool:
    """Pools of long-tail / new / both / neither creators' items, and both quotas active."""
    n_creators = draw(st.integers(2, 8))
    # The ceil(0.2 * C) creators with the most interactions are the head, the rest long tail.
    interactions = draw(st.permutations(list(range(n_creators))))
    first_age = draw(
        st.lists(st.sampled_from([10.0, 500.0]), min_size=n_creators, max_size=n_creators)
    )
    n_items = draw(st.integers(1, 30))
    creator = draw(st.lists(st.integers(-1, n_creators - 1), min_size=n_items, max_size=n_items))
    present = max(creator) + 1  # the catalogue knows creators up to the largest index used
    catalogue = Catalogue.build(
        n_items,
        creator=creator,
        creator_interactions=interactions[:present],
        creator_first_age_days=first_age[:present],
    )
    n = draw(st.integers(1, 16))
    # Two quotas never fall due at once while each is at most a half (see ranking.effects.greedy).
    quota_lt = draw(st.integers(1, n // 2 + 1))
    quota_new = draw(st.integers(1, n // 2 + 1))
    params = NEUTRAL.model_copy(
        update={
            "long_tail_quota": min(quota_lt / n, 0.5),
            "new_creator_quota": min(quota_new / n, 0.5),
            "new_creator_days": 90,
            "creator_cap": draw(st.none() | st.integers(1, 3)),
            "popularity_penalty": draw(st.sampled_from([0.0, 0.5])),
            "diversity": draw(st.sampled_from([0.0, 0.0, 0.5])),
        }
    )
    m = draw(st.integers(1, 4))
    width = draw(st.integers(1, n_items))
    seed = draw(st.integers(0, 2**16))
    rng = np.random.default_rng(seed)
    items = np.stack([rng.permutation(n_items)[:width] for _ in range(m)])
    scores = rng.normal(size=(m, width)).astype(np.float32)
    vectors = rng.normal(size=(n_items, 3)).astype(np.float32)
    return QuotaPool(catalogue, params, items, scores, n, quota_lt, quota_new, vectors)


def pool_capacity(pool: QuotaPool, row: int, group: np.ndarray) -> int:
    """How many items of ``group``'s creators the row's pool can give under the creator cap."""
    per_creator = Counter(int(pool.catalogue.creator[i]) for i in pool.items[row])
    per_creator.pop(-1, None)
    cap = pool.params.creator_cap
    return sum(
        count if cap is None else min(count, cap)
        for creator, count in per_creator.items()
        if group[creator]
    )


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(pool=quota_pools())
def test_both_quotas_hold_in_every_window_while_their_items_last(pool: QuotaPool) -> None:
    tail = pool.catalogue.creator_long_tail
    new = pool.catalogue.creator_first_age_days < pool.params.new_creator_days

    feeds = apply_policy(
        pool.items,
        pool.scores,
        catalogue=pool.catalogue,
        params=pool.params,
        n=pool.n,
        item_vectors=pool.vectors,
    )

    for row in range(pool.items.shape[0]):
        creators = [int(pool.catalogue.creator[i]) for i in feeds.items[row] if i >= 0]
        for group, quota in (
            (tail, pool.params.long_tail_quota),
            (new, pool.params.new_creator_quota),
        ):
            flags = np.array([c >= 0 and bool(group[c]) for c in creators], dtype=bool)
            assert_windows_keep_the_quota(flags, quota, pool_capacity(pool, row, group))
