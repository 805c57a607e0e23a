from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from governance.diff import ABSENT, Change, policy_diff
from ranking.policy import Policy, canonical_json


def test_identical_documents_have_no_changes() -> None:
    document = Policy().model_dump(mode="json")
    assert policy_diff(document, document) == []


def test_a_changed_nested_field_is_named_by_its_dotted_path() -> None:
    old = Policy().model_dump(mode="json")
    new = Policy.model_validate({"model": {"factors": 8, "alpha": 3.5}}).model_dump(mode="json")
    assert policy_diff(old, new) == [
        Change("model.alpha", 2.0, 3.5),
        Change("model.factors", 64, 8),
    ]
    assert str(policy_diff(old, new)[1]) == "model.factors: 64 -> 8"


def test_added_and_removed_keys_use_absent_not_null() -> None:
    changes = policy_diff({"a": None, "b": 1}, {"b": 1, "c": None})
    assert changes == [Change("a", None, ABSENT), Change("c", ABSENT, None)]
    assert [str(change) for change in changes] == ["a: removed null", "c: added null"]


def test_a_rule_inserted_at_the_front_is_one_addition_not_a_cascade() -> None:
    rules = [{"kind": "tag", "tag": "spam"}, {"kind": "creator", "id": "c1"}]
    new = [{"kind": "tag", "tag": "gore"}, *rules]
    assert policy_diff({"refusals": rules}, {"refusals": new}) == [
        Change("refusals.0", ABSENT, {"kind": "tag", "tag": "gore"})
    ]


def test_an_edited_rule_shows_the_field_that_changed() -> None:
    old = [{"kind": "tag", "tag": "spam"}, {"kind": "creator", "id": "c1"}]
    new = [{"kind": "tag", "tag": "spam"}, {"kind": "creator", "id": "c2"}]
    changes = policy_diff({"refusals": old}, {"refusals": new})
    assert changes == [Change("refusals.1.id", "c1", "c2")]


def test_a_removed_rule_is_named_by_its_old_index() -> None:
    old = [{"tag": "a"}, {"tag": "b"}, {"tag": "c"}]
    assert policy_diff({"r": old}, {"r": [old[0], old[2]]}) == [Change("r.1", {"tag": "b"}, ABSENT)]


def test_a_pure_reordering_is_one_change_of_the_whole_list() -> None:
    assert policy_diff({"r": [1, 2]}, {"r": [2, 1]}) == [Change("r", [1, 2], [2, 1])]


def test_an_integer_and_a_float_of_the_same_value_differ() -> None:
    assert policy_diff({"x": 1}, {"x": 1.0}) == [Change("x", 1, 1.0)]


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 5) | st.sampled_from(["a", "b"]),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.sampled_from(["a", "b", "c"]), children, max_size=3)
    ),
    max_leaves=12,
)


@given(st.dictionaries(st.sampled_from(["a", "b", "c"]), json_values, max_size=3), st.data())
def test_the_diff_is_empty_exactly_when_the_canonical_documents_are_equal(
    a: dict[str, Any], data: st.DataObject
) -> None:
    b = data.draw(st.dictionaries(st.sampled_from(["a", "b", "c"]), json_values, max_size=3))
    assert (policy_diff(a, b) == []) == (canonical_json(a) == canonical_json(b))
    assert policy_diff(a, a) == []
