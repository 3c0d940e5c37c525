"""Chart specs: what each kind accepts, normalization and the cache key, column checks, and
the queries viz sends, run by the data service's real query engine on a real frame."""

import json

import polars as pl
import pytest
from pydantic import ValidationError

from datalab.data import query as q
from datalab.viz.spec import VALUE, ChartError, ChartSpec, build_query, cache_key, check_columns

DS = "7c9e6679-7425-40de-944b-e07fc1f90ae7"
TYPES = {"city": "string", "month": "integer", "sales": "float", "units": "integer", "day": "date", "tags": "other"}


def spec(**fields) -> ChartSpec:
    return ChartSpec(dataset_id=DS, **fields)


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"kind": "pie", "x": "city"}, "kind"),
        ({"kind": "line", "x": "month"}, "needs y"),
        ({"kind": "scatter", "x": "units"}, "needs y"),
        ({"kind": "heatmap", "x": "city"}, "needs y"),
        ({"kind": "bar", "x": "city", "aggregate": "mean"}, "needs y"),
        ({"kind": "heatmap", "x": "city", "y": "month", "aggregate": "sum"}, "needs value"),
        ({"kind": "histogram", "x": "sales", "y": "units"}, "takes no y"),
        ({"kind": "scatter", "x": "units", "y": "sales", "aggregate": "sum"}, "takes no aggregate"),
        ({"kind": "bar", "x": "city", "bins": 5}, "takes no bins"),
        ({"kind": "bar", "x": "city", "y": "sales", "group_by": "city"}, "different columns"),
        ({"kind": "bar", "x": "city", "colour": "red"}, "Extra inputs"),
        ({"kind": "bar", "x": "city", "width": 10}, "greater than or equal"),
        ({"kind": "histogram", "x": "sales", "bins": 0}, "greater than or equal"),
    ],
)
def test_spec_refuses_what_the_kind_cannot_draw(fields, message):
    with pytest.raises(ValidationError, match=message):
        spec(**fields)


def test_malformed_dataset_id_is_refused():
    with pytest.raises(ValidationError):
        ChartSpec(dataset_id="../../auth/users", kind="bar", x="city")


def test_defaults_resolve_before_hashing():
    implicit = spec(kind="bar", x="city", y="sales")
    explicit = spec(kind="bar", x="city", y="sales", aggregate="sum", width=800, height=500)
    assert implicit.normalized() == explicit.normalized()
    assert implicit.normalized()["aggregate"] == "sum"
    assert spec(kind="bar", x="city").func == "count"
    assert spec(kind="line", x="month", y="sales").func is None  # raw points
    assert spec(kind="heatmap", x="city", y="month").func == "count"
    assert spec(kind="histogram", x="sales").normalized()["bins"] == 20
    assert spec(kind="histogram", x="sales", bins=20).normalized() == spec(kind="histogram", x="sales").normalized()
    upper = ChartSpec(dataset_id=DS.upper(), kind="bar", x="city")
    assert upper.normalized() == spec(kind="bar", x="city").normalized()


def test_cache_key_changes_with_everything_the_image_depends_on():
    base = spec(kind="bar", x="city", y="sales")
    key = cache_key(base, "png", "2024-01-01T00:00:00Z", "r1")
    assert len(key) == 64 and key == cache_key(spec(kind="bar", x="city", y="sales", aggregate="sum"),
                                                "png", "2024-01-01T00:00:00Z", "r1")
    others = {
        cache_key(base, "svg", "2024-01-01T00:00:00Z", "r1"),
        cache_key(base, "png", "2024-01-02T00:00:00Z", "r1"),
        cache_key(base, "png", "2024-01-01T00:00:00Z", "r2"),
        cache_key(spec(kind="bar", x="city", y="sales", aggregate="mean"), "png", "2024-01-01T00:00:00Z", "r1"),
        cache_key(spec(kind="bar", x="city", y="sales", title="t"), "png", "2024-01-01T00:00:00Z", "r1"),
        cache_key(ChartSpec(dataset_id="00000000-0000-4000-8000-000000000000", kind="bar", x="city", y="sales"),
                  "png", "2024-01-01T00:00:00Z", "r1"),
    }
    assert key not in others and len(others) == 6


