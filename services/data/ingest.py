"""An upload becomes a dataset file: checked against the size caps first, converted second.

Every cap is checked on what costs nothing to learn: a Parquet file's footer (row count
and schema, no page decoded) or a CSV's header and a row count that polars streams
without building columns. Only then is the data decoded, so a 400 KB file that claims
300 million rows, or a 1 MB header of 100,000 columns, is refused in milliseconds.
"""

from __future__ import annotations

import codecs
import unicodedata
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from datalab.core.errors import Problem

from . import query as q

MAX_NAME_CHARS = 255  # dataset and column names (the metadata column is VARCHAR(255))
_TOO_LARGE = "https://datalab.dev/problems/dataset-too-large"


@dataclass(frozen=True)
class Limits:
    rows: int
    columns: int
    cells: int  # rows x columns: what decoding, describe and queries cost


def check_name(value: str, what: str) -> str:
    """A name stored in PostgreSQL and shown to people: printable text, bounded.
    (PostgreSQL refuses NUL in text; other control characters are garbage or a trick.)"""
    if any(unicodedata.category(ch) == "Cc" for ch in value):
        raise Problem(422, f"The {what} contains control characters (e.g. NUL): {value[:80]!r}.")
    if len(value) > MAX_NAME_CHARS:
        raise Problem(422, f"The {what} is longer than {MAX_NAME_CHARS} characters.")
    return value


def convert(received: Path, fmt: str, target: Path, limits: Limits) -> tuple[int, list[dict]]:
    """Check the upload, then write it as Parquet to `target`; (rows, columns).
    Leaves no `target` behind when it refuses."""
    try:
        if fmt == "csv":
            _check_text(received)
            header = pl.scan_csv(received, infer_schema=False)  # every column a string: no inference
            columns = len(header.collect_schema())
            _check_size(columns, None, limits)  # before counting rows 100,000 columns wide
            _check_size(columns, int(header.select(pl.len()).collect().item()), limits)
            source = pl.scan_csv(received, infer_schema_length=10_000, try_parse_dates=True)
        else:
            source = pl.scan_parquet(received)
            schema = source.collect_schema()
            _check_size(len(schema), int(source.select(pl.len()).collect().item()), limits)  # footer only
            _check_flat(schema)
        source.sink_parquet(target)
        lazy = pl.scan_parquet(target)
        schema = lazy.collect_schema()
        rows = int(lazy.select(pl.len()).collect().item())
    except Problem:
        target.unlink(missing_ok=True)
        raise
    except (pl.exceptions.PolarsError, OSError, ValueError) as exc:
        target.unlink(missing_ok=True)
        first_line = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
        raise Problem(422, f"The {fmt.upper()} file could not be read: {first_line}") from None
    try:
        if not schema:
            raise Problem(422, f"The {fmt.upper()} file has no columns.")
        if len(set(schema)) != len(schema):
            raise Problem(422, "Column names must be unique.")
        for name in schema:
            check_name(name, "column name")
    except Problem:
        target.unlink(missing_ok=True)
        raise
    return rows, q.describe_schema(schema)


def _check_size(columns: int, rows: int | None, limits: Limits) -> None:
    if columns > limits.columns:
        raise Problem(
            413, f"The dataset has {columns} columns; the limit is {limits.columns}.",
            type_=_TOO_LARGE, columns=columns, max_columns=limits.columns,
        )
    if rows is None:
        return
    if rows > limits.rows:
        raise Problem(
            413, f"The dataset has {rows} rows; the limit is {limits.rows}.",
            type_=_TOO_LARGE, rows=rows, max_rows=limits.rows,
        )
    if rows * columns > limits.cells:
        raise Problem(
            413, f"The dataset has {rows} x {columns} = {rows * columns} cells; the limit is {limits.cells}.",
            type_=_TOO_LARGE, cells=rows * columns, max_cells=limits.cells,
        )


def _check_flat(schema: pl.Schema) -> None:
    """Nested columns (lists, structs) hold any number of values per row: the row and cell
    caps would not bound them, and queries do not address them."""
    nested = [name for name, dtype in schema.items() if dtype.is_nested() or dtype == pl.Object]
    if nested:
        raise Problem(422, f"Nested columns (lists, structs) are not supported: {nested[:10]}.", columns=nested[:10])


def _check_text(path: Path, chunk: int = 1 << 20) -> None:
    """A CSV is UTF-8 text: binary garbage (NUL bytes, invalid UTF-8) is refused, not read
    lossily into a garbage column name."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    offset = 0
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            if b"\x00" in block:
                raise Problem(422, f"The CSV file is not text: a NUL byte at offset {offset + block.index(0)}.")
            try:
                decoder.decode(block)
            except UnicodeDecodeError as exc:
                raise Problem(422, f"The CSV file is not UTF-8 text (at offset {offset + exc.start}).") from None
            offset += len(block)
    try:
        decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        raise Problem(422, "The CSV file is not UTF-8 text (it ends inside a character).") from None
