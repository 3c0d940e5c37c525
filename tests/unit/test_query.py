"""The query language: results on a real polars frame, and every kind of mistake caught."""

import json

import polars as pl
import pytest

from datalab.core.errors import Problem
from datalab.data import query as q


@pytest.fixture()
def parquet(tmp_path):
    frame = pl.DataFrame(
        {
            "city": ["Paris", "Berlin", "Paris", "Rome", None],
            "amount": [10.5, 3.0, 4.5, 7.0, 1.0],
            "qty": [1, 2, 3, 4, 5],
            "ok": [True, False, True, True, False],
        }
    )
    path = tmp_path / "d.parquet"
    frame.write_parquet(path)
    return path


def run(path, **body):
    return json.loads(q.run(q.Query(**body), path))


def test_group_by_aggregates_sorted_by_key(parquet):
    out = run(parquet, filter=[{"column": "city", "op": "not_null"}], group_by=["city"],
              aggregate=[{"column": "amount", "func": "sum"}, {"column": "qty", "func": "max", "alias": "top"}])
    assert out["rows"] == [
        {"city": "Berlin", "amount_sum": 3.0, "top": 2},
        {"city": "Paris", "amount_sum": 15.0, "top": 3},
        {"city": "Rome", "amount_sum": 7.0, "top": 4},
    ]
    assert out["total"] == 3
    assert [c["name"] for c in out["columns"]] == ["city", "amount_sum", "top"]


def test_filters_select_sort_and_pagination(parquet):
    out = run(parquet, select=["city", "qty"], filter=[{"column": "amount", "op": "ge", "value": 4}],
              sort=[{"column": "qty", "descending": True}], limit=2, offset=1)
    assert out["total"] == 3  # Paris 10.5, Paris 4.5, Rome 7.0
    assert out["rows"] == [{"city": "Paris", "qty": 3}, {"city": "Paris", "qty": 1}]


def test_in_contains_and_global_aggregate(parquet):
    out = run(parquet, filter=[{"column": "city", "op": "in", "value": ["Paris", "Rome"]},
                               {"column": "city", "op": "contains", "value": "ar"}],
              aggregate=[{"column": "amount", "func": "mean"}, {"column": "amount", "func": "median", "alias": "med"},
                         {"column": "amount", "func": "std", "alias": "sd"},
                         {"column": "city", "func": "count", "alias": "n"}])
    row = out["rows"][0]
    assert row["amount_mean"] == pytest.approx(7.5) and row["med"] == pytest.approx(7.5)
    assert row["sd"] == pytest.approx(4.2426, rel=1e-3) and row["n"] == 2


def test_group_by_without_aggregate_counts(parquet):
    out = run(parquet, group_by=["ok"])
    assert out["rows"] == [{"ok": False, "count": 2}, {"ok": True, "count": 3}]


@pytest.mark.parametrize(
    "body, needle",
    [
        ({"select": ["nope"]}, "Unknown column"),
        ({"filter": [{"column": "ghost", "op": "eq", "value": 1}]}, "Unknown column"),
        ({"filter": [{"column": "amount", "op": "gt", "value": "ten"}]}, "needs a float value"),
        ({"filter": [{"column": "qty", "op": "eq", "value": True}]}, "needs a integer value"),
        ({"filter": [{"column": "city", "op": "eq", "value": 3}]}, "needs a string value"),
        ({"filter": [{"column": "qty", "op": "in", "value": []}]}, "non-empty list"),
        ({"filter": [{"column": "qty", "op": "contains", "value": "1"}]}, "text columns"),
        ({"aggregate": [{"column": "city", "func": "mean"}]}, "numeric column"),
        ({"group_by": ["city"], "sort": [{"column": "amount"}]}, "Cannot sort"),
        ({"aggregate": [{"column": "qty", "func": "sum", "alias": "x"},
                        {"column": "amount", "func": "sum", "alias": "x"}]}, "collide"),
    ],
)
def test_mistakes_are_422_with_a_reason(parquet, body, needle):
    with pytest.raises(Problem) as err:
        q.run(q.Query(**body), parquet)
    assert err.value.status == 422
    assert needle in err.value.detail


@pytest.mark.parametrize(
    "body",
    [
        {"select": ["city"], "group_by": ["city"]},
        {"limit": 0},
        {"limit": q.MAX_LIMIT + 1},
        {"offset": -1},
        {"offset": 10**30},  # polars and PostgreSQL take 64 bits: it was an OverflowError, a 500
        {"offset": 2**63},
        {"offset": q.MAX_OFFSET + 1},  # past what a JSON number holds exactly
        {"offset": False},  # a bool is no integer (it was taken as 0)
        {"limit": True},
        {"sort": [{"column": "a", "descending": 1}]},  # nor an integer a bool
        {"filter": [{"column": "a", "op": "like", "value": 1}]},
        {"unexpected": 1},
    ],
)
def test_malformed_bodies_fail_validation(body):
    with pytest.raises(ValueError):
        q.Query(**body)


def test_integers_are_json_schema_integers():
    # 3.0 is an integer to JSON Schema (and to clients that only have doubles); true is not.
    assert (q.Query(limit=3.0, offset=2.0).limit, q.Query(limit=3.0, offset=2.0).offset) == (3, 2)
    for bad in ({"limit": 2.5}, {"offset": True}, {"limit": "3"}):
        with pytest.raises(ValueError):
            q.Query(**bad)


def test_cache_key_is_canonical():
    a = q.Query(filter=[{"column": "a", "op": "eq", "value": 1}], limit=5)
    b = q.Query(limit=5, filter=[{"op": "eq", "column": "a", "value": 1}])
    assert a.cache_key() == b.cache_key()
    assert a.cache_key() != q.Query(limit=6).cache_key()


def test_the_largest_offset_is_an_empty_page(parquet):
    out = run(parquet, offset=q.MAX_OFFSET)
    assert out["rows"] == [] and out["total"] == 5


def test_describe_a_few_columns_at_a_time_matches_polars(parquet, monkeypatch):
    """describe reads the file in passes of columns (memory follows the row cap, not the
    dataset); the result is the one polars gives for the whole frame."""
    monkeypatch.setattr(q, "DESCRIBE_CELLS_PER_PASS", 10)  # 5 rows: two columns a pass
    expected = json.loads(pl.read_parquet(parquet).describe().write_json())
    assert json.loads(q.describe(parquet))["statistics"] == expected


def test_describe_a_column_named_statistic_is_422(tmp_path):
    path = tmp_path / "s.parquet"
    pl.DataFrame({"statistic": [1, 2], "y": [3, 4]}).write_parquet(path)
    with pytest.raises(Problem) as err:
        q.describe(path)
    assert err.value.status == 422


def test_unknown_columns_are_not_echoed_without_bound(parquet):
    with pytest.raises(Problem) as err:
        q.run(q.Query(select=[f"ghost{i}" for i in range(10_000)]), parquet)
    assert len(err.value.extra["unknown"]) == 20 and len(err.value.detail) < 1_000
