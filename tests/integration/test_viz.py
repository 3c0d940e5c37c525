"""Viz through Traefik: real renders of every kind, ETag/304 and the Redis cache, shared
renders, the cache dropped on dataset delete, and every bad input as a 4xx problem."""

import io
import json
import re
import threading
import uuid
import xml.etree.ElementTree as ET

import httpx
import pytest
from matplotlib import image as mpimg

from conftest import eventually

pytestmark = pytest.mark.integration

CHARTS = "/api/v1/viz/charts"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PROBLEM = "application/problem+json"
CITIES = ["Paris", "Berlin", "Rome", "Oslo"]
CSV = "id,city,month,day,sales,units,score\n" + "".join(
    f"{i},{CITIES[i % 4]},{i % 12 + 1},2024-{i % 12 + 1:02d}-{i % 28 + 1:02d},"
    f"{(i * 37) % 101 / 3:.2f},{i % 7},{i / 40:.3f}\n"
    for i in range(40)
)


@pytest.fixture(scope="module")
def owner(user_factory):
    return user_factory("viz")[2]


def upload(http, headers) -> str:
    resp = http.post("/api/v1/data/datasets", headers=headers, files={"file": ("sales.csv", CSV, "text/csv")})
    assert resp.status_code == 201, resp.text
    return resp.json()["id"]


@pytest.fixture(scope="module")
def dataset(http, owner):
    return upload(http, owner)


@pytest.fixture(scope="module")
def cache(platform):
    client = platform.redis.client()
    yield client
    client.close()


def post(http, headers, spec, **extra_headers) -> httpx.Response:
    return http.post(CHARTS, headers={**headers, **extra_headers}, json=spec)


def assert_problem(resp: httpx.Response, status: int, text: str = "") -> dict:
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"] == PROBLEM
    body = resp.json()
    assert body["status"] == status and text in body["detail"], body
    return body


KINDS = [
    {"kind": "bar", "x": "city", "y": "sales"},
    {"kind": "bar", "x": "city", "group_by": "month", "title": "rows per city and month"},
    {"kind": "line", "x": "day", "y": "sales", "group_by": "city"},
    {"kind": "line", "x": "month", "y": "units", "aggregate": "mean"},
    {"kind": "scatter", "x": "units", "y": "sales", "group_by": "city"},
    {"kind": "histogram", "x": "score", "bins": 8},
    {"kind": "heatmap", "x": "city", "y": "month"},
    {"kind": "heatmap", "x": "score", "y": "city", "value": "sales", "aggregate": "mean", "bins": 6},
]


def kind_id(spec: dict) -> str:
    return "-".join(str(spec[k]) for k in ("kind", "aggregate", "group_by") if k in spec)


@pytest.mark.parametrize("spec", KINDS, ids=kind_id)
def test_png_of_every_kind(http, owner, dataset, spec):
    resp = post(http, owner, {"dataset_id": dataset, **spec}, Accept="image/png")
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"] == "image/png"
    assert resp.content[:8] == PNG_SIGNATURE and len(resp.content) > 2_000
    pixels = mpimg.imread(io.BytesIO(resp.content), format="png")
    assert pixels.shape[:2] == (500, 800)  # the default size, in pixels
    assert pixels.std() > 0.01  # something was drawn


@pytest.mark.parametrize("spec", KINDS, ids=kind_id)
def test_svg_of_every_kind(http, owner, dataset, spec):
    resp = post(http, owner, {"dataset_id": dataset, **spec}, Accept="image/svg+xml")
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"] == "image/svg+xml"
    root = ET.fromstring(resp.content)
    assert root.tag == "{http://www.w3.org/2000/svg}svg"
    assert root.get("width") == "576pt" and root.get("height") == "360pt"  # 800 x 500 px at 72 pt/in


def test_default_format_and_size(http, owner, dataset):
    spec = {"dataset_id": dataset, "kind": "scatter", "x": "units", "y": "score", "width": 640, "height": 360}
    for accept in (None, "*/*", "text/html, image/*;q=0.8"):
        resp = post(http, owner, spec, **({"Accept": accept} if accept else {}))
        assert resp.status_code == 200 and resp.headers["content-type"] == "image/png"
        assert mpimg.imread(io.BytesIO(resp.content), format="png").shape[:2] == (360, 640)