@pytest.mark.parametrize(
    "fields, column",
    [
        ({"kind": "bar", "x": "nowhere", "y": "sales"}, "nowhere"),
        ({"kind": "bar", "x": "city", "y": "sales", "group_by": "missing"}, "missing"),
        ({"kind": "scatter", "x": "units", "y": "city"}, "city"),
        ({"kind": "line", "x": "day", "y": "city"}, "city"),
        ({"kind": "histogram", "x": "city"}, "city"),
        ({"kind": "bar", "x": "city", "y": "day", "aggregate": "max"}, "day"),
        ({"kind": "heatmap", "x": "city", "y": "month", "value": "city2", "aggregate": "mean"}, "city2"),
        ({"kind": "bar", "x": "tags"}, "tags"),
    ],
)
def test_columns_are_checked_against_the_dataset(fields, column):
    types = {**TYPES, "city2": "string"}
    with pytest.raises(ChartError) as err:
        check_columns(spec(**fields), types)
    assert err.value.column == column and repr(column) in err.value.detail


def test_counts_need_no_numeric_column():
    check_columns(spec(kind="bar", x="city"), TYPES)
    check_columns(spec(kind="bar", x="city", y="day", aggregate="count"), TYPES)
    check_columns(spec(kind="heatmap", x="city", y="day"), TYPES)


def test_chart_error_survives_pickling():
    import pickle

    err = pickle.loads(pickle.dumps(ChartError("too many", "city")))
    assert (err.detail, err.column) == ("too many", "city")


# ---- the queries, run by data's own engine --------------------------------------------

@pytest.fixture()
def parquet(tmp_path):
    frame = pl.DataFrame({
        "city": ["Paris", "Berlin", "Paris", "Rome", None, "Rome"],
        "month": [1, 1, 2, 2, 2, 1],
        "sales": [10.0, 3.0, 4.0, 7.0, 1.0, None],
        "units": [1, 2, 3, 4, 5, 6],
    })
    path = tmp_path / "d.parquet"
    frame.write_parquet(path)
    return path


def run(path, chart: ChartSpec) -> list[dict]:
    body = build_query(chart, {k: v for k, v in TYPES.items() if k in ("city", "month", "sales", "units")})
    return json.loads(q.run(q.Query.model_validate(body), path))["rows"]


def test_bar_is_grouped_by_data(parquet):
    rows = run(parquet, spec(kind="bar", x="city", y="sales"))
    assert rows == [{"city": "Berlin", VALUE: 3.0}, {"city": "Paris", VALUE: 14.0}, {"city": "Rome", VALUE: 7.0}]
    counts = run(parquet, spec(kind="bar", x="city", group_by="month"))
    assert {"city": "Rome", "month": 1, VALUE: 1} in counts and len(counts) == 5  # no null city


def test_line_without_aggregate_is_raw_points_in_x_order(parquet):
    rows = run(parquet, spec(kind="line", x="units", y="sales"))
    assert [r["units"] for r in rows] == [1, 2, 3, 4, 5]  # the null sales row is left out
    counts = run(parquet, spec(kind="line", x="month", aggregate="count"))
    assert counts == [{"month": 1, VALUE: 3}, {"month": 2, VALUE: 3}]


def test_scatter_and_histogram_select_columns(parquet):
    assert run(parquet, spec(kind="scatter", x="units", y="sales", group_by="city"))[0] == {
        "units": 1, "sales": 10.0, "city": "Paris"}
    assert len(run(parquet, spec(kind="histogram", x="sales"))) == 5
    body = build_query(spec(kind="histogram", x="sales"), TYPES)
    assert body["select"] == ["sales"] and body["limit"] == 10_000


def test_heatmap_groups_in_data_unless_an_axis_is_float(parquet):
    cells = run(parquet, spec(kind="heatmap", x="city", y="month", value="sales", aggregate="mean"))
    assert {"city": "Paris", "month": 2, VALUE: 4.0} in cells and len(cells) == 5
    binned = spec(kind="heatmap", x="sales", y="city", value="units", aggregate="max")
    body = build_query(binned, TYPES)
    assert "group_by" not in body and body["select"] == ["sales", "city", "units"]
    assert len(run(parquet, binned)) == 4  # rows with both axes present
