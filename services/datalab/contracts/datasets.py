"""The data service's dataset schemas, as it answers them and as other services read them."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

import polars as pl
from pydantic import BaseModel

ColumnKind = Literal["integer", "float", "boolean", "string", "date", "datetime", "other"]


def column_kind(dtype: pl.DataType) -> ColumnKind:
    """The platform's name for a polars dtype: what queries, charts and training check."""
    if dtype.is_integer():
        return "integer"
    if dtype.is_float() or dtype.is_decimal():
        return "float"
    if dtype == pl.Boolean:
        return "boolean"
    if dtype in (pl.String, pl.Categorical, pl.Enum) or isinstance(dtype, (pl.Categorical, pl.Enum)):
        return "string"
    if dtype == pl.Date:
        return "date"
    if isinstance(dtype, pl.Datetime):
        return "datetime"
    return "other"


class ColumnOut(BaseModel):
    name: str
    type: ColumnKind
    dtype: str


class DatasetOut(BaseModel):
    id: str
    name: str
    source_format: str
    rows: int
    columns: list[ColumnOut]
    size_bytes: int
    created_at: datetime

    def kinds(self) -> dict[str, ColumnKind]:
        return {c.name: c.type for c in self.columns}


class DatasetSummary(BaseModel):
    """A dataset in a list page: its column count, not its schema (GET one for that)."""

    id: str
    name: str
    source_format: str
    rows: int
    column_count: int
    size_bytes: int
    created_at: datetime


class DatasetPage(BaseModel):
    items: list[DatasetSummary]
    total: int
    limit: int
    offset: int
