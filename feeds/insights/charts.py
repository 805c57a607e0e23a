"""Line charts as inline SVG, drawn on the server: no JavaScript, no chart library, no CDN.

Every text that reaches the markup (titles, labels, dates) is escaped here, so a caller may mark
the result safe. Each chart is an ``<svg role="img">`` named by its ``<title>`` and summarised by
its ``<desc>`` for screen readers; pages show the same figures as a table beside it.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from html import escape

__all__ = ["Series", "line_chart"]

# Colour and dash per series, so that lines differ without colour too (colour-blind readers,
# printing in black and white).
_STYLES = (
    ("#1f6feb", ""),
    ("#d1242f", "6 4"),
    ("#1a7f37", "2 3"),
    ("#8250df", "10 3 2 3"),
)
_ID = re.compile(r"[A-Za-z][A-Za-z0-9_-]*\Z")


@dataclass(frozen=True)
class Series:
    """One line: its label and its points ``(when, value)``, in any order."""

    label: str
    points: Sequence[tuple[datetime, float]]


def _e(text: object) -> str:
    return escape(str(text), quote=True)


def _top(values: Sequence[float]) -> float:
    """The top of the y axis: the largest value rounded up to one significant digit (1 when
    there is nothing above 0). The axis always starts at 0, so a small change looks small."""
    largest = max(values, default=0.0)
    if largest <= 0:
        return 1.0
    step = 10.0 ** math.floor(math.log10(largest))
    return math.ceil(largest / step - 1e-9) * step


def _number(value: float, top: float) -> str:
    return f"{value:.3f}" if top < 0.1 else f"{value:.2f}"


def line_chart(
    *,
    chart_id: str,
    title: str,
    series: Sequence[Series],
    description: str = "",
    width: int = 640,
    height: int = 240,
) -> str:
    """An SVG line chart of ``series`` over time, as markup to inline in a page.

    ``chart_id`` names the chart's ``<title>`` and ``<desc>`` elements (letters, digits, ``-``
    and ``_``, starting with a letter). Values are drawn from 0 to a rounded-up maximum; each
    point carries its own ``<title>`` (shown on hover). A chart without points says so.
    """
    if not _ID.match(chart_id):
        raise ValueError(f"chart_id must be a plain identifier, got {chart_id!r}")
    left, right, top_margin, bottom = 52, 16, 12, 28 + 18 * len(series)
    plot_w, plot_h = width - left - right, height - top_margin - bottom
    if plot_w <= 0 or plot_h <= 0:
        raise ValueError("the chart is too small for its series")
    points = [p for s in series for p in s.points]
    labelled = f'aria-labelledby="{chart_id}-title {chart_id}-desc"'
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" viewBox="0 0 {width} {height}" '
        f'width="{width}" height="{height}" style="max-width:100%;height:auto" role="img" '
        f"{labelled}>",
        f'<title id="{chart_id}-title">{_e(title)}</title>',
        f'<desc id="{chart_id}-desc">{_e(description or _summary(series))}</desc>',
    ]
    if not points:
        out.append(
            f'<text x="{width / 2:.1f}" y="{height / 2:.1f}" text-anchor="middle" '
            f'fill="#57606a">No figures yet.</text></svg>'
        )
        return "".join(out)
    y_top = _top([v for _, v in points])
    times = [t.timestamp() for t, _ in points]
    t0, t1 = min(times), max(times)

    def x(when: datetime) -> float:
        if t1 == t0:
            return left + plot_w / 2
        return left + (when.timestamp() - t0) / (t1 - t0) * plot_w

    def y(value: float) -> float:
        return top_margin + plot_h - max(0.0, min(value, y_top)) / y_top * plot_h

    for tick in (0.0, y_top / 2, y_top):
        out.append(
            f'<line x1="{left}" x2="{left + plot_w}" y1="{y(tick):.1f}" y2="{y(tick):.1f}" '
            f'stroke="#d0d7de" stroke-width="1"/>'
            f'<text x="{left - 6}" y="{y(tick) + 4:.1f}" text-anchor="end" font-size="12" '
            f'fill="#57606a">{_number(tick, y_top)}</text>'
        )
    first, last = min(points)[0], max(points)[0]
    axis_y = top_margin + plot_h + 16
    out.append(
        f'<text x="{x(first):.1f}" y="{axis_y}" text-anchor="{"middle" if t1 == t0 else "start"}" '
        f'font-size="12" fill="#57606a">{_e(first.strftime("%Y-%m-%d %H:%M"))}</text>'
    )
    if t1 != t0:
        out.append(
            f'<text x="{x(last):.1f}" y="{axis_y}" text-anchor="end" font-size="12" '
            f'fill="#57606a">{_e(last.strftime("%Y-%m-%d %H:%M"))}</text>'
        )
    for n, line in enumerate(series):
        colour, dash = _STYLES[n % len(_STYLES)]
        dashes = f' stroke-dasharray="{dash}"' if dash else ""
        ordered = sorted(line.points)
        if len(ordered) > 1:
            path = " ".join(f"{x(t):.1f},{y(v):.1f}" for t, v in ordered)
            out.append(
                f'<polyline points="{path}" fill="none" stroke="{colour}" stroke-width="2"'
                f"{dashes}/>"
            )
        for when, value in ordered:
            tip = f"{line.label}: {value:.3f} ({when.strftime('%Y-%m-%d %H:%M')})"
            out.append(
                f'<circle cx="{x(when):.1f}" cy="{y(value):.1f}" r="3" fill="{colour}">'
                f"<title>{_e(tip)}</title></circle>"
            )
        legend_y = top_margin + plot_h + 36 + 18 * n
        out.append(
            f'<line x1="{left}" x2="{left + 28}" y1="{legend_y - 4}" y2="{legend_y - 4}" '
            f'stroke="{colour}" stroke-width="2"{dashes}/>'
            f'<text x="{left + 36}" y="{legend_y}" font-size="12">{_e(line.label)}</text>'
        )
    out.append("</svg>")
    return "".join(out)


def _summary(series: Sequence[Series]) -> str:
    """What the chart shows, in words: each line's first and latest value."""
    parts = []
    for line in series:
        ordered = sorted(line.points)
        if not ordered:
            parts.append(f"{line.label}: no figures")
        elif len(ordered) == 1:
            parts.append(f"{line.label}: {ordered[0][1]:.3f}")
        else:
            parts.append(
                f"{line.label}: from {ordered[0][1]:.3f} to {ordered[-1][1]:.3f} "
                f"over {len(ordered)} runs"
            )
    return "; ".join(parts) + "." if parts else "No figures."
