"""Feed rows as PostgreSQL ``COPY ... FROM STDIN`` text, formatted with numpy, not per number.

A run writes one row per member: member id, then four JSON arrays (item ids, scores, base
scores, reason bits). Formatting them number by number in Python (``json.dumps`` on lists) cost
more than scoring the feeds; here each column is laid out for a whole block of rows at once:
every number gets a fixed-width slot of digits, the slots are concatenated with their
separators into one byte matrix, and a mask drops the leading zeros and padding before the
block is taken as one ``bytes``. The text is the JSON a reader expects: integers as integers,
scores with six decimals (the precision stored before), no whitespace.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import numpy.typing as npt

SCALE = 1_000_000
"""Scores are written with six decimals."""

_ZERO = ord("0")
_BLOCK = 5_000


Chunk = tuple[npt.NDArray[np.uint8], npt.NDArray[np.bool_]]


def _fixed(text: bytes, rows: int) -> Chunk:
    """The same few characters on every row."""
    raw = np.frombuffer(text, dtype=np.uint8)
    return np.broadcast_to(raw, (rows, raw.size)), np.ones((rows, raw.size), dtype=bool)


def _digits(values: npt.NDArray[np.int64], width: int, *, keep_all: bool) -> Chunk:
    """``width`` decimal digits of each (non-negative) value, as a trailing axis; leading
    zeros masked unless ``keep_all`` (the last digit is always kept)."""
    digits = np.empty((*values.shape, width), dtype=np.uint8)
    keep = np.ones((*values.shape, width), dtype=bool)
    # 32-bit division is several times faster than 64-bit where the values allow it.
    rest = values.astype(np.int32) if width <= 9 else values
    # From the last digit back, one division by a scalar per position (numpy divides integers
    # by a scalar with libdivide). A digit is a leading zero when nothing is left above it.
    for position in range(width - 1, -1, -1):
        if not keep_all and position < width - 1:
            keep[..., position] = rest > 0
        above = rest // 10
        digits[..., position] = rest - above * 10 + _ZERO
        rest = above
    return digits, keep


def _width(values: npt.NDArray[np.int64]) -> int:
    top = int(values.max()) if values.size else 0
    return max(1, len(str(top)))


def _array(values: npt.NDArray[np.int64], valid: npt.NDArray[np.bool_], *, decimals: int) -> Chunk:
    """One JSON array per row of ``values`` (``valid`` entries only, in order).

    With ``decimals``, ``values`` are fixed-point (value / 10**decimals) and are written with
    exactly that many decimals.
    """
    rows, columns = values.shape
    negative = values < 0
    magnitude = np.where(valid, np.abs(values), 0)
    parts: list[Chunk] = []
    # Per entry: separator, sign, integer digits, then "." and the decimals.
    first = np.cumsum(valid, axis=1) == 1
    comma = np.full((rows, columns, 1), ord(","), dtype=np.uint8)
    parts.append((comma, (valid & ~first)[..., None]))
    minus = np.full((rows, columns, 1), ord("-"), dtype=np.uint8)
    parts.append((minus, (valid & negative & (magnitude > 0))[..., None]))
    if decimals:
        scale = 10**decimals
        whole, fraction = magnitude // scale, magnitude % scale
        digits, keep = _digits(whole, _width(whole), keep_all=False)
        parts.append((digits, keep & valid[..., None]))
        point = np.full((rows, columns, 1), ord("."), dtype=np.uint8)
        parts.append((point, valid[..., None]))
        digits, keep = _digits(fraction, decimals, keep_all=True)
        parts.append((digits, keep & valid[..., None]))
    else:
        digits, keep = _digits(magnitude, _width(magnitude), keep_all=False)
        parts.append((digits, keep & valid[..., None]))
    body = np.concatenate([p[0] for p in parts], axis=2).reshape(rows, -1)
    mask = np.concatenate([p[1] for p in parts], axis=2).reshape(rows, -1)
    opening, opened = _fixed(b"[", rows)
    closing, closed = _fixed(b"]", rows)
    return (
        np.concatenate([opening, body, closing], axis=1),
        np.concatenate([opened, mask, closed], axis=1),
    )


def _integers(values: npt.NDArray[np.int64]) -> Chunk:
    """One integer per row (ids are non-negative)."""
    digits, keep = _digits(values, _width(values), keep_all=False)
    return digits, keep


def _fixed_point(
    values: npt.NDArray[np.floating], valid: npt.NDArray[np.bool_]
) -> npt.NDArray[np.int64]:
    """Scores in millionths. Padding slots may hold anything (-inf, NaN) and are zeroed; a
    non-finite score in a real entry is an error, as it has no JSON spelling."""
    values = np.where(valid, np.asarray(values, dtype=np.float64), 0.0)
    if not np.isfinite(values).all():
        raise ValueError("a feed entry's score is not a finite number")
    fixed: npt.NDArray[np.int64] = np.rint(values * SCALE).astype(np.int64)
    return fixed


def feed_copy_text(
    run_id: int,
    member_ids: npt.NDArray[np.int64],
    item_ids: npt.NDArray[np.int64],
    scores: npt.NDArray[np.floating],
    base_scores: npt.NDArray[np.floating],
    reasons: npt.NDArray[np.integer],
) -> Iterator[bytes]:
    """``run_id, member_id, item_ids, scores, base_scores, reasons`` rows in COPY's text format,
    a block of rows per ``bytes``. Entries whose item id is negative (padding) are left out."""
    run = str(int(run_id)).encode() + b"\t"
    for start in range(0, len(member_ids), _BLOCK):
        stop = min(start + _BLOCK, len(member_ids))
        rows = stop - start
        valid = item_ids[start:stop] >= 0
        fixed_point = [_fixed_point(column[start:stop], valid) for column in (scores, base_scores)]
        pieces = [
            _fixed(run, rows),
            _integers(np.asarray(member_ids[start:stop], dtype=np.int64)),
            _fixed(b"\t", rows),
            _array(np.asarray(item_ids[start:stop], dtype=np.int64), valid, decimals=0),
            _fixed(b"\t", rows),
            _array(fixed_point[0], valid, decimals=6),
            _fixed(b"\t", rows),
            _array(fixed_point[1], valid, decimals=6),
            _fixed(b"\t", rows),
            _array(np.asarray(reasons[start:stop], dtype=np.int64), valid, decimals=0),
            _fixed(b"\n", rows),
        ]
        text = np.concatenate([p[0] for p in pieces], axis=1)
        keep = np.concatenate([p[1] for p in pieces], axis=1)
        yield text[keep].tobytes()
