"""Chart specs, the data query each one needs, and rendering with matplotlib.

Rendering uses matplotlib's object API (a `Figure` per call, Agg canvas), never pyplot's
global state, so renders can run concurrently in threads.
"""

from __future__ import annotations

import hashlib
import io
import json
from typing import Any, Literal

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from pydantic import BaseModel, ConfigDict, Field, model_validator

from datalab.core.errors import Problem

Kind = Literal["bar", "line", "scatter", "histogram", "heatmap"]
Aggregate = Literal["count", "sum", "mean", "min", "max", "median"]
FORMATS = {"png": "image/png", "svg": "image/svg+xml"}
MAX_POINTS = 10_000


class ChartSpec(BaseModel):
    """bar/line: y aggregated per x (default sum; `count` needs no y).
    scatter: raw (x, y) points. histogram: distribution of numeric x in `bins`.
    heatmap: count of rows per (x, y) pair, or `aggregate` of `value` per pair."""

    model_config = ConfigDict(extra="forbid")
    dataset_id: str
    kind: Kind
    x: str
    y: str | None = None
    value: str | None = None  # heatmap: the column to aggregate per cell
    group_by: str | None = None  # bar/line/scatter: one series per value
    aggregate: Aggregate | None = None
    title: str | None = Field(None, max_length=200)
    bins: int = Field(20, ge=1, le=200)
    width: float = Field(8.0, ge=2, le=30)
    height: float = Field(5.0, ge=2, le=30)

    @model_validator(mode="after")
    def _shape(self) -> ChartSpec:
        if self.kind in ("line", "scatter", "heatmap") and not self.y:
            raise ValueError(f"a {self.kind} chart needs y")
        if self.kind == "bar" and not self.y and self.aggregate not in (None, "count"):
            raise ValueError("a bar chart needs y unless aggregate is count")
        if self.kind == "heatmap" and self.aggregate not in (None, "count") and not self.value:
            raise ValueError("a heatmap with an aggregate other than count needs value")
        return self

    def cache_key(self, fmt: str, dataset_version: str) -> str:
        canonical = json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(f"{canonical}|{fmt}|{dataset_version}".encode()).hexdigest()


NUMERIC = {"integer", "float"}


def check_columns(spec: ChartSpec, columns: dict[str, str]) -> None:
    """Every named column exists, and has a type the chart can use: 422 otherwise."""
    named = {"x": spec.x, "y": spec.y, "value": spec.value, "group_by": spec.group_by}
    for role, name in named.items():
        if name is not None and name not in columns:
            raise Problem(422, f"Unknown column {name!r} (as {role}).", column=name, available=sorted(columns))
    needs_numeric = []
    if spec.kind == "histogram":
        needs_numeric.append(spec.x)
    if spec.kind in ("line", "scatter") or (spec.kind == "bar" and spec.y and spec.aggregate != "count"):
        needs_numeric.append(spec.y)
    if spec.kind == "scatter":
        needs_numeric.append(spec.x)
    if spec.kind == "heatmap" and spec.value and spec.aggregate not in (None, "count"):
        needs_numeric.append(spec.value)
    for name in needs_numeric:
        if name and columns[name] not in NUMERIC:
            raise Problem(422, f"Column {name!r} is {columns[name]}; a {spec.kind} chart needs it numeric.", column=name)


def data_query(spec: ChartSpec) -> dict[str, Any]:
    """The body for the data service's query endpoint that yields this chart's data."""
    if spec.kind in ("bar", "line"):
        func = spec.aggregate or ("sum" if spec.y else "count")
        keys = [spec.x] + ([spec.group_by] if spec.group_by else [])
        column = spec.y or spec.x
        return {"group_by": keys, "aggregate": [{"column": column, "func": func, "alias": "_y"}],
                "sort": [{"column": k} for k in keys], "limit": MAX_POINTS}
    if spec.kind == "heatmap":
        func = spec.aggregate or "count"
        column = spec.value or spec.x
        return {"group_by": [spec.x, spec.y], "aggregate": [{"column": column, "func": func, "alias": "_v"}],
                "limit": MAX_POINTS}
    columns = [spec.x] + ([spec.y] if spec.kind == "scatter" else []) + ([spec.group_by] if spec.group_by else [])
    return {"select": list(dict.fromkeys(columns)),
            "filter": [{"column": c, "op": "not_null"} for c in dict.fromkeys(columns)], "limit": MAX_POINTS}


