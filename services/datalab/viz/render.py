"""Drawing a chart spec's data to PNG or SVG bytes with matplotlib.

Runs in the render worker processes (render_pool.RenderPool), each drawing one chart at a
time and many in its life: only the object API (a `Figure` per call on an Agg canvas),
never pyplot's global state, so a render leaves nothing behind for the next. Output is
byte-for-byte reproducible (no dates, no random SVG ids), which is what lets the cache key
double as a strong ETag.
"""

from __future__ import annotations

import datetime as dt
import io
import itertools
import json
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import matplotlib
import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from .spec import VALUE, ChartError, ChartSpec, Format, binned_axes

# Part of every cache key: bump RENDER_VERSION when a change here alters the pictures.
RENDER_VERSION = 1
RENDERER = f"viz{RENDER_VERSION}/matplotlib-{matplotlib.__version__}"
MAX_SERIES = 20  # group_by values; more is an unreadable legend
MAX_CATEGORIES = 200  # bars, or cells along one heatmap axis
DPI = 100

# SVG ids are salted with a random uuid per render unless this is set; a fixed salt keeps
# the bytes stable for equal input. Set once, at import: every worker imports this module.
matplotlib.rcParams["svg.hashsalt"] = "datalab-viz"
_METADATA: dict[str, dict[str, Any]] = {"png": {"Software": None}, "svg": {"Date": None}}


def draw(spec: ChartSpec, types: Mapping[str, str], body: bytes, fmt: Format) -> tuple[bytes, float]:
    """The render workers' entry point: data's raw query answer in, (image, seconds) out.
    JSON is parsed here, in the worker, not on the service's event loop."""
    start = time.perf_counter()
    image = render(spec, types, json.loads(body), fmt)
    return image, time.perf_counter() - start


def render(spec: ChartSpec, types: Mapping[str, str], result: dict[str, Any], fmt: Format) -> bytes:
    """The chart of data's query `result` (columns, rows, total) as image bytes."""
    rows = [_parse_dates(r, types) for r in result["rows"]]
    rows, dropped = _binnable(spec, types, rows)
    fig = Figure(figsize=(spec.width / DPI, spec.height / DPI), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    if not rows:
        ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes, color="gray")
    elif spec.kind == "heatmap":
        _heatmap(fig, ax, spec, types, rows)
    elif spec.kind == "histogram":
        _histogram(ax, spec, rows)
    else:
        _series(fig, ax, spec, rows)
    ax.set_title(_text(spec.title if spec.title is not None else default_title(spec)))
    notes = []
    if (total := result.get("total", 0)) > len(rows) + dropped:  # data answers one page at most
        unit = "rows" if spec.func is None or binned_axes(spec, types) else "groups"
        notes.append(f"first {len(rows) + dropped:,} of {total:,} {unit}")
    if dropped:
        notes.append(f"{dropped:,} rows without a finite value left out")
    if notes:
        fig.text(0.995, 0.005, "; ".join(notes), ha="right", va="bottom", fontsize=7, color="gray")
    out = io.BytesIO()
    fig.savefig(out, format=fmt, metadata=_METADATA[fmt])
    return out.getvalue()


def default_title(spec: ChartSpec) -> str:
    if spec.kind == "histogram":
        return f"Distribution of {spec.x}"
    if spec.func is None:  # raw points: scatter, line
        return f"{spec.y} by {spec.x}"
    return f"{value_label(spec)} by {spec.x}" + (f" and {spec.y}" if spec.kind == "heatmap" else "")


def value_label(spec: ChartSpec) -> str:
    if spec.func == "count":
        return "count"
    return f"{spec.func}({spec.value if spec.kind == 'heatmap' else spec.y})"


def _text(s: object) -> str:
    # User text (titles, column names, categories) is never mathtext: an odd "$" would
    # otherwise fail the render.
    return str(s).replace("$", r"\$")


def _label(value: Any) -> str:
    """A category as tick text: dates without a midnight time part."""
    if isinstance(value, dt.datetime) and value.time() == dt.time() and value.tzinfo is None:
        value = value.date()
    return _text(value)


