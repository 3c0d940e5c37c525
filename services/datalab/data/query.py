"""Typed dataset queries, checked against the schema, then run lazily with polars.

Everything a client can get wrong (an unknown column, a string compared with a number, a
mean of text) is caught here, before polars runs, and becomes a 422 naming the mistake.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import polars as pl
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator

from datalab.contracts.datasets import column_kind
from datalab.core.errors import Problem

Op = Literal["eq", "ne", "lt", "le", "gt", "ge", "in", "not_in", "contains", "is_null", "not_null"]
AggFunc = Literal["count", "sum", "mean", "min", "max", "median", "std"]
MAX_LIMIT = 10_000
# The largest integer a JSON number holds exactly (binary64): above it a bound is fuzzy for
# clients (and schema checkers) that read numbers as doubles. PostgreSQL and polars take more.
MAX_OFFSET = 2**53 - 1
# Strict: types as the schema states them; a JSON true is not the integer 1 (it was taken
# as 0 or 1), nor 1 the boolean true, nor "1" a number.
STRICT = ConfigDict(extra="forbid", strict=True)


def _json_integer(value: Any) -> Any:
    """An integer as JSON Schema has it: 3 or 3.0, never true or "3"."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value  # strict int validation refuses the rest (bool included)


Integer = Annotated[int, BeforeValidator(_json_integer)]


class Filter(BaseModel):
    model_config = STRICT
    column: str
    op: Op
    value: Any = None


class Aggregate(BaseModel):
    model_config = STRICT
    column: str
    func: AggFunc
    alias: str | None = None

    @property
    def output_name(self) -> str:
        return self.alias or f"{self.column}_{self.func}"


class SortKey(BaseModel):
    model_config = STRICT
    column: str
    descending: bool = False


class Query(BaseModel):
    """Either `select` (the columns of the rows), or `group_by`/`aggregate`: not both."""

    model_config = ConfigDict(**STRICT, json_schema_extra={
        # The rule of _select_or_aggregate, in JSON Schema.
        "not": {
            "required": ["select"],
            "properties": {"select": {"type": "array"}},
            "anyOf": [
                {"required": ["group_by"], "properties": {"group_by": {"minItems": 1}}},
                {"required": ["aggregate"], "properties": {"aggregate": {"minItems": 1}}},
            ],
        },
    })
    select: list[str] | None = None
    filter: list[Filter] = Field(default_factory=list)
    group_by: list[str] = Field(default_factory=list)
    aggregate: list[Aggregate] = Field(default_factory=list)
    sort: list[SortKey] = Field(default_factory=list)
    limit: Integer = Field(100, ge=1, le=MAX_LIMIT)
    offset: Integer = Field(0, ge=0, le=MAX_OFFSET)

    @model_validator(mode="after")
    def _select_or_aggregate(self) -> Query:
        if self.select is not None and (self.group_by or self.aggregate):
            raise ValueError("use either select, or group_by/aggregate, not both")
        return self

    def cache_key(self) -> str:
        return json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))


# ---- column types as clients see them -------------------------------------------------

def describe_schema(schema: pl.Schema) -> list[dict[str, str]]:
    return [{"name": name, "type": column_kind(dtype), "dtype": str(dtype)} for name, dtype in schema.items()]


NUMERIC = {"integer", "float"}
ORDERED = NUMERIC | {"string", "date", "datetime", "boolean"}


def _invalid(detail: str, **extra: Any) -> Problem:
    return Problem(422, detail, type_="https://datalab.dev/problems/invalid-query", **extra)


def _coerce(kind: str, column: str, value: Any) -> Any:
    """A filter value as the column's type, or a 422 that says what was expected."""
    ok = False
    if kind == "integer":
        ok = isinstance(value, int) and not isinstance(value, bool)
        if isinstance(value, float) and not isinstance(value, bool):
            ok = True
    elif kind == "float":
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    elif kind == "string":
        ok = isinstance(value, str)
    elif kind == "boolean":
        ok = isinstance(value, bool)
    elif kind in ("date", "datetime") and isinstance(value, str):
        try:
            parsed = dt.datetime.fromisoformat(value)
        except ValueError:
            ok = False
        else:
            return parsed.date() if kind == "date" else parsed
    if not ok:
        raise _invalid(
            f"Filter on {column!r} needs a {kind} value, got {type(value).__name__} {value!r}.",
            column=column,
        )
    return value


def _filter_expr(f: Filter, kinds: Mapping[str, str]) -> pl.Expr:
    kind = kinds[f.column]
    col = pl.col(f.column)
    if f.op == "is_null":
        return col.is_null()
    if f.op == "not_null":
        return col.is_not_null()
    if f.op in ("in", "not_in"):
        if not isinstance(f.value, list) or not f.value:
            raise _invalid(f"Filter {f.op!r} on {f.column!r} needs a non-empty list.", column=f.column)
        values = [_coerce(kind, f.column, v) for v in f.value]
        expr = col.is_in(values)
        return expr.not_() if f.op == "not_in" else expr
    if f.op == "contains":
        if kind != "string":
            raise _invalid(f"'contains' works on text columns; {f.column!r} is {kind}.", column=f.column)
        return col.str.contains(_coerce(kind, f.column, f.value), literal=True)
    value = _coerce(kind, f.column, f.value)
    if f.op in ("lt", "le", "gt", "ge") and kind not in ORDERED:
        raise _invalid(f"{f.column!r} ({kind}) cannot be ordered.", column=f.column)
    return {
        "eq": col == value,
        "ne": col != value,
        "lt": col < value,
        "le": col <= value,
        "gt": col > value,
        "ge": col >= value,
    }[f.op]


