"""Rendering and the HTTP helpers: real matplotlib output, reproducible bytes, content
negotiation and If-None-Match."""

import io
import json
import os
import signal
import xml.etree.ElementTree as ET

import pytest
from matplotlib import image as mpimg

from datalab.core.errors import Problem
from datalab.viz.negotiation import etag_matches, negotiate
from datalab.viz.render import MAX_CATEGORIES, MAX_SERIES, draw, render
from datalab.viz.render_pool import RenderPool
from datalab.viz.spec import VALUE, ChartError, ChartSpec

DS = "7c9e6679-7425-40de-944b-e07fc1f90ae7"
TYPES = {"city": "string", "x": "float", "y": "float", "n": "integer", "day": "date"}
POINTS = [{"x": i / 7, "y": (i * 37) % 11 / 3, "city": "AB"[i % 2], "n": i % 5, "day": f"2024-01-{i % 28 + 1:02d}"}
          for i in range(200)]


def chart(**fields) -> ChartSpec:
    return ChartSpec(dataset_id=DS, **fields)


def png_shape(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return mpimg.imread(io.BytesIO(data), format="png").shape[:2]


@pytest.mark.parametrize(
    "fields, rows",
    [
        ({"kind": "bar", "x": "city", "y": "x"}, [{"city": "A", VALUE: 1.5}, {"city": "B", VALUE: None}]),
        ({"kind": "line", "x": "day", "y": "y", "group_by": "city"}, POINTS),
        ({"kind": "scatter", "x": "x", "y": "y"}, POINTS),
        ({"kind": "histogram", "x": "x", "group_by": "city", "bins": 7}, POINTS),
        ({"kind": "heatmap", "x": "city", "y": "n"},
         [{"city": "A", "n": 1, VALUE: 3}, {"city": "B", "n": 2, VALUE: 1}]),
        ({"kind": "heatmap", "x": "x", "y": "city", "value": "n", "aggregate": "median"}, POINTS),
        ({"kind": "scatter", "x": "x", "y": "y", "title": "cost in $ and $$ {"}, []),  # no mathtext, no data
    ],
)
def test_every_kind_renders_reproducibly(fields, rows):
    spec = chart(**fields, width=640, height=360)
    result = {"rows": rows, "total": len(rows)}
    png = render(spec, TYPES, result, "png")
    assert png_shape(png) == (360, 640) and png == render(spec, TYPES, result, "png")
    svg = render(spec, TYPES, result, "svg")
    assert ET.fromstring(svg).tag.endswith("svg") and svg == render(spec, TYPES, result, "svg")


# A float column holding NaN or ±inf: data sends those as null (they are not SQL nulls, so
# the chart query's not_null filter keeps them). Binning them failed the render (a 500).
NON_FINITE = [{"x": 1.5, "y": 0.5, "city": "A"}, {"x": None, "y": 2.0, "city": "B"},
              {"x": 2.5, "y": None, "city": "A"}, {"x": 3.0, "y": 1.0, "city": "B"}]


@pytest.mark.parametrize(
    "fields, rows",
    [
        ({"kind": "histogram", "x": "x"}, NON_FINITE),
        ({"kind": "histogram", "x": "x", "group_by": "city"}, NON_FINITE),
        ({"kind": "heatmap", "x": "x", "y": "city"}, NON_FINITE),
        ({"kind": "heatmap", "x": "x", "y": "y"}, NON_FINITE),
        ({"kind": "histogram", "x": "x"}, [{"x": None}, {"x": None}]),  # nothing finite at all
    ],
)
def test_non_finite_values_are_left_out_of_bins(fields, rows):
    spec = chart(**fields, width=400, height=300)
    for fmt in ("png", "svg"):
        image = render(spec, TYPES, {"rows": rows, "total": len(rows)}, fmt)
        assert image == render(spec, TYPES, {"rows": rows, "total": len(rows)}, fmt)
    assert png_shape(render(spec, TYPES, {"rows": rows, "total": len(rows)}, "png")) == (300, 400)
    svg = render(spec, TYPES, {"rows": rows, "total": len(rows)}, "svg").decode()
    assert "without a finite value left out" in svg


def test_draw_parses_data_answer_and_times_itself():
    body = json.dumps({"rows": POINTS, "total": 5000}).encode()
    image, seconds = draw(chart(kind="scatter", x="x", y="y"), TYPES, body, "png")
    assert png_shape(image) == (500, 800) and seconds > 0


def test_too_many_series_or_categories_is_a_chart_error():
    many = [{"x": 1.0, "y": 1.0, "city": f"c{i}"} for i in range(MAX_SERIES + 1)]
    with pytest.raises(ChartError) as err:
        render(chart(kind="scatter", x="x", y="y", group_by="city"), TYPES, {"rows": many, "total": len(many)}, "png")
    assert err.value.column == "city"
    bars = [{"n": i, VALUE: 1} for i in range(MAX_CATEGORIES + 1)]
    with pytest.raises(ChartError):
        render(chart(kind="bar", x="n"), TYPES, {"rows": bars, "total": len(bars)}, "png")


@pytest.mark.parametrize(
    "accept, fmt",
    [
        (None, "png"),
        ("", "png"),
        ("*/*", "png"),
        ("image/*", "png"),
        ("image/png", "png"),
        ("image/svg+xml", "svg"),
        ("IMAGE/SVG+XML; charset=utf-8", "svg"),
        ("image/png;q=0.5, image/svg+xml;q=0.9", "svg"),
        ("image/svg+xml, */*;q=0.1", "svg"),
        ("image/avif,image/webp,image/svg+xml,image/*,*/*;q=0.8", "png"),  # a tie: PNG
        ("text/html, image/png;q=0.2", "png"),
        ("image/*, image/png;q=0", "svg"),  # PNG refused explicitly
    ],
)
def test_negotiate(accept, fmt):
    assert negotiate(accept) == fmt


@pytest.mark.parametrize("accept", ["application/pdf", "text/html, application/json", "image/png;q=0", "image/*;q=0"])
def test_negotiate_refuses_with_406(accept):
    with pytest.raises(Problem) as err:
        negotiate(accept)
    assert err.value.status == 406


def test_if_none_match():
    etag = '"abc"'
    assert etag_matches('"abc"', etag)
    assert etag_matches('"x", W/"abc"', etag)
    assert etag_matches("*", etag)
    assert not etag_matches('"abcd"', etag)
    assert not etag_matches(None, etag) and not etag_matches("", etag)


async def test_render_pool_draws_in_processes_and_survives_a_dead_worker():
    pool = RenderPool(1)
    try:
        await pool.warm()
        spec = chart(kind="scatter", x="x", y="y")
        body = json.dumps({"rows": POINTS, "total": len(POINTS)}).encode()
        first, _ = await pool.draw(spec, TYPES, body, "png")
        for pid in list(pool.pool._processes):
            os.kill(pid, signal.SIGKILL)  # an OOM kill, say
        again, _ = await pool.draw(spec, TYPES, body, "png")
        assert again == first
        many = json.dumps({"rows": [{"x": 1.0, "y": 1.0, "city": f"c{i}"} for i in range(30)], "total": 30}).encode()
        with pytest.raises(ChartError):  # crosses the process boundary intact
            await pool.draw(chart(kind="scatter", x="x", y="y", group_by="city"), TYPES, many, "png")
    finally:
        await pool.close()
