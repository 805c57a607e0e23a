"""The input gate: one strict check per kind of input, before any view sees it.

* JSON text (API bodies, the policy editor's document): :func:`json_loads` refuses nesting
  deeper than ``INPUT_MAX_JSON_DEPTH`` and NUL characters, and never raises RecursionError.
* The URL path, the query string and form fields: :class:`InputGateMiddleware` refuses NULs.
* JSON objects of both APIs: :class:`StrictInputSerializer` refuses keys it does not declare,
  and :func:`no_body_fields` any key at all where an endpoint takes no body.

PostgreSQL text and jsonb cannot store U+0000; left alone, a NUL reaches the database and the
request ends as a 500 (DataError). Either way the client gets a 400 that says why.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from itertools import accumulate
from typing import Any

from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from rest_framework import serializers
from rest_framework.exceptions import ParseError, ValidationError
from rest_framework.parsers import JSONParser

# A JSON string literal (so that brackets inside strings do not count towards the depth).
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"', re.DOTALL)
_NOT_BRACKET = re.compile(r"[^\[\]{}]")
# ``\u0000`` as an escape, not ``\\u0000`` (an escaped backslash followed by "u0000").
_NUL_ESCAPE = re.compile(r"(?<!\\)(?:\\\\)*\\u0000")
_FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data")


class InputRejected(ValueError):
    """Input the gate refuses; the message says why, for the client."""


def max_json_depth() -> int:
    return int(getattr(settings, "INPUT_MAX_JSON_DEPTH", 64))


def json_check(text: str) -> None:
    """Raise :class:`InputRejected` if ``text`` nests deeper than the limit or holds a NUL."""
    if "\x00" in text or _NUL_ESCAPE.search(text):
        raise InputRejected("NUL characters (\\u0000) are not accepted.")
    limit = max_json_depth()
    # Depth can only exceed the limit if there are more opening brackets than the limit; the
    # common (shallow) document never pays for the scan.
    if text.count("[") + text.count("{") <= limit:
        return
    brackets = _NOT_BRACKET.sub("", _STRING.sub("", text))
    depth = max(accumulate(1 if c in "[{" else -1 for c in brackets), default=0)
    if depth > limit:
        raise InputRejected(f"JSON nested deeper than {limit} levels is not accepted.")


def json_loads(text: str | bytes) -> Any:
    """``json.loads`` behind the gate: :class:`InputRejected` for a refused document, and
    ``ValueError`` (as ``json.loads``) for text that is not JSON."""
    if isinstance(text, bytes | bytearray):
        text = text.decode("utf-8")
    json_check(text)
    return json.loads(text)


class StrictJSONParser(JSONParser):  # type: ignore[misc]
    """DRF's JSON parser behind the gate: every API body passes :func:`json_check`."""

    def parse(
        self,
        stream: Any,
        media_type: str | None = None,
        parser_context: Mapping[str, Any] | None = None,
    ) -> Any:
        encoding = (parser_context or {}).get("encoding", settings.DEFAULT_CHARSET)
        try:
            return json_loads(stream.read().decode(encoding))
        except InputRejected as exc:
            raise ParseError(str(exc), code="invalid") from None
        except ValueError as exc:
            raise ParseError(f"JSON parse error - {exc}") from None


UNKNOWN_FIELD = "Unknown field."


class StrictInputSerializer(serializers.Serializer[Any]):
    """An input serializer that refuses keys it does not declare.

    DRF drops them silently, so a misspelt field (``train_on_me``) reads as "left out" and the
    request succeeds without doing what the client meant.
    """

    def to_internal_value(self, data: Any) -> Any:
        if isinstance(data, Mapping):
            unknown = sorted(set(data) - set(self.fields))
            if unknown:
                raise ValidationError({str(name): [UNKNOWN_FIELD] for name in unknown})
        return super().to_internal_value(data)


def no_body_fields(data: Any) -> None:
    """For an endpoint that takes no body: any field sent is an unknown one (400)."""
    if isinstance(data, Mapping) and data:
        raise ValidationError({str(name): [UNKNOWN_FIELD] for name in sorted(data)})
    if data is not None and not isinstance(data, Mapping):
        raise ValidationError("This endpoint takes no body.")


def _has_nul(request: HttpRequest) -> bool:
    if "\x00" in request.path:
        return True
    query = request.META.get("QUERY_STRING", "")
    if "%00" in query or "\x00" in query:
        return True
    if request.method == "POST" and request.content_type in _FORM_TYPES:
        return any(
            "\x00" in key or any("\x00" in value for value in values)
            for key, values in request.POST.lists()
        )
    return False


def _rejected(request: HttpRequest, message: str) -> HttpResponse:
    if request.path.startswith("/xrpc/"):
        return JsonResponse({"error": "InvalidRequest", "message": message}, status=400)
    if request.path.startswith("/api/"):
        return JsonResponse({"error": "invalid", "detail": message}, status=400)
    return render(request, "400.html", {"message": message}, status=400)


class InputGateMiddleware:
    """Refuses a NUL in the path, the query string or a form field with a 400: the JSON
    envelope under ``/api/``, XRPC's ``InvalidRequest`` under ``/xrpc/``, a page elsewhere."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if _has_nul(request):
            return _rejected(request, "NUL characters (\\u0000) are not accepted.")
        return self.get_response(request)
