"""The policy document: validation, error paths, canonical JSON and the JSON Schema."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ranking.policy import (
    PROVENANCE_CLASSES,
    Allow,
    Label,
    Policy,
    PolicyError,
    canonical_json,
    default_policy,
    neutral_policy,
    policy_json_schema,
    policy_validate,
)

_reason = st.text(min_size=1, max_size=40)
_key = st.text(min_size=1, max_size=20)
_treatments = st.one_of(
    st.just({"action": "allow"}),
    st.just({"action": "label"}),
    st.just({"action": "exclude"}),
    st.builds(
        lambda f: {"action": "downrank", "factor": f},
        st.floats(0.01, 1.0, allow_nan=False),
    ),
    st.builds(
        lambda s: {"action": "cap_share", "max_share": s},
        st.floats(0.0, 1.0, allow_nan=False),
    ),
)
_refusals = st.one_of(
    st.builds(lambda t, r: {"kind": "tag", "tag": t, "reason": r}, _key, _reason),
    st.builds(lambda c, r: {"kind": "creator", "creator": c, "reason": r}, _key, _reason),
    st.builds(lambda i, r: {"kind": "item", "item": i, "reason": r}, _key, _reason),
    st.builds(
        lambda p, r: {"kind": "provenance", "provenance": p, "reason": r},
        st.sampled_from(PROVENANCE_CLASSES),
        _reason,
    ),
    st.builds(
        lambda d, r: {"kind": "older_than", "days": d, "reason": r},
        st.integers(1, 36_500),
        _reason,
    ),
)
_unit = st.floats(0.0, 1.0, allow_nan=False)


@st.composite
def policy_documents(draw: st.DrawFn) -> dict[str, Any]:
    """Valid policy documents, with some sections and fields left to their defaults."""
    ranking: dict[str, Any] = {
        "popularity_penalty": draw(st.floats(0.0, 10.0, allow_nan=False)),
        "creator_cap": draw(st.none() | st.integers(1, 50)),
        "long_tail_quota": draw(_unit),
        "new_creator_quota": draw(_unit),
        "new_creator_days": draw(st.integers(1, 1000)),
        "diversity": draw(_unit),
        "freshness_half_life_days": draw(st.none() | st.floats(0.5, 1000.0)),
        "provenance": draw(st.dictionaries(st.sampled_from(PROVENANCE_CLASSES), _treatments)),
    }
    keep = draw(st.sets(st.sampled_from(sorted(ranking))))
    document: dict[str, Any] = {
        "model": {"factors": draw(st.integers(1, 256)), "seed": draw(st.integers(0, 1000))},
        "candidates": {"pool_size": draw(st.integers(1, 10_000))},
        "ranking": {key: ranking[key] for key in keep},
        "refusals": draw(st.lists(_refusals, max_size=5)),
        "fallback": {
            "kind": draw(st.sampled_from(["popular", "newest"])),
            "creator_cap": draw(st.none() | st.integers(1, 10)),
        },
    }
    return document


@settings(max_examples=80, deadline=None)
@given(document=policy_documents())
def test_a_valid_document_survives_a_json_round_trip(document: dict[str, Any]) -> None:
    policy = policy_validate(document)

    again = policy_validate(policy.canonical_json())

    assert again == policy
    assert again.canonical_json() == policy.canonical_json()
    assert again.sha256() == policy.sha256()
    assert set(policy.ranking.provenance) == set(PROVENANCE_CLASSES)


def test_the_default_policy_only_labels_ai_generated_items() -> None:
    ranking = default_policy().ranking

    assert ranking.popularity_penalty == 0.0
    assert ranking.creator_cap is None
    assert ranking.long_tail_quota == ranking.new_creator_quota == ranking.diversity == 0.0
    assert ranking.freshness_half_life_days is None
    assert ranking.provenance["ai_generated"] == Label(action="label")
    assert all(
        ranking.provenance[name] == Allow(action="allow")
        for name in PROVENANCE_CLASSES
        if name != "ai_generated"
    )
    assert default_policy().refusals == []
    assert default_policy().fallback.kind == "popular"


def test_the_neutral_policy_allows_everything() -> None:
    policy = neutral_policy()

    assert all(t == Allow(action="allow") for t in policy.ranking.provenance.values())
    assert policy.refusals == []
    assert policy.model == Policy().model


def test_a_missing_provenance_class_means_allow() -> None:
    policy = policy_validate({"ranking": {"provenance": {"unknown": {"action": "exclude"}}}})

    assert policy.ranking.provenance["ai_generated"] == Allow(action="allow")
    assert list(policy.ranking.provenance) == list(PROVENANCE_CLASSES)


def errors_of(data: object) -> list[dict[str, str]]:
    with pytest.raises(PolicyError) as caught:
        policy_validate(data)
    assert isinstance(caught.value, ValueError)
    return caught.value.errors


@pytest.mark.parametrize(
    ("document", "path"),
    [
        ({"ranking": {"popularity_penalty": -1}}, "ranking.popularity_penalty"),
        ({"ranking": {"creator_cap": 0}}, "ranking.creator_cap"),
        ({"ranking": {"long_tail_quota": 1.5}}, "ranking.long_tail_quota"),
        ({"ranking": {"diversity": "lots"}}, "ranking.diversity"),
        ({"ranking": {"freshness_half_life_days": 0}}, "ranking.freshness_half_life_days"),
        (
            {"ranking": {"provenance": {"ai_generated": {"action": "downrank", "factor": 0}}}},
            "ranking.provenance.ai_generated.factor",
        ),
        (
            {"ranking": {"provenance": {"human": {"action": "cap_share"}}}},
            "ranking.provenance.human.max_share",
        ),
        (
            {"ranking": {"provenance": {"human": {"action": "boost"}}}},
            "ranking.provenance.human",
        ),
        ({"ranking": {"provenance": {"robot": {"action": "allow"}}}}, "ranking.provenance.robot"),
        ({"refusals": [{"kind": "tag", "tag": "x", "reason": ""}]}, "refusals.0.reason"),
        ({"refusals": [{"kind": "tag", "tag": "x"}]}, "refusals.0.reason"),
        (
            {"refusals": [{"kind": "tag", "tag": "x", "reason": "r" * 501}]},
            "refusals.0.reason",
        ),
        (
            {"refusals": [{"kind": "older_than", "days": 0, "reason": "stale"}]},
            "refusals.0.days",
        ),
        ({"refusals": [{"kind": "colour", "reason": "no"}]}, "refusals.0"),
        ({"fallback": {"kind": "random"}}, "fallback.kind"),
        ({"schema_version": 2}, "schema_version"),
        ({"model": {"factors": 0}}, "model.factors"),
    ],
)
def test_a_bad_value_names_its_path(document: dict[str, Any], path: str) -> None:
    errors = errors_of(document)

    assert [e["path"] for e in errors] == [path]
    assert errors[0]["message"]


@pytest.mark.parametrize(
    ("document", "path"),
    [
        ({"colour": "blue"}, "colour"),
        ({"ranking": {"creator_kap": 2}}, "ranking.creator_kap"),
        (
            {"ranking": {"provenance": {"human": {"action": "allow", "x": 1}}}},
            "ranking.provenance.human.x",
        ),
        ({"refusals": [{"kind": "item", "item": "a", "reason": "b", "why": 1}]}, "refusals.0.why"),
        ({"fallback": {"kind": "popular", "cap": 3}}, "fallback.cap"),
    ],
)
def test_an_unknown_field_is_rejected_with_its_path(document: dict[str, Any], path: str) -> None:
    errors = errors_of(document)

    assert [e["path"] for e in errors] == [path]
    assert "Extra inputs" in errors[0]["message"]


def test_every_problem_is_reported_at_once() -> None:
    errors = errors_of({"ranking": {"diversity": 2, "creator_cap": -1}, "oops": 1})

    assert {e["path"] for e in errors} == {"ranking.diversity", "ranking.creator_cap", "oops"}
    assert "ranking.diversity" in str(PolicyError(errors))


def test_text_that_is_not_json_or_not_an_object_is_an_error_of_the_document() -> None:
    assert [e["path"] for e in errors_of("{not json")] == [""]
    assert [e["path"] for e in errors_of(b"[1, 2]")] == [""]


def test_json_text_and_python_data_validate_alike() -> None:
    document = {"ranking": {"creator_cap": 3}, "refusals": []}

    assert policy_validate(json.dumps(document)) == policy_validate(document)


def test_canonical_json_is_sorted_compact_and_complete() -> None:
    text = Policy().canonical_json()

    assert text == canonical_json(json.loads(text))
    assert " " not in text.replace("\u00a0", "")
    assert '"ranking":{' in text and '"fallback":{' in text and '"refusals":[]' in text
    assert list(json.loads(text)) == sorted(json.loads(text))


def test_the_hash_is_stable_and_changes_with_any_setting() -> None:
    base = Policy()

    assert base.sha256() == Policy().sha256() == policy_validate({}).sha256()
    assert len(base.sha256()) == 64
    assert base.sha256() != neutral_policy().sha256()
    capped = policy_validate({"ranking": {"creator_cap": 2}})
    assert capped.sha256() != base.sha256()
    # The order in which a document spells its fields does not matter.
    a = policy_validate({"ranking": {"creator_cap": 2, "diversity": 0.5}})
    b = policy_validate({"ranking": {"diversity": 0.5, "creator_cap": 2}})
    assert a.sha256() == b.sha256()


def test_a_policy_is_immutable() -> None:
    policy = Policy()

    with pytest.raises(ValueError):
        policy.ranking.creator_cap = 3  # type: ignore[misc]


def test_the_schema_is_valid_json_schema_with_discriminators() -> None:
    jsonschema = pytest.importorskip("jsonschema")
    schema = policy_json_schema()

    jsonschema.Draft202012Validator.check_schema(schema)
    text = json.dumps(schema)
    assert '"propertyName": "action"' in text
    assert '"propertyName": "kind"' in text
    ranking = schema["$defs"]["RankingParams"]
    assert ranking["additionalProperties"] is False
    assert ranking["properties"]["creator_cap"]["description"].startswith("At most")
    validator = jsonschema.Draft202012Validator(schema)
    assert validator.is_valid(json.loads(Policy().canonical_json()))
    assert not validator.is_valid({"ranking": {"colour": 1}})
    assert not validator.is_valid({"refusals": [{"kind": "tag", "tag": "x"}]})


@settings(max_examples=40, deadline=None)
@given(document=policy_documents())
def test_the_schema_accepts_every_valid_document(document: dict[str, Any]) -> None:
    jsonschema = pytest.importorskip("jsonschema")

    jsonschema.validate(json.loads(policy_validate(document).canonical_json()), _SCHEMA)


_SCHEMA = policy_json_schema()
