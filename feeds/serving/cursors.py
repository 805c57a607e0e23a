"""Opaque page cursors that pin a feed generation: ``(run id, offset)``, base64url JSON."""

from __future__ import annotations

import base64
import binascii
import json


def cursor_encode(run_id: int, offset: int) -> str:
    raw = json.dumps([run_id, offset], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def cursor_decode(cursor: str | None) -> tuple[int | None, int]:
    """``(run id, offset)`` from a cursor; ``(None, 0)`` without one. ValueError if forged."""
    if not cursor:
        return None, 0
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        run_id, offset = json.loads(raw)
    except (ValueError, TypeError, binascii.Error, UnicodeDecodeError):
        raise ValueError("not a cursor") from None
    if not (type(run_id) is int and type(offset) is int) or run_id < 1 or offset < 0:
        raise ValueError("not a cursor")
    return run_id, offset
