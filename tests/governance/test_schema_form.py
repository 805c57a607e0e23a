"""The settings form generated from the JSON Schema, and how its changes reach the document."""

from __future__ import annotations

import json
from typing import Any

import pytest
from django.test import Client
from django.urls import reverse

from governance.charter import Charter
from governance.models import Membership, Proposal
from governance.schema_form import apply_schema_fields, schema_fields
from ranking.policy import default_policy, policy_json_schema
from tests.governance.proposal_helpers import changed_policy, make_voting_community

POLICY = default_policy().model_dump(mode="json")


def _by_path(schema: dict[str, Any], document: Any) -> dict[str, Any]:
    return {item.path: item for item in schema_fields(schema, document)}


def test_every_scalar_setting_of_the_policy_becomes_a_typed_field() -> None:
    fields = _by_path(policy_json_schema(), POLICY)
    factors = fields["model.factors"]
    assert (factors.kind, factors.value, factors.minimum, factors.maximum) == (
        "integer",
        POLICY["model"]["factors"],
        1,
        1024,
    )
    assert "factors" in factors.description.lower()
    assert fields["model.weighting"].kind == "choice"
    assert set(fields["model.weighting"].choices) == {"binary", "weight"}
    assert fields["ranking.creator_cap"].nullable  # an integer or null
    assert fields["ranking.long_tail_quota"].kind == "number"
    # Lists, maps and discriminators stay in the JSON editor.
    assert not any(path.startswith(("refusals", "ranking.provenance")) for path in fields)
    assert "schema_version" not in fields


def test_the_charter_gets_its_fields_too() -> None:
    fields = _by_path(Charter.model_json_schema(), Charter().model_dump(mode="json"))
    assert set(fields) == {
        "quorum",
        "approval_threshold",
        "voting_period_hours",
        "who_may_propose",
        "charter_change_supermajority",
    }


def _post(**changes: str) -> dict[str, str]:
    """What the browser sends for an untouched form, with ``changes`` typed into inputs."""
    data = {}
    for item in schema_fields(policy_json_schema(), POLICY):
        data[item.original_name] = item.raw
        if item.kind != "boolean":
            data[item.name] = item.raw
    for path, value in changes.items():
        data["field:" + path] = value
    return data


def test_only_changed_settings_are_written_and_json_edits_survive() -> None:
    edited = json.loads(json.dumps(POLICY))
    edited["model"]["iterations"] = 20  # typed into the JSON editor
    text = json.dumps(edited)
    assert apply_schema_fields(policy_json_schema(), text, _post()) == text
    result = json.loads(
        apply_schema_fields(
            policy_json_schema(),
            text,
            _post(**{"model.factors": "32", "ranking.creator_cap": "3", "model.alpha": "4.5"}),
        )
    )
    assert result["model"]["factors"] == 32 and result["model"]["iterations"] == 20
    assert result["ranking"]["creator_cap"] == 3 and result["model"]["alpha"] == 4.5


def test_blank_nullable_settings_become_null_and_bad_numbers_reach_the_validator() -> None:
    with_cap = json.loads(json.dumps(POLICY))
    with_cap["ranking"]["creator_cap"] = 2
    form = _post(**{"model.factors": "many"})
    form["orig:ranking.creator_cap"], form["field:ranking.creator_cap"] = "2", ""
    result = json.loads(apply_schema_fields(policy_json_schema(), json.dumps(with_cap), form))
    assert result["ranking"]["creator_cap"] is None
    assert result["model"]["factors"] == "many"  # policy_validate names model.factors


@pytest.mark.parametrize("text", ["{", "[1, 2]"])
def test_a_document_that_is_not_an_object_is_left_to_the_validator(text: str) -> None:
    assert apply_schema_fields(policy_json_schema(), text, _post(**{"model.factors": "8"})) == text


@pytest.mark.django_db
def test_without_javascript_a_changed_setting_is_saved_with_the_draft(django_user_model) -> None:  # type: ignore[no-untyped-def]
    community, moderator, _members = make_voting_community("plot", members=1)
    user = django_user_model.objects.create_user(username="mo", password="pw-mo")
    Membership.objects.filter(pk=moderator.pk).update(user=user)
    client = Client()
    assert client.login(username="mo", password="pw-mo")
    page = client.get(reverse("governance:proposal-new", args=["plot"])).content.decode()
    assert 'name="field:model.factors"' in page and 'name="orig:model.factors"' in page
    document = changed_policy(community, model={"iterations": 20})
    response = client.post(
        reverse("governance:proposal-new", args=["plot"]),
        {"title": "Cap creators", "document": json.dumps(document)}
        | _post(**{"ranking.creator_cap": "2"}),
    )
    assert response.status_code == 302, response.content
    proposal = Proposal.objects.get(community=community)
    assert proposal.document["ranking"]["creator_cap"] == 2
    assert proposal.document["model"]["iterations"] == 20
