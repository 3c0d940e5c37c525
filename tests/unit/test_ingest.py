"""Upload checks before decoding: the caps read from a Parquet footer or a CSV header and
row count, UTF-8 text, printable names. Each refusal leaves no target file."""

import polars as pl
import pytest

from datalab.core.errors import Problem
from datalab.data.ingest import Limits, check_name, convert, convert_isolated

LIMITS = Limits(rows=1_000, columns=10, cells=5_000, bytes=10**9)


def refused(path, fmt, tmp_path, limits=LIMITS) -> Problem:
    target = tmp_path / "out.parquet"
    with pytest.raises(Problem) as err:
        convert(path, fmt, target, limits)
    assert not target.exists()
    return err.value


def test_parquet_rows_over_the_cap_are_refused_from_the_footer(tmp_path):
    path = tmp_path / "bomb.parquet"
    pl.select(pl.repeat(7, 50_000_000, dtype=pl.Int64).alias("x")).write_parquet(path)
    problem = refused(path, "parquet", tmp_path)
    assert problem.status == 413 and problem.extra == {"rows": 50_000_000, "max_rows": 1_000}


def test_cells_and_columns_caps(tmp_path):
    cells = tmp_path / "cells.parquet"
    pl.DataFrame({f"c{i}": [1] * 600 for i in range(9)}).write_parquet(cells)  # 5,400 cells
    assert refused(cells, "parquet", tmp_path).extra["cells"] == 5_400
    wide = tmp_path / "wide.csv"
    wide.write_text(",".join(f"c{i}" for i in range(11)) + "\n" + ",".join("1" * 11) + "\n")
    assert refused(wide, "csv", tmp_path).extra == {"columns": 11, "max_columns": 10}


def test_csv_rows_over_the_cap(tmp_path):
    path = tmp_path / "long.csv"
    path.write_text("x\n" + "1\n" * 1_001)
    assert refused(path, "csv", tmp_path).extra == {"rows": 1_001, "max_rows": 1_000}


def test_at_the_caps_it_converts(tmp_path):
    path = tmp_path / "ok.csv"
    path.write_text(",".join(f"c{i}" for i in range(5)) + "\n" + "1,2,3,4,5\n" * 1_000)
    rows, columns = convert(path, "csv", tmp_path / "out.parquet", LIMITS)
    assert rows == 1_000 and [c["name"] for c in columns] == ["c0", "c1", "c2", "c3", "c4"]


@pytest.mark.parametrize(
    "content",
    [b"a,b\n1,\x002\n", b"\xff\xfea,b\n1,2\n", b"a,b\n1,\xe2\x82\n"],
    ids=["nul", "invalid-start", "cut-character"],
)
def test_csv_must_be_utf8_text(tmp_path, content):
    path = tmp_path / "bin.csv"
    path.write_bytes(content)
    assert refused(path, "csv", tmp_path).status == 422


def test_nested_parquet_is_refused(tmp_path):
    path = tmp_path / "nested.parquet"
    pl.DataFrame({"x": [[1, 2, 3]]}).write_parquet(path)
    assert refused(path, "parquet", tmp_path).status == 422


@pytest.mark.parametrize("name", ["a\x00b", "tab\there", "x" * 256])
def test_names_must_be_printable_and_bounded(name):
    with pytest.raises(Problem):
        check_name(name, "name")


def test_ordinary_names_pass():
    assert check_name("Ventes 2024 – été (v2).csv", "name") == "Ventes 2024 – été (v2).csv"


def string_bomb(path, rows=100, value_bytes=10 * 2**20):
    """A few KB of Parquet: `rows` rows of one repeated `value_bytes` string (1 GB decoded)."""
    pl.select(pl.repeat("a" * value_bytes, rows, dtype=pl.String).alias("s")).write_parquet(path, compression="zstd")


def test_decoded_size_over_the_cap_is_refused(tmp_path):
    path = tmp_path / "strings.parquet"
    string_bomb(path, rows=20, value_bytes=2**20)  # 20 MB decoded, within rows and cells
    problem = refused(path, "parquet", tmp_path, Limits(rows=1_000, columns=10, cells=5_000, bytes=10 * 2**20))
    assert problem.status == 413 and problem.extra["decoded_bytes"] == 20 * 2**20 + 20 * 16


def test_a_string_bomb_is_refused_by_the_childs_memory_limit(tmp_path):
    path = tmp_path / "bomb.parquet"
    string_bomb(path)
    assert path.stat().st_size < 100_000
    target = tmp_path / "out.parquet"
    with pytest.raises(Problem) as err:
        convert_isolated(path, "parquet", target, LIMITS, memory_bytes=256 * 2**20, timeout=120)
    assert err.value.status == 413 and not target.exists()


def test_the_child_converts_and_reports_refusals(tmp_path):
    ok = tmp_path / "ok.csv"
    ok.write_text("a,b\n1,x\n2,y\n")
    rows, columns = convert_isolated(ok, "csv", tmp_path / "ok.parquet", LIMITS, 2**30, 120)
    assert rows == 2 and [c["type"] for c in columns] == ["integer", "string"]
    bad = tmp_path / "bad.csv"
    bad.write_bytes(b"a\n\x00\n")
    with pytest.raises(Problem) as err:
        convert_isolated(bad, "csv", tmp_path / "bad.parquet", LIMITS, 2**30, 120)
    assert err.value.status == 422 and "NUL" in err.value.detail
