from __future__ import annotations

import pytest
from pydantic import ValidationError

from governance.charter import Charter, default_charter


def test_the_default_charter_spells_out_the_documented_defaults() -> None:
    assert default_charter().model_dump() == {
        "schema_version": 1,
        "quorum": 0.2,
        "approval_threshold": 0.5,
        "voting_period_hours": 168,
        "who_may_propose": "moderators",
        "charter_change_supermajority": 0.66,
    }


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("quorum", -0.1),
        ("quorum", 1.5),
        ("approval_threshold", 0.4),
        ("approval_threshold", 1.01),
        ("voting_period_hours", 0),
        ("voting_period_hours", 2161),
        ("who_may_propose", "anyone"),
        ("charter_change_supermajority", 0.49),
    ],
)
def test_a_value_out_of_range_is_rejected_naming_the_field(field: str, value: object) -> None:
    with pytest.raises(ValidationError) as error:
        Charter.model_validate({field: value})
    assert error.value.errors()[0]["loc"] == (field,)


def test_an_unknown_field_is_rejected() -> None:
    with pytest.raises(ValidationError, match="quorom"):
        Charter.model_validate({"quorom": 0.3})


def test_changing_the_charter_may_not_be_easier_than_changing_the_policy() -> None:
    with pytest.raises(ValidationError, match="may not be easier"):
        Charter(approval_threshold=0.8, charter_change_supermajority=0.7)
    assert Charter(approval_threshold=0.8, charter_change_supermajority=0.8)


def test_a_charter_is_frozen_and_hashes_its_canonical_json() -> None:
    charter = Charter()
    with pytest.raises(ValidationError):
        charter.quorum = 0.9  # type: ignore[misc]
    assert Charter(quorum=0.2).sha256() == charter.sha256()
    assert Charter(quorum=0.3).sha256() != charter.sha256()