def test_etag_revalidation_and_cache(http, owner, dataset):
    spec = {"dataset_id": dataset, "kind": "bar", "x": "city", "y": "sales", "title": "etag test"}
    first = post(http, owner, spec)
    assert first.status_code == 200 and first.headers["X-Cache"] == "miss"
    etag = first.headers["ETag"]
    assert re.fullmatch(r'"[0-9a-f]{64}"', etag)  # strong: no W/
    assert first.headers["Cache-Control"] == "private, max-age=0, must-revalidate"
    assert "Accept" in first.headers["Vary"]

    again = post(http, owner, spec, **{"If-None-Match": etag})
    assert again.status_code == 304 and again.content == b""
    assert again.headers["ETag"] == etag

    repeat = post(http, owner, spec)
    assert repeat.headers["X-Cache"] == "hit" and repeat.content == first.content
    assert repeat.headers["ETag"] == etag

    # The same chart spelled with its defaults is the same image.
    explicit = post(http, owner, {**spec, "aggregate": "sum", "width": 800, "dataset_id": dataset.upper()})
    assert explicit.headers["X-Cache"] == "hit" and explicit.headers["ETag"] == etag

    svg = post(http, owner, spec, Accept="image/svg+xml", **{"If-None-Match": etag})
    assert svg.status_code == 200 and svg.headers["ETag"] != etag  # another representation
    other = post(http, owner, {**spec, "title": "another title"}, **{"If-None-Match": etag})
    assert other.status_code == 200 and other.headers["X-Cache"] == "miss"


def render_count(platform, kind: str, fmt: str) -> float:
    """Renders so far, from the viz service's own /metrics (not routed through Traefik)."""
    text = httpx.get(f"{platform.config.url('viz')}/metrics").text
    pattern = rf'^datalab_viz_render_seconds_count{{format="{fmt}",kind="{kind}"}} (\S+)$'
    match = re.search(pattern, text, re.M)
    return float(match.group(1)) if match else 0.0


