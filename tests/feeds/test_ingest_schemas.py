"""The batch rows' validators (pydantic, feeds.ingest.schemas) and the OpenAPI schema the API
publishes (DRF serializers in feeds.ingest.api) must state the same rules; apps read the schema."""

from __future__ import annotations

from typing import Any

import pytest
from django.test import Client
from pydantic import TypeAdapter

from feeds.ingest import schemas as ingest_schemas

pytestmark = pytest.mark.django_db


def _resolve(schema: dict[str, Any], components: dict[str, Any]) -> dict[str, Any]:
    if "$ref" in schema:
        return _resolve(components[schema["$ref"].rsplit("/", 1)[1]], components)
    if "allOf" in schema and len(schema["allOf"]) == 1:
        return _resolve(schema["allOf"][0], components)
    return schema


def _rules(schema: dict[str, Any], components: dict[str, Any]) -> dict[str, Any]:
    """What a value must be, in one normal form for OpenAPI 3.0 and pydantic's JSON Schema."""
    schema = _resolve(schema, components)
    nullable = bool(schema.get("nullable"))
    if "anyOf" in schema:  # pydantic's ``X | None``
        options = [s for s in schema["anyOf"] if s.get("type") != "null"]
        nullable = len(options) < len(schema["anyOf"])
        (schema,) = options
    if "oneOf" in schema:  # DRF's URLField with allow_blank: a URL, or the empty string
        url, blank = schema["oneOf"]
        assert blank == {"type": "string", "maxLength": 0}
        schema = {**url, "format": "url-or-blank"}
    rules: dict[str, Any] = {"nullable": nullable}
    for key in ("type", "enum", "minLength", "maxLength", "minimum", "maximum"):
        if key in schema:
            rules[key] = schema[key]
    for key in ("minItems", "maxItems"):
        rules[key] = schema.get(key)
    if "pattern" in schema:
        # The validator also refuses null characters (PostgreSQL text cannot hold them).
        rules["pattern"] = schema["pattern"].replace(r"\x00", "")
    if schema.get("format") == "date-time":
        rules["format"] = "date-time"
    if "items" in schema:
        rules["items"] = _rules(schema["items"], components)
    return rules


@pytest.fixture(scope="module")
def openapi(django_db_blocker: Any) -> dict[str, Any]:
    with django_db_blocker.unblock():
        response = Client().get("/api/v1/schema/", HTTP_ACCEPT="application/json")
    assert response.status_code == 200
    return response.json()  # type: ignore[no-any-return]


@pytest.mark.parametrize(
    ("component", "row"),
    [
        ("MemberRowRequest", ingest_schemas.MemberRow),
        ("CreatorRowRequest", ingest_schemas.CreatorRow),
        ("ItemRowRequest", ingest_schemas.ItemRow),
        ("EventRowRequest", ingest_schemas.EventRow),
    ],
)
def test_each_row_validator_says_what_the_published_schema_says(
    openapi: dict[str, Any], component: str, row: type[Any]
) -> None:
    components = openapi["components"]["schemas"]
    published = components[component]
    validator = TypeAdapter(row).json_schema()
    assert published["additionalProperties"] is False
    assert validator["additionalProperties"] is False
    assert set(published["required"]) == set(validator["required"])
    assert set(published["properties"]) == set(validator["properties"])
    for name, schema in published["properties"].items():
        expected = _rules(schema, components)
        actual = _rules(validator["properties"][name], {})
        if expected.get("format") == "url-or-blank":
            # Which URLs: Django's URLValidator (as DRF's URLField), not expressible as a rule.
            del expected["format"]
        assert actual == expected, name


def test_the_batch_request_wraps_rows_in_the_documented_envelope(openapi: dict[str, Any]) -> None:
    components = openapi["components"]["schemas"]
    for key in ("members", "creators", "items", "events"):
        envelope = components[f"{key.title()}BatchRequest"]
        assert envelope["required"] == [key]
        rows = envelope["properties"][key]
        assert (rows["minItems"], rows["maxItems"]) == (1, 1000)
