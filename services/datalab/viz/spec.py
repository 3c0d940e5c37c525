"""Chart specs: what each kind takes, the normalized form its cache key hashes, the check
against the dataset's columns, and the data-service query that yields its data.

Pure functions (no I/O, no matplotlib), so the rules are unit-tested on their own.

What each kind draws (fields a kind does not list are refused with a 422, never ignored):

- bar: one bar per value of `x`, height `aggregate(y)` (default `sum`; `count` needs no
  y); `group_by` draws grouped bars. Data does the group-by.
- line: `y` against `x` in x order, one line per `group_by` value. Without `aggregate`
  the raw points (first 10,000 rows); with it, `aggregate(y)` per x (`count` needs no y).
- scatter: raw (x, y) points (first 10,000 rows), coloured by `group_by`.
- histogram: distribution of numeric `x` in `bins` equal-width bins (default 20), one
  overlaid histogram per `group_by` value; first 10,000 rows. Takes no y.
- heatmap: a grid over two axes, `x` and `y`. A float axis is cut into `bins` equal-width
  bins; any other axis (integer, text, date, boolean) has one cell per value. Each cell is
  the number of rows (default, `aggregate` = count) or `aggregate` of the numeric `value`
  column; empty cells are blank. When neither axis is float, data groups by (x, y)
  over the whole dataset; otherwise viz bins the first 10,000 rows itself (the query
  language has no binning).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any, Literal
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field, model_validator

Kind = Literal["bar", "line", "scatter", "histogram", "heatmap"]
Aggregate = Literal["count", "sum", "mean", "min", "max", "median"]
Format = Literal["png", "svg"]

MAX_ROWS = 10_000  # the data service's largest page
DEFAULT_BINS = 20
VALUE = "__value__"  # alias of the aggregated column in data's answer
NUMERIC = frozenset({"integer", "float"})
PLOTTABLE = NUMERIC | {"string", "boolean", "date", "datetime"}

# Which optional fields each kind takes (x and dataset_id always; width, height, title too).
TAKES: dict[str, frozenset[str]] = {
    "bar": frozenset({"y", "aggregate", "group_by"}),
    "line": frozenset({"y", "aggregate", "group_by"}),
    "scatter": frozenset({"y", "group_by"}),
    "histogram": frozenset({"bins", "group_by"}),
    "heatmap": frozenset({"y", "value", "aggregate", "bins"}),
}


class ChartError(ValueError):
    """The chart cannot be drawn as asked (a column missing or of the wrong type, too many
    categories): the app answers 422 naming the column. Plain and picklable, since render
    workers raise it in another process."""

    def __init__(self, detail: str, column: str | None = None):
        super().__init__(detail, column)
        self.detail = detail
        self.column = column


class ChartSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    dataset_id: UUID
    kind: Kind
    x: str = Field(min_length=1)
    y: str | None = Field(None, min_length=1)
    value: str | None = Field(None, min_length=1)
    group_by: str | None = Field(None, min_length=1)
    aggregate: Aggregate | None = None
    title: str | None = Field(None, max_length=200)
    bins: int | None = Field(None, ge=1, le=200)
    width: int = Field(800, ge=200, le=4000, description="pixels")
    height: int = Field(500, ge=150, le=4000, description="pixels")

    @model_validator(mode="after")
    def _fields_fit_the_kind(self) -> ChartSpec:
        for name in ("y", "value", "group_by", "aggregate", "bins"):
            if getattr(self, name) is not None and name not in TAKES[self.kind]:
                raise ValueError(f"a {self.kind} chart takes no {name}")
        needs_y = self.kind in ("scatter", "heatmap") or (
            self.kind == "line" and self.aggregate != "count"
        )
        if needs_y and self.y is None:
            raise ValueError(f"a {self.kind} chart needs y")
        if self.kind in ("bar", "line") and self.aggregate not in (None, "count") and self.y is None:
            raise ValueError(f"aggregate {self.aggregate} needs y")
        if self.kind == "heatmap" and self.aggregate not in (None, "count") and self.value is None:
            raise ValueError(f"a heatmap with aggregate {self.aggregate} needs value")
        named = [c for c in (self.x, self.y, self.value, self.group_by) if c is not None]
        if len(set(named)) != len(named):
            raise ValueError("x, y, value and group_by must name different columns")
        return self

    @property
    def func(self) -> Aggregate | None:
        """The aggregate actually applied (None: raw points)."""
        if self.kind == "bar":
            return self.aggregate or ("sum" if self.y else "count")
        if self.kind == "heatmap":
            return self.aggregate or "count"
        return self.aggregate if self.kind == "line" else None

    @property
    def nbins(self) -> int:
        return self.bins or DEFAULT_BINS

    def normalized(self) -> dict[str, Any]:
        """The spec with defaults resolved, so equal charts hash equal: `{"kind": "bar",
        "x": "a", "y": "b"}` and the same with `"aggregate": "sum"` are one chart."""
        out = self.model_dump(mode="json", exclude={"aggregate", "bins"})
        out["aggregate"] = self.func
        out["bins"] = self.nbins if "bins" in TAKES[self.kind] else None
        return out


def cache_key(spec: ChartSpec, fmt: Format, dataset_version: str, renderer: str) -> str:
    """Hex sha256 of everything the image bytes depend on: the normalized spec (dataset id
    included), the format, the dataset's version (its created_at: datasets are immutable)
    and the renderer (code and matplotlib version, so an upgrade never serves a stale 304)."""
    material = {
        "spec": spec.normalized(),
        "format": fmt,
        "version": dataset_version,
        "renderer": renderer,
    }
    canonical = json.dumps(material, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(canonical.encode()).hexdigest()


def check_columns(spec: ChartSpec, types: Mapping[str, str]) -> None:
    """Every named column exists and has a type the chart can draw; a 422 naming it if not."""
    roles = {"x": spec.x, "y": spec.y, "value": spec.value, "group_by": spec.group_by}
    for role, name in roles.items():
        if name is None:
            continue
        if name not in types:
            raise ChartError(f"The dataset has no column {name!r} (given as {role}).", name)
        if types[name] not in PLOTTABLE:
            raise ChartError(f"Column {name!r} ({role}) is {types[name]}: it cannot be charted.", name)
    numeric = []
    if spec.kind in ("line", "scatter") or (spec.kind == "bar" and spec.func != "count"):
        numeric.append(("y", spec.y))
    if spec.kind == "histogram":
        numeric.append(("x", spec.x))
    if spec.kind == "heatmap" and spec.func != "count":
        numeric.append(("value", spec.value))
    for role, name in numeric:
        if name is not None and types[name] not in NUMERIC:
            raise ChartError(f"Column {name!r} ({role}) is {types[name]}; a {spec.kind} chart needs it numeric.", name)


def binned_axes(spec: ChartSpec, types: Mapping[str, str]) -> bool:
    """Whether a heatmap has a float axis, so viz (not data) does the binning."""
    return spec.kind == "heatmap" and "float" in (types[spec.x], types[spec.y or spec.x])


def build_query(spec: ChartSpec, types: Mapping[str, str]) -> dict[str, Any]:
    """The body for data's `POST /datasets/{id}/query` that yields this chart's data.
    Rows with a null axis or group are left out: they have no place on the chart."""
    keys = [c for c in (spec.x, spec.y if spec.kind == "heatmap" else None, spec.group_by) if c]
    not_null: list[dict[str, Any]] = [{"column": c, "op": "not_null"} for c in keys]
    if spec.func is not None and not binned_axes(spec, types):
        # Data groups and aggregates; count counts an axis column, which is never null here.
        column = spec.value if spec.kind == "heatmap" else spec.y
        return {
            "filter": not_null,
            "group_by": keys,
            "aggregate": [{"column": column or spec.x, "func": spec.func, "alias": VALUE}],
            "sort": [{"column": c} for c in keys],
            "limit": MAX_ROWS,
        }
    select = [c for c in (spec.x, spec.y, spec.value, spec.group_by) if c]
    if spec.kind in ("line", "scatter"):  # the value is plotted: a null one is no point
        not_null.append({"column": spec.y, "op": "not_null"})
    query: dict[str, Any] = {"select": select, "filter": not_null, "limit": MAX_ROWS}
    if spec.kind == "line":
        query["sort"] = [{"column": spec.x}]
    return query