def test_concurrent_requests_share_one_render(http, owner, dataset, platform):
    spec = {"dataset_id": dataset, "kind": "histogram", "x": "sales", "title": f"shared {uuid.uuid4()}"}
    before = render_count(platform, "histogram", "png")
    barrier = threading.Barrier(6)
    results: list[httpx.Response] = []

    def one():
        barrier.wait()
        results.append(post(http, owner, spec))

    threads = [threading.Thread(target=one) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [r.status_code for r in results] == [200] * 6
    assert len({r.content for r in results}) == 1 and len({r.headers["ETag"] for r in results}) == 1
    assert render_count(platform, "histogram", "png") == before + 1
    metrics = httpx.get(f"{platform.config.url('viz')}/metrics").text
    assert re.search(r'^datalab_viz_cache_total{outcome="hit"} [1-9]', metrics, re.M)


def test_delete_drops_the_charts(http, owner, cache):
    ds = upload(http, owner)
    specs = [{"dataset_id": ds, "kind": "histogram", "x": "sales"}, {"dataset_id": ds, "kind": "bar", "x": "city"}]
    etags = [post(http, owner, spec).headers["ETag"] for spec in specs]
    post(http, owner, specs[0], Accept="image/svg+xml")
    index = f"dl:viz:{ds}:keys"
    image_keys = cache.smembers(index)
    assert len(image_keys) == 3 and all(cache.exists(k) for k in image_keys)

    assert http.delete(f"/api/v1/data/datasets/{ds}", headers=owner).status_code == 204
    assert eventually(lambda: not cache.exists(index, *image_keys))
    for spec, etag in zip(specs, etags, strict=True):
        assert_problem(post(http, owner, spec, **{"If-None-Match": etag}), 404)  # never a 304


@pytest.mark.parametrize(
    "spec, headers, status, text",
    [
        ({"kind": "pie", "x": "city"}, {}, 422, "not valid"),
        ({"kind": "line", "x": "month"}, {}, 422, "not valid"),  # no y
        ({"kind": "scatter", "x": "units"}, {}, 422, "not valid"),  # no y
        ({"kind": "histogram", "x": "sales", "y": "units"}, {}, 422, "not valid"),
        ({"kind": "bar", "x": "city", "colour": "red"}, {}, 422, "not valid"),
        ({"kind": "bar", "x": "nowhere", "y": "sales"}, {}, 422, "'nowhere'"),
        ({"kind": "bar", "x": "city", "y": "sales", "group_by": "region"}, {}, 422, "'region'"),
        ({"kind": "scatter", "x": "units", "y": "city"}, {}, 422, "numeric"),
        ({"kind": "line", "x": "month", "y": "day"}, {}, 422, "numeric"),
        ({"kind": "histogram", "x": "city"}, {}, 422, "numeric"),
        ({"kind": "scatter", "x": "units", "y": "sales", "group_by": "id"}, {}, 422, "at most 20"),
        ({"kind": "bar", "x": "city", "y": "sales"}, {"Accept": "application/pdf"}, 406, "image/png"),
        ({"kind": "bar", "x": "city", "y": "sales"}, {"Accept": "image/png;q=0"}, 406, "image/png"),
    ],
)
def test_bad_charts_are_4xx_problems(http, owner, dataset, spec, headers, status, text):
    body = assert_problem(post(http, owner, {"dataset_id": dataset, **spec}, **headers), status, text)
    if text.startswith("'"):
        assert body["column"] == text.strip("'")


def test_malformed_dataset_id_is_422(http, owner):
    assert_problem(post(http, owner, {"dataset_id": "../../auth/users", "kind": "bar", "x": "city"}), 422)


def test_unknown_or_foreign_dataset_is_404(http, owner, dataset, user_factory):
    _, _, stranger = user_factory("viz-stranger")
    spec = {"kind": "bar", "x": "city", "y": "sales"}
    etag = post(http, owner, {"dataset_id": dataset, **spec}).headers["ETag"]
    assert_problem(post(http, stranger, {"dataset_id": dataset, **spec}), 404)
    assert_problem(post(http, stranger, {"dataset_id": dataset, **spec}, **{"If-None-Match": etag}), 404)
    assert_problem(post(http, owner, {"dataset_id": str(uuid.uuid4()), **spec}), 404)


def test_foreign_dataset_is_audited_as_denied(http, platform, dataset, user_factory):
    name, _, stranger = user_factory("viz-auditee")
    assert_problem(post(http, stranger, {"dataset_id": dataset, "kind": "bar", "x": "city"}), 404)

    def denied() -> list[dict]:
        lines = (platform.logs / "viz.log").read_text().splitlines()
        entries = [json.loads(line) for line in lines if line.startswith("{")]
        return [e for e in entries if e.get("audit") is True and e.get("action") == "chart.render"
                and e.get("outcome") == "denied" and e.get("actor") == name]

    assert eventually(denied)
    assert denied()[0]["object"] == f"dataset:{dataset}" and denied()[0]["request_id"]


@pytest.mark.parametrize("spec", [
    {"kind": "histogram", "x": "v"},
    {"kind": "histogram", "x": "v", "group_by": "g", "bins": 4},
    {"kind": "heatmap", "x": "v", "y": "g"},
    {"kind": "heatmap", "x": "g", "y": "v", "value": "n", "aggregate": "sum"},
], ids=kind_id)
def test_float_column_with_nan_and_inf_is_charted(http, owner, spec):
    """NaN and ±inf in a float column reach viz as null (data's JSON) past the not_null filter;
    binning them was a 500. The chart leaves them out."""
    content = "v,g,n\n1.5,a,1\ninf,b,2\nNaN,a,3\n-inf,b,4\n2.5,a,5\n4.0,b,6\n"
    resp = http.post("/api/v1/data/datasets", headers=owner, files={"file": ("odd.csv", content, "text/csv")})
    assert resp.status_code == 201, resp.text
    assert {c["name"]: c["type"] for c in resp.json()["columns"]}["v"] == "float"
    chart = post(http, owner, {"dataset_id": resp.json()["id"], **spec})
    assert chart.status_code == 200, chart.text
    assert chart.content[:8] == PNG_SIGNATURE


def test_admin_sees_any_dataset(http, admin_headers, dataset):
    resp = post(http, admin_headers, {"dataset_id": dataset, "kind": "bar", "x": "city"})
    assert resp.status_code == 200 and resp.content[:8] == PNG_SIGNATURE


def test_a_token_is_required(http, dataset, platform):
    spec = {"dataset_id": dataset, "kind": "bar", "x": "city"}
    assert http.post(CHARTS, json=spec).status_code == 401  # Traefik's forwardAuth
    direct = httpx.post(f"{platform.config.url('viz')}{CHARTS}", json=spec)  # and viz itself
    assert_problem(direct, 401)


async def test_data_down_is_503(platform, owner, dataset):
    """A viz instance whose discovery finds data dead (a port nothing listens on); the rest
    is real: the platform's Redis, secrets and the caller's token."""
    from datalab.devstack.servers import free_port
    from datalab.viz.app import build_app
    from datalab.viz.settings import VizSettings

    settings = VizSettings(
        home=platform.config.home, secrets_dir=platform.secrets_dir,
        redis_url=platform.service_env("viz")["DATALAB_REDIS_URL"],
        redis_secret=platform.service_env("viz")["DATALAB_REDIS_SECRET"],
        static_services={"data": [f"http://127.0.0.1:{free_port()}"]}, render_processes=1,
    )
    app = build_app(settings)
    async with app.router.lifespan_context(app), httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://viz"
    ) as client:
        resp = await client.post(CHARTS, headers=owner, json={"dataset_id": dataset, "kind": "bar", "x": "city"})
        assert_problem(resp, 503, "data service is not answering")
        assert resp.headers["Retry-After"] == "5"
