"""Validate values against the atproto lexicon files in ../shared/specs/atproto (not a copy).

Covers the lexicon types these endpoints use: object, string (maxLength, format at-uri / did),
integer, boolean, array, ref (local ``#def`` and ``nsid#def``), union and unknown.
"""

from __future__ import annotations

import json
import re
from functools import cache
from pathlib import Path
from typing import Any

SPECS = Path(__file__).resolve().parents[2] / "shared" / "specs" / "atproto"
FORMATS = {
    "at-uri": re.compile(r"^at://[^/\s]+(/[^/\s]+(/[^/\s]+)?)?$"),
    "did": re.compile(r"^did:[a-z]+:[A-Za-z0-9._:%-]+$"),
}


class LexiconError(AssertionError):
    pass


@cache
def _lexicon(nsid: str) -> dict[str, Any]:
    return json.loads((SPECS / f"{nsid}.json").read_text())  # type: ignore[no-any-return]


def _resolve(ref: str, nsid: str) -> tuple[dict[str, Any], str]:
    target_nsid, _, name = ref.partition("#")
    target_nsid = target_nsid or nsid
    return _lexicon(target_nsid)["defs"][name or "main"], target_nsid


def output_schema(nsid: str) -> dict[str, Any]:
    return _lexicon(nsid)["defs"]["main"]["output"]["schema"]  # type: ignore[no-any-return]


def validate(value: Any, schema: dict[str, Any], nsid: str, path: str = "$") -> None:
    kind = schema["type"]
    if kind == "ref":
        target, target_nsid = _resolve(schema["ref"], nsid)
        validate(value, target, target_nsid, path)
    elif kind == "union":
        if not isinstance(value, dict) or "$type" not in value:
            raise LexiconError(f"{path}: union member needs $type")
        refs = {r if "#" in r and not r.startswith("#") else f"{nsid}{r}" for r in schema["refs"]}
        if value["$type"] not in refs:
            raise LexiconError(f"{path}: $type {value['$type']!r} not in {sorted(refs)}")
        target, target_nsid = _resolve(value["$type"], nsid)
        validate(value, target, target_nsid, path)
    elif kind == "object":
        if not isinstance(value, dict):
            raise LexiconError(f"{path}: expected an object")
        for name in schema.get("required", []):
            if name not in value:
                raise LexiconError(f"{path}: missing required {name!r}")
        properties = schema.get("properties", {})
        for name, item in value.items():
            if name == "$type":
                continue
            if name not in properties:
                raise LexiconError(f"{path}: unexpected property {name!r}")
            validate(item, properties[name], nsid, f"{path}.{name}")
    elif kind == "array":
        if not isinstance(value, list):
            raise LexiconError(f"{path}: expected an array")
        for index, item in enumerate(value):
            validate(item, schema["items"], nsid, f"{path}[{index}]")
    elif kind == "string":
        if not isinstance(value, str):
            raise LexiconError(f"{path}: expected a string")
        if "maxLength" in schema and len(value.encode()) > schema["maxLength"]:
            raise LexiconError(f"{path}: longer than {schema['maxLength']} bytes")
        fmt = schema.get("format")
        if fmt in FORMATS and not FORMATS[fmt].match(value):
            raise LexiconError(f"{path}: not a valid {fmt}: {value!r}")
    elif kind == "integer":
        if not isinstance(value, int) or isinstance(value, bool):
            raise LexiconError(f"{path}: expected an integer")
    elif kind == "boolean":
        if not isinstance(value, bool):
            raise LexiconError(f"{path}: expected a boolean")
    elif kind != "unknown":
        raise LexiconError(f"{path}: lexicon type {kind!r} not supported by this validator")


def validate_output(nsid: str, body: Any) -> None:
    validate(body, output_schema(nsid), nsid)


def error_names(nsid: str) -> set[str]:
    return {e["name"] for e in _lexicon(nsid)["defs"]["main"].get("errors", [])}