def _parse_dates(row: dict[str, Any], types: Mapping[str, str]) -> dict[str, Any]:
    """Data sends dates as ISO text; as datetimes they get a time axis."""
    out = dict(row)
    for name, value in row.items():
        if isinstance(value, str) and types.get(name) in ("date", "datetime"):
            out[name] = dt.datetime.fromisoformat(value)
    return out


def _binnable(spec: ChartSpec, types: Mapping[str, str],
              rows: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], int]:
    """Rows that have a place in the bins, and how many do not. Binning needs finite numbers:
    a float column can hold NaN or ±inf, which data sends as null (they are not SQL nulls, so
    its not_null filter keeps them)."""
    if spec.kind == "histogram":
        binned = [spec.x]
    elif spec.kind == "heatmap":
        binned = [c for c in (spec.x, spec.y) if c is not None and types.get(c) == "float"]
    else:
        return rows, 0
    kept = [r for r in rows if all(_finite(r[c]) for c in binned)]
    return kept, len(rows) - len(kept)


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and bool(np.isfinite(value))


def _groups(spec: ChartSpec, rows: list[dict[str, Any]]) -> dict[Any, list[dict[str, Any]]]:
    """Rows per group_by value (one group, None, without group_by); 422 if too many."""
    groups: dict[Any, list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault(r[spec.group_by] if spec.group_by else None, []).append(r)
    if len(groups) > MAX_SERIES:
        raise ChartError(
            f"group_by {spec.group_by!r} has {len(groups)} values; a chart shows at most {MAX_SERIES}.",
            spec.group_by,
        )
    return dict(sorted(groups.items(), key=lambda kv: _sort_key(kv[0])))


def _sort_key(value: Any) -> tuple[int, Any]:
    # Values of one column share a type; None sorts first (the ungrouped series).
    return (0, 0) if value is None else (1, value)


def _categories(name: str, values: Sequence[Any]) -> list[Any]:
    cats = sorted(set(values), key=_sort_key)
    if len(cats) > MAX_CATEGORIES:
        raise ChartError(
            f"Column {name!r} has {len(cats)} distinct values here; a chart shows at most "
            f"{MAX_CATEGORIES} along an axis (a histogram or a float heatmap axis bins them).",
            name,
        )
    return cats


def _series(fig: Figure, ax: Axes, spec: ChartSpec, rows: list[dict[str, Any]]) -> None:
    """bar, line and scatter: one series per group_by value."""
    ykey = VALUE if spec.func is not None else spec.y
    assert ykey is not None  # ChartSpec: raw points need y
    groups = _groups(spec, rows)
    if spec.kind == "bar":
        cats = _categories(spec.x, [r[spec.x] for r in rows])
        pos = {c: i for i, c in enumerate(cats)}
        width = 0.8 / len(groups)
        for i, (name, points) in enumerate(groups.items()):
            xs = [pos[p[spec.x]] - 0.4 + width * (i + 0.5) for p in points]
            ys = [np.nan if p[ykey] is None else p[ykey] for p in points]
            ax.bar(xs, ys, width=width, label=None if name is None else _text(name))
        _ticks(ax.xaxis, [_label(c) for c in cats])
    else:
        for name, points in groups.items():
            xs = [p[spec.x] for p in points]
            ys = [np.nan if p[ykey] is None else p[ykey] for p in points]
            label = None if name is None else _text(name)
            if spec.kind == "line":
                ax.plot(xs, ys, marker="o" if len(points) <= 50 else None, markersize=4, label=label)
            else:
                ax.scatter(xs, ys, s=10, alpha=0.7, label=label)
        if isinstance(rows[0][spec.x], dt.datetime):
            fig.autofmt_xdate()
    ax.set_xlabel(_text(spec.x))
    ax.set_ylabel(_text(spec.y if spec.func is None else value_label(spec)))
    if spec.group_by:
        ax.legend(title=_text(spec.group_by), fontsize="small")


def _histogram(ax: Axes, spec: ChartSpec, rows: list[dict[str, Any]]) -> None:
    groups = _groups(spec, rows)
    edges = np.histogram_bin_edges(np.array([r[spec.x] for r in rows], dtype=float), bins=spec.nbins)
    for name, points in groups.items():
        values = np.array([p[spec.x] for p in points], dtype=float)
        ax.hist(values, bins=edges.tolist(), alpha=0.6 if spec.group_by else 1.0, edgecolor="white",
                label=None if name is None else _text(name))
    ax.set_xlabel(_text(spec.x))
    ax.set_ylabel("count")
    if spec.group_by:
        ax.legend(title=_text(spec.group_by), fontsize="small")


def _heatmap(fig: Figure, ax: Axes, spec: ChartSpec, types: Mapping[str, str], rows: list[dict[str, Any]]) -> None:
    assert spec.y is not None
    x_index, x_labels = _axis(spec.x, types[spec.x], [r[spec.x] for r in rows], spec.nbins)
    y_index, y_labels = _axis(spec.y, types[spec.y], [r[spec.y] for r in rows], spec.nbins)
    cells: dict[tuple[int, int], list[Any]] = {}
    for r, i, j in zip(rows, x_index, y_index, strict=True):
        cells.setdefault((j, i), []).append(r)
    grid = np.full((len(y_labels), len(x_labels)), np.nan)
    for (j, i), members in cells.items():
        grid[j, i] = _cell(spec, members, binned_axes(spec, types))
    image = ax.imshow(np.ma.masked_invalid(grid), aspect="auto", origin="lower", cmap="viridis",
                      interpolation="nearest")
    _ticks(ax.xaxis, x_labels)
    _ticks(ax.yaxis, y_labels)
    ax.set_xlabel(_text(spec.x))
    ax.set_ylabel(_text(spec.y))
    fig.colorbar(image, ax=ax, label=_text(value_label(spec)))


def _axis(name: str, kind: str, values: list[Any], bins: int) -> tuple[list[int], list[str]]:
    """Each value's cell index along a heatmap axis, and the cell labels."""
    if kind == "float":
        data = np.array(values, dtype=float)
        edges = np.histogram_bin_edges(data, bins=bins)
        index = np.clip(np.searchsorted(edges, data, side="right") - 1, 0, bins - 1)
        return index.tolist(), [f"{a:.3g}–{b:.3g}" for a, b in itertools.pairwise(edges)]
    cats = _categories(name, values)
    pos = {c: i for i, c in enumerate(cats)}
    return [pos[v] for v in values], [_label(c) for c in cats]


def _cell(spec: ChartSpec, members: list[dict[str, Any]], raw: bool) -> float:
    """A heatmap cell: data's aggregate, or (binned axes) the aggregate of raw rows."""
    if not raw:
        value = members[0][VALUE]
        return np.nan if value is None else float(value)
    if spec.func == "count":
        return float(len(members))
    column = spec.value
    assert column is not None and spec.func is not None  # ChartSpec: an aggregate but count needs value
    values = np.array([m[column] for m in members if m[column] is not None], dtype=float)
    if values.size == 0:
        return np.nan
    return float(_REDUCE[spec.func](values))


_REDUCE: dict[str, Callable[[np.ndarray], Any]] = {
    "sum": np.sum, "mean": np.mean, "min": np.min, "max": np.max, "median": np.median,
}


def _ticks(axis: Any, labels: list[str]) -> None:
    """Category labels on an axis; with many, every k-th one so they stay legible."""
    step = max(1, len(labels) // 25)
    positions = list(range(0, len(labels), step))
    axis.set_ticks(positions, [labels[p] for p in positions])
    if axis.axis_name == "x" and (len(positions) > 8 or max(map(len, labels), default=0) > 10):
        for label in axis.get_ticklabels():
            label.set_rotation(45)
            label.set_horizontalalignment("right")


def warm_up() -> None:
    """Import, font cache and canvas loaded once in a new worker, not in a user's render."""
    fig = Figure(figsize=(2, 2), dpi=DPI)
    FigureCanvasAgg(fig)
    fig.add_subplot().set_title("warm")
    fig.savefig(io.BytesIO(), format="png")
