"""feeds.insights.charts: server-side SVG line charts, well-formed, accessible and escaped."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from datetime import UTC, datetime, timedelta

import pytest

from feeds.insights.charts import Series, _top, line_chart

SVG = "{http://www.w3.org/2000/svg}"
T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def days(*values: float) -> list[tuple[datetime, float]]:
    return [(T0 + timedelta(days=n), value) for n, value in enumerate(values)]


def parse(markup: str) -> ET.Element:
    return ET.fromstring(markup)  # fails on markup that is not well-formed XML


def test_a_chart_is_an_image_named_by_its_title_and_described_in_words() -> None:
    svg = parse(
        line_chart(
            chart_id="trend-x",
            title="Long-tail creators",
            series=[Series("Long tail", days(0.1, 0.2, 0.3))],
        )
    )
    assert svg.tag == f"{SVG}svg" and svg.get("role") == "img"
    assert svg.get("aria-labelledby") == "trend-x-title trend-x-desc"
    assert svg.find(f"{SVG}title").text == "Long-tail creators"  # type: ignore[union-attr]
    desc = svg.find(f"{SVG}desc")
    assert desc is not None and desc.get("id") == "trend-x-desc"
    assert desc.text == "Long tail: from 0.100 to 0.300 over 3 runs."


def test_each_series_is_a_line_with_a_titled_point_per_run_and_a_legend() -> None:
    markup = line_chart(
        chart_id="c",
        title="Provenance",
        series=[Series("Human-made", days(0.9, 0.8)), Series("AI-generated", days(0.05))],
    )
    svg = parse(markup)
    lines = svg.findall(f"{SVG}polyline")
    assert len(lines) == 1  # one point is a dot, not a line
    circles = svg.findall(f"{SVG}circle")
    assert [c.find(f"{SVG}title").text for c in circles] == [  # type: ignore[union-attr]
        "Human-made: 0.900 (2026-03-01 12:00)",
        "Human-made: 0.800 (2026-03-02 12:00)",
        "AI-generated: 0.050 (2026-03-01 12:00)",
    ]
    # Lines differ by dash as well as colour; the legend names them.
    legend = [t.text for t in svg.findall(f"{SVG}text")]
    assert "Human-made" in legend and "AI-generated" in legend
    assert 'stroke-dasharray="6 4"' in markup
    # The axis starts at 0 and ends at the largest value rounded up: 0.9.
    assert {"0.00", "0.45", "0.90"} <= set(legend)
    assert "2026-03-01 12:00" in legend and "2026-03-02 12:00" in legend


def test_points_lie_inside_the_plot_oldest_on_the_left() -> None:
    svg = parse(line_chart(chart_id="c", title="t", series=[Series("s", days(0.0, 1.0, 0.5))]))
    circles = svg.findall(f"{SVG}circle")
    xs = [float(c.get("cx", "")) for c in circles]
    ys = [float(c.get("cy", "")) for c in circles]
    assert xs == sorted(xs) and xs[0] == 52.0 and xs[-1] == 640 - 16
    assert ys[0] > ys[2] > ys[1] >= 12  # 0 lowest, 1 at the top of the plot


def test_every_text_is_escaped() -> None:
    markup = line_chart(
        chart_id="c",
        title='<script>alert("t")</script> & more',
        series=[Series("<b>bold</b>", days(0.5))],
        description="a < b",
    )
    assert "<script>" not in markup and "<b>" not in markup
    assert "&lt;script&gt;alert(&quot;t&quot;)&lt;/script&gt; &amp; more" in markup
    svg = parse(markup)
    assert svg.find(f"{SVG}desc").text == "a < b"  # type: ignore[union-attr]
    with pytest.raises(ValueError, match="chart_id"):
        line_chart(chart_id='c" onload="x', title="t", series=[])


def test_a_chart_without_figures_says_so() -> None:
    svg = parse(line_chart(chart_id="c", title="t", series=[Series("s", [])]))
    assert [t.text for t in svg.findall(f"{SVG}text")] == ["No figures yet."]
    assert svg.find(f"{SVG}desc").text == "s: no figures."  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("values", "top"),
    [([0.82], 0.9), ([0.05, 0.01], 0.05), ([0.031], 0.04), ([1.0], 1.0), ([], 1.0), ([0.0], 1.0)],
)
def test_the_axis_top_rounds_the_largest_value_up(values: list[float], top: float) -> None:
    assert _top(values) == pytest.approx(top)
