"""An upload becomes a dataset file: checked against the size caps first, converted second.

The row, column and cell caps are checked on what costs nothing to learn: a Parquet
file's footer (row count and schema, no page decoded) or a CSV's header and a row count
that polars streams without building columns. Only then is the data decoded, so a 400 KB
file that claims 300 million rows, or a 1 MB header of 100,000 columns, is refused in
milliseconds.

Values can be bombs too (one 1 KB Parquet of 200 rows repeating a 10 MB string decodes to
2 GB): no footer field bounds that, so the decoding runs in a child process under a memory
limit (`convert_isolated`), and the decoded size is measured and capped before the dataset
is kept.
"""

from __future__ import annotations

import codecs
import json
import resource
import subprocess
import sys
import unicodedata
from dataclasses import asdict, dataclass
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
    bytes: int  # decoded size (8 bytes a value, a string's bytes + 16): what a query holds


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
        _check_decoded(lazy, schema, rows, limits)
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


def decoded_bytes(lazy: pl.LazyFrame, schema: pl.Schema, rows: int) -> int:
    """The dataset's size in memory, near enough: 8 bytes a value, a string's bytes + 16
    (polars' string views). Strings are measured by a streaming scan."""
    variable = [name for name, dtype in schema.items() if dtype in (pl.String, pl.Binary)]
    fixed = (len(schema) - len(variable)) * rows * 8
    if not variable:
        return fixed
    lengths = [
        (pl.col(n).str.len_bytes() if schema[n] == pl.String else pl.col(n).bin.size()).sum().alias(n)
        for n in variable
    ]
    measured = lazy.select(lengths).collect(engine="streaming").row(0)
    return fixed + sum(int(v or 0) for v in measured) + len(variable) * rows * 16


def _check_decoded(lazy: pl.LazyFrame, schema: pl.Schema, rows: int, limits: Limits) -> None:
    size = decoded_bytes(lazy, schema, rows)
    if size > limits.bytes:
        raise Problem(
            413, f"The dataset takes {size} bytes decoded; the limit is {limits.bytes}.",
            type_=_TOO_LARGE, decoded_bytes=size, max_decoded_bytes=limits.bytes,
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


# ---- the conversion in a child process, under a memory limit ------------------------------


def convert_isolated(
    received: Path, fmt: str, target: Path, limits: Limits, memory_bytes: int, timeout: float
) -> tuple[int, list[dict]]:
    """`convert` in a child process whose data segment is capped at `memory_bytes`: a file
    that decodes to more is refused (413) and the service never holds it."""
    job = {"received": str(received), "fmt": fmt, "target": str(target), "limits": asdict(limits),
           "memory_bytes": memory_bytes}
    too_large = Problem(
        413, f"The file needs more than {memory_bytes // 2**20} MiB or {timeout:g} s to decode.",
        type_=_TOO_LARGE, max_decode_memory_bytes=memory_bytes,
    )
    try:
        done = subprocess.run(
            [sys.executable, "-m", "datalab.data.ingest"], input=json.dumps(job), capture_output=True,
            text=True, timeout=timeout, check=False,
        )
    except subprocess.TimeoutExpired:
        target.unlink(missing_ok=True)
        raise too_large from None
    if done.returncode != 0:  # killed by its limit (Rust aborts, Python raises MemoryError)
        target.unlink(missing_ok=True)
        if done.returncode < 0 or done.returncode == _OUT_OF_MEMORY:
            raise too_large
        raise RuntimeError(f"dataset conversion failed ({done.returncode}): {done.stderr[-500:]}")
    answer = json.loads(done.stdout)
    if "problem" in answer:
        p = answer["problem"]
        raise Problem(p["status"], p["detail"], type_=p["type"], **p["extra"])
    return answer["rows"], answer["columns"]


_OUT_OF_MEMORY = 3


def _child() -> None:
    job = json.load(sys.stdin)
    limit = job["memory_bytes"]
    resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))  # before any data is decoded
    try:
        rows, columns = convert(Path(job["received"]), job["fmt"], Path(job["target"]), Limits(**job["limits"]))
    except Problem as p:
        json.dump({"problem": {"status": p.status, "detail": p.detail, "type": p.type, "extra": p.extra}}, sys.stdout)
    except MemoryError:
        Path(job["target"]).unlink(missing_ok=True)
        sys.exit(_OUT_OF_MEMORY)
    else:
        json.dump({"rows": rows, "columns": columns}, sys.stdout)


if __name__ == "__main__":
    _child()