def render(spec: ChartSpec, rows: list[dict], fmt: str) -> bytes:
    fig = Figure(figsize=(spec.width, spec.height), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    if spec.kind in ("bar", "line", "scatter"):
        _series_chart(ax, spec, rows)
    elif spec.kind == "histogram":
        ax.hist([r[spec.x] for r in rows], bins=spec.bins, color="#4C72B0", edgecolor="white")
        ax.set_xlabel(spec.x)
        ax.set_ylabel("count")
    else:
        _heatmap(fig, ax, spec, rows)
    ax.set_title(spec.title or _default_title(spec))
    fig.tight_layout()
    out = io.BytesIO()
    fig.savefig(out, format=fmt, metadata={"Software": None} if fmt == "png" else {"Date": None})
    return out.getvalue()


def _series_chart(ax, spec: ChartSpec, rows: list[dict]) -> None:
    ykey = "_y" if spec.kind in ("bar", "line") else spec.y
    series: dict[Any, list[dict]] = {}
    for r in rows:
        series.setdefault(r.get(spec.group_by) if spec.group_by else None, []).append(r)
    categories = list(dict.fromkeys(str(r[spec.x]) for r in rows))
    width = 0.8 / max(1, len(series))
    for i, (name, points) in enumerate(series.items()):
        label = None if name is None and not spec.group_by else str(name)
        if spec.kind == "bar":
            pos = {c: j for j, c in enumerate(categories)}
            xs = [pos[str(p[spec.x])] + i * width - 0.4 + width / 2 for p in points]
            ax.bar(xs, [p[ykey] or 0 for p in points], width=width, label=label)
        elif spec.kind == "line":
            ax.plot([p[spec.x] for p in points], [p[ykey] for p in points], marker="o", label=label)
        else:
            ax.scatter([p[spec.x] for p in points], [p[ykey] for p in points], s=12, alpha=0.7, label=label)
    if spec.kind == "bar":
        ax.set_xticks(range(len(categories)), categories, rotation=30 if len(categories) > 8 else 0)
    ax.set_xlabel(spec.x)
    ax.set_ylabel(f"{spec.aggregate or ('sum' if spec.y else 'count')}({spec.y or spec.x})"
                  if spec.kind in ("bar", "line") else spec.y)
    if spec.group_by:
        ax.legend(title=spec.group_by)


def _heatmap(fig, ax, spec: ChartSpec, rows: list[dict]) -> None:
    xs = sorted({str(r[spec.x]) for r in rows})
    ys = sorted({str(r[spec.y]) for r in rows})
    grid = np.full((len(ys), len(xs)), np.nan)
    for r in rows:
        grid[ys.index(str(r[spec.y])), xs.index(str(r[spec.x]))] = r["_v"] if r["_v"] is not None else np.nan
    image = ax.imshow(grid, aspect="auto", cmap="viridis")
    ax.set_xticks(range(len(xs)), xs, rotation=45 if len(xs) > 6 else 0)
    ax.set_yticks(range(len(ys)), ys)
    ax.set_xlabel(spec.x)
    ax.set_ylabel(spec.y)
    fig.colorbar(image, ax=ax, label=f"{spec.aggregate or 'count'}({spec.value or ''})".replace("()", ""))


def _default_title(spec: ChartSpec) -> str:
    if spec.kind == "histogram":
        return f"Distribution of {spec.x}"
    if spec.kind == "heatmap":
        return f"{spec.y} by {spec.x}"
    return f"{spec.y or 'count'} by {spec.x}"
