"""A form generated from a document's JSON Schema: one input per scalar setting.

The proposal editor shows these inputs beside the JSON editor, so that the common changes (the
number of factors, the creator cap, a quota, the quorum) need no JSON. Everything the form
cannot express (refusal lists, per-provenance treatments, unions) stays in the JSON editor.

Both stay consistent without JavaScript: each input travels with its original value
(``orig:<path>``), and :func:`apply_schema_fields` writes into the document only the settings
whose input differs from its original, so an edit made in the JSON editor is never undone by an
untouched input. With JavaScript, ``static/commonfeed/editor.js`` mirrors each change into the
JSON at once and moves the original along, so nothing is applied twice.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

FIELD_PREFIX = "field:"
ORIGINAL_PREFIX = "orig:"


@dataclass(frozen=True)
class SchemaField:
    """One scalar setting of the document, as an HTML input."""

    path: str
    """Dotted path in the document, e.g. ``ranking.creator_cap``."""
    kind: str
    """``integer``, ``number``, ``boolean`` or ``choice``."""
    description: str = ""
    nullable: bool = False
    minimum: float | None = None
    maximum: float | None = None
    choices: list[str] = field(default_factory=list)
    value: Any = None

    @property
    def name(self) -> str:
        return FIELD_PREFIX + self.path

    @property
    def original_name(self) -> str:
        return ORIGINAL_PREFIX + self.path

    @property
    def raw(self) -> str:
        """The value as the input holds it (and as ``orig:`` carries it)."""
        return _raw(self.kind, self.value)

    @property
    def section(self) -> str:
        return self.path.split(".", 1)[0] if "." in self.path else ""

    @property
    def step(self) -> str:
        return "1" if self.kind == "integer" else "any"


def _raw(kind: str, value: Any) -> str:
    if kind == "boolean":
        return "true" if value else "false"
    if value is None:
        return ""
    return str(value)


def schema_fields(schema: Mapping[str, Any], document: Any) -> list[SchemaField]:
    """The scalar settings ``schema`` describes, in schema order, valued from ``document``.

    Objects are walked through ``$ref``; a setting that is an integer, a number, a boolean or a
    choice of strings (optionally also ``null``) becomes a field; arrays, maps and unions of
    several kinds are left to the JSON editor.
    """
    definitions = schema.get("$defs", {})

    def resolve(node: Mapping[str, Any]) -> Mapping[str, Any]:
        while "$ref" in node:
            node = definitions[node["$ref"].rsplit("/", 1)[-1]]
        return node

    fields: list[SchemaField] = []

    def walk(node: Mapping[str, Any], path: list[str], value: Any) -> None:
        outer = node
        node = resolve(node)
        if node.get("type") == "object" and "properties" in node:
            for name, child in node["properties"].items():
                walk(child, [*path, name], value.get(name) if isinstance(value, dict) else None)
            return
        nullable = False
        if "anyOf" in node:
            options = [resolve(option) for option in node["anyOf"]]
            concrete = [option for option in options if option.get("type") != "null"]
            if len(concrete) != 1:
                return
            nullable = len(concrete) < len(options)
            node = {**node, **concrete[0]}
        if "const" in node:  # a discriminator or a fixed schema_version: nothing to choose
            return
        kind = node.get("type")
        if "enum" in node and all(isinstance(choice, str) for choice in node["enum"]):
            kind = "choice"
        elif kind not in ("integer", "number", "boolean"):
            return
        minimum = node.get("minimum", node.get("exclusiveMinimum"))
        maximum = node.get("maximum", node.get("exclusiveMaximum"))
        fields.append(
            SchemaField(
                path=".".join(path),
                kind=str(kind),
                # Docstrings are reStructuredText; a form shows their literals as plain text.
                description=str(outer.get("description") or node.get("description") or "").replace(
                    "``", ""
                ),
                nullable=nullable,
                minimum=minimum,
                maximum=maximum,
                choices=list(node.get("enum", [])),
                value=value,
            )
        )

    walk(schema, [], document)
    return fields


def _typed(item: SchemaField, raw: str) -> Any:
    """The input's text as JSON of the setting's type; text that does not parse is passed on
    as it is, so the validator names the setting and the problem."""
    if item.kind == "boolean":
        return raw == "true"
    if raw.strip() == "" and item.nullable:
        return None
    if item.kind in ("integer", "number"):
        try:
            return int(raw) if item.kind == "integer" else float(raw)
        except ValueError:
            return raw
    return raw


def apply_schema_fields(schema: Mapping[str, Any], text: str, data: Mapping[str, str]) -> str:
    """Write the form's changed settings (``field:`` differs from ``orig:``) into the JSON
    ``text``; return it unchanged when no setting changed or the text is not a JSON object (the
    validator then reports the JSON's own problem)."""
    changed = []
    for item in schema_fields(schema, None):
        if item.original_name not in data:
            continue
        if item.kind == "boolean":
            # An unchecked box is not sent at all.
            raw = "true" if data.get(item.name) in ("true", "on") else "false"
        else:
            raw = data.get(item.name, "")
        if raw != data[item.original_name]:
            changed.append((item, raw))
    if not changed:
        return text
    try:
        document = json.loads(text)
    except ValueError:
        return text
    if not isinstance(document, dict):
        return text
    for item, raw in changed:
        node = document
        *parents, leaf = item.path.split(".")
        for name in parents:
            child = node.get(name)
            if not isinstance(child, dict):
                child = node[name] = {}
            node = child
        node[leaf] = _typed(item, raw)
    return json.dumps(document, indent=2, sort_keys=True)
