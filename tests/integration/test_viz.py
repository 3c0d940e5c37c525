"""Viz through Traefik: real renders, ETag/304, cache dropped on dataset delete, bad input."""

import io
import xml.etree.ElementTree as ET

import pytest
from matplotlib import image as mpimg

from conftest import eventually

pytestmark = pytest.mark.integration

CSV = (b"city,month,sales,units,score\n"
       + b"".join(f"{c},{m},{s},{u},{sc}\n".encode() for c, m, s, u, sc in [
           ("Paris", 1, 10.5, 3, 0.1), ("Paris", 2, 12.0, 4, 0.5), ("Berlin", 1, 7.0, 2, 0.9),
           ("Berlin", 2, 9.5, 5, 0.3), ("Rome", 1, 4.0, 1, 0.7), ("Rome", 2, 6.5, 2, 0.2)]))
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
CHARTS = "/api/v1/viz/charts"


@pytest.fixture(scope="module")
def owner(user_factory):
    return user_factory("viz")[2]


@pytest.fixture(scope="module")
def dataset(http, owner):
    resp = http.post("/api/v1/data/datasets", headers=owner, files={"file": ("sales.csv", CSV, "text/csv")})
    assert resp.status_code == 201, resp.text
    return resp.json()["id"]


@pytest.mark.parametrize(
    "spec",
    [
        {"kind": "bar", "x": "city", "y": "sales", "aggregate": "sum"},
        {"kind": "bar", "x": "city", "aggregate": "count"},
        {"kind": "line", "x": "month", "y": "sales", "group_by": "city"},
        {"kind": "scatter", "x": "units", "y": "sales"},
        {"kind": "histogram", "x": "score", "bins": 5},
        {"kind": "heatmap", "x": "city", "y": "month", "value": "sales", "aggregate": "mean"},
    ],
    ids=lambda s: s["kind"] + ("-" + s.get("aggregate", "") if s.get("aggregate") else ""),
)
def test_png_of_every_kind(http, owner, dataset, spec):
    resp = http.post(CHARTS, headers={**owner, "Accept": "image/png"}, json={"dataset_id": dataset, **spec})
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"] == "image/png"
    assert resp.content[:8] == PNG_SIGNATURE and len(resp.content) > 5_000
    pixels = mpimg.imread(io.BytesIO(resp.content), format="png")
    assert pixels.shape[:2] == (500, 800)  # 8 x 5 inches at 100 dpi
    assert pixels.std() > 0.01  # not a blank canvas


def test_svg_by_accept(http, owner, dataset):
    resp = http.post(CHARTS, headers={**owner, "Accept": "image/svg+xml"},
                     json={"dataset_id": dataset, "kind": "bar", "x": "city", "y": "units", "title": "Units"})
    assert resp.status_code == 200 and resp.headers["content-type"] == "image/svg+xml"
    root = ET.fromstring(resp.content)
    assert root.tag.endswith("svg") and b"Units" in resp.content


def test_etag_revalidation_and_cache(http, owner, dataset):
    spec = {"dataset_id": dataset, "kind": "bar", "x": "city", "y": "sales", "title": "etag test"}
    first = http.post(CHARTS, headers=owner, json=spec)
    assert first.status_code == 200 and first.headers["X-Cache"] == "miss"
    etag = first.headers["ETag"]
    again = http.post(CHARTS, headers={**owner, "If-None-Match": etag}, json=spec)
    assert again.status_code == 304 and again.content == b""
    assert again.headers["ETag"] == etag
    repeat = http.post(CHARTS, headers=owner, json=spec)
    assert repeat.headers["X-Cache"] == "hit" and repeat.content == first.content
    svg = http.post(CHARTS, headers={**owner, "Accept": "image/svg+xml", "If-None-Match": etag}, json=spec)
    assert svg.status_code == 200 and svg.headers["ETag"] != etag  # another representation


def test_delete_drops_the_charts(http, owner, platform):
    import redis

    ds = http.post("/api/v1/data/datasets", headers=owner, files={"file": ("d.csv", CSV, "text/csv")}).json()["id"]
    spec = {"dataset_id": ds, "kind": "histogram", "x": "sales"}
    first = http.post(CHARTS, headers=owner, json=spec)
    assert first.status_code == 200
    r = redis.Redis(port=platform.config.redis_port, password=platform.redis.password)
    (image_key,) = r.smembers(f"dl:viz:{ds}:keys")
    assert r.exists(image_key)
    assert http.delete(f"/api/v1/data/datasets/{ds}", headers=owner).status_code == 204
    assert eventually(lambda: not r.exists(image_key) and not r.exists(f"dl:viz:{ds}:keys"))
    gone = http.post(CHARTS, headers={**owner, "If-None-Match": first.headers["ETag"]}, json=spec)
    assert gone.status_code == 404


@pytest.mark.parametrize(
    "spec, headers, status",
    [
        ({"kind": "pie", "x": "city"}, {}, 422),
        ({"kind": "line", "x": "month"}, {}, 422),  # no y
        ({"kind": "bar", "x": "nowhere", "y": "sales"}, {}, 422),
        ({"kind": "scatter", "x": "units", "y": "city"}, {}, 422),  # y not numeric
        ({"kind": "histogram", "x": "city"}, {}, 422),
        ({"kind": "bar", "x": "city", "y": "sales"}, {"Accept": "application/pdf"}, 406),
    ],
)
def test_bad_charts_are_4xx(http, owner, dataset, spec, headers, status):
    resp = http.post(CHARTS, headers={**owner, **headers}, json={"dataset_id": dataset, **spec})
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"] == "application/problem+json"


def test_unknown_or_foreign_dataset_is_404(http, owner, dataset, user_factory):
    _, _, stranger = user_factory("viz-stranger")
    spec = {"kind": "bar", "x": "city", "y": "sales"}
    assert http.post(CHARTS, headers=stranger, json={"dataset_id": dataset, **spec}).status_code == 404
    missing = http.post(CHARTS, headers=owner, json={"dataset_id": "7c9e6679-7425-40de-944b-e07fc1f90ae7", **spec})
    assert missing.status_code == 404