def _agg_expr(a: Aggregate, kinds: Mapping[str, str]) -> pl.Expr:
    kind = kinds[a.column]
    col = pl.col(a.column)
    if a.func in ("sum", "mean", "median", "std") and kind not in NUMERIC | {"boolean"}:
        raise _invalid(f"{a.func} needs a numeric column; {a.column!r} is {kind}.", column=a.column)
    if a.func in ("min", "max") and kind not in ORDERED:
        raise _invalid(f"{a.func} needs an ordered column; {a.column!r} is {kind}.", column=a.column)
    expr = {
        "count": col.count(),
        "sum": col.sum(),
        "mean": col.mean(),
        "min": col.min(),
        "max": col.max(),
        "median": col.median(),
        "std": col.std(),
    }[a.func]
    return expr.alias(a.output_name)


def build(query: Query, schema: pl.Schema, source: pl.LazyFrame) -> pl.LazyFrame:
    """The lazy plan for `query`, after checking every name and type against `schema`."""
    kinds = {name: column_kind(dtype) for name, dtype in schema.items()}
    referenced = (
        [f.column for f in query.filter]
        + query.group_by
        + [a.column for a in query.aggregate]
        + (query.select or [])
    )
    unknown = sorted({c for c in referenced if c not in kinds})
    if unknown:
        unknown = unknown[:20]  # a body naming 100,000 columns is not echoed back whole
        raise _invalid(f"Unknown column(s): {', '.join(map(repr, unknown))}.", unknown=unknown, available=list(kinds))

    plan = source
    for f in query.filter:
        plan = plan.filter(_filter_expr(f, kinds))

    if query.group_by or query.aggregate:
        aggs = [_agg_expr(a, kinds) for a in query.aggregate] or [pl.len().alias("count")]
        names = query.group_by + [e.meta.output_name() for e in aggs]
        if len(set(names)) != len(names):
            raise _invalid("Output column names collide; give aggregates distinct aliases.")
        if query.group_by:
            plan = plan.group_by(query.group_by).agg(aggs)
            if not query.sort:  # group order is not stable otherwise: make pages reproducible
                plan = plan.sort(query.group_by, nulls_last=True)
        else:
            plan = plan.select(aggs)
        output = names
    else:
        output = query.select or list(kinds)
        plan = plan.select(output)

    if query.sort:
        missing = [s.column for s in query.sort if s.column not in output]
        if missing:
            raise _invalid(f"Cannot sort by {missing}: not in the result columns {output}.")
        plan = plan.sort(
            [s.column for s in query.sort],
            descending=[s.descending for s in query.sort],
            nulls_last=True,
        )
    return plan


def run(query: Query, path: Path) -> bytes:
    """Execute `query` on the Parquet file at `path`; the JSON response body, as bytes."""
    source = pl.scan_parquet(path)
    plan = build(query, source.collect_schema(), source)
    try:
        total_df, page = pl.collect_all([plan.select(pl.len()), plan.slice(query.offset, query.limit)])
    except pl.exceptions.PolarsError as exc:
        raise _invalid(f"The query could not run: {str(exc).splitlines()[0][:200]}") from None
    columns = json.dumps(describe_schema(page.schema))
    rows = page.write_json() if page.height else "[]"
    return (
        f'{{"columns":{columns},"rows":{rows},"total":{int(total_df.item())},'
        f'"limit":{query.limit},"offset":{query.offset}}}'
    ).encode()


DESCRIBE_CELLS_PER_PASS = 2_000_000  # ~16 MB of 8-byte values decoded at a time


def describe(path: Path) -> bytes:
    """Summary statistics per column. The quantiles need a column in memory, so the file is
    read a few columns at a time (as many as fit DESCRIBE_CELLS_PER_PASS, at least one),
    never whole: memory follows the row cap, not the dataset's size."""
    source = pl.scan_parquet(path)
    names = list(source.collect_schema())
    if not names:
        return b'{"statistics": []}'
    rows = int(source.select(pl.len()).collect().item())
    per_pass = max(1, DESCRIBE_CELLS_PER_PASS // max(rows, 1))
    stats: pl.DataFrame | None = None
    try:
        for start in range(0, len(names), per_pass):
            part = source.select(names[start : start + per_pass]).describe()
            stats = part if stats is None else stats.join(part, on="statistic", how="left", maintain_order="left")
    except pl.exceptions.PolarsError as exc:  # e.g. a column itself named "statistic"
        raise Problem(422, f"The dataset cannot be described: {str(exc).splitlines()[0][:200]}") from None
    assert stats is not None  # names is not empty: at least one pass ran
    return ('{"statistics":' + stats.write_json() + "}").encode()
