"""Data service through Traefik: uploads, queries, cache, and every bad input as a 4xx."""

import io
import time
import uuid

import jwt
import polars as pl
import pytest

from conftest import MAX_UPLOAD

pytestmark = pytest.mark.integration

CSV = b"city,amount,qty,day\nParis,10.5,1,2024-01-01\nBerlin,3,2,2024-01-02\nParis,4.5,3,2024-01-03\n"


def upload(http, headers, content: bytes, filename="sales.csv", ctype="text/csv", **fields):
    return http.post("/api/v1/data/datasets", headers=headers, files={"file": (filename, content, ctype)}, data=fields)


def state(platform):
    """Dataset rows in PostgreSQL and files on the volume, to prove nothing half-written."""
    rows = platform.postgres.execute("SELECT count(*) AS n FROM data.datasets", database="datalab")[0]["n"]
    datasets = platform.config.home / "datasets"
    files = sorted(p.name for p in datasets.rglob("*") if p.is_file())
    return rows, files


@pytest.fixture()
def owner(user_factory):
    return user_factory("data")[2]


def test_csv_upload_infers_types(http, owner):
    resp = upload(http, owner, CSV, name="Sales 2024")
    assert resp.status_code == 201, resp.text
    body = resp.json()
    assert body["rows"] == 3 and body["name"] == "Sales 2024" and body["source_format"] == "csv"
    types = {c["name"]: c["type"] for c in body["columns"]}
    assert types == {"city": "string", "amount": "float", "qty": "integer", "day": "date"}
    assert http.get(f"/api/v1/data/datasets/{body['id']}", headers=owner).json()["rows"] == 3


def test_parquet_upload_and_describe(http, owner):
    buf = io.BytesIO()
    pl.DataFrame({"x": [1, 2, 3, 4], "y": [2.0, 4.0, 6.0, 8.0]}).write_parquet(buf)
    resp = upload(http, owner, buf.getvalue(), "xy.parquet", "application/octet-stream")
    assert resp.status_code == 201, resp.text
    stats = http.get(f"/api/v1/data/datasets/{resp.json()['id']}/describe", headers=owner).json()["statistics"]
    mean = next(s for s in stats if s["statistic"] == "mean")
    assert mean["x"] == 2.5 and mean["y"] == 5.0


def test_query_is_cached_until_delete(http, owner, platform):
    ds = upload(http, owner, CSV).json()
    body = {"group_by": ["city"], "aggregate": [{"column": "amount", "func": "sum"}]}
    url = f"/api/v1/data/datasets/{ds['id']}/query"
    first = http.post(url, json=body, headers=owner)
    assert first.status_code == 200 and first.headers["X-Cache"] == "miss"
    assert first.json()["rows"] == [{"city": "Berlin", "amount_sum": 3.0}, {"city": "Paris", "amount_sum": 15.0}]
    second = http.post(url, json=body, headers=owner)
    assert second.headers["X-Cache"] == "hit" and second.json() == first.json()


    r = platform.redis.client()
    assert r.keys(f"dl:q:{ds['id']}:*")
    assert http.delete(f"/api/v1/data/datasets/{ds['id']}", headers=owner).status_code == 204
    assert r.keys(f"dl:q:{ds['id']}:*") == []
    assert http.post(url, json=body, headers=owner).status_code == 404


def test_list_is_paginated_and_private(http, user_factory):
    _, _, alice = user_factory("alice")
    _, _, bob = user_factory("bob")
    ids = [upload(http, alice, CSV).json()["id"] for _ in range(3)]
    page = http.get("/api/v1/data/datasets", params={"limit": 2, "offset": 0}, headers=alice).json()
    assert page["total"] == 3 and len(page["items"]) == 2
    rest = http.get("/api/v1/data/datasets", params={"limit": 2, "offset": 2}, headers=alice).json()
    assert {i["id"] for i in page["items"] + rest["items"]} == set(ids)
    assert http.get("/api/v1/data/datasets", headers=bob).json()["total"] == 0
    assert http.get(f"/api/v1/data/datasets/{ids[0]}", headers=bob).status_code == 404
    assert http.delete(f"/api/v1/data/datasets/{ids[0]}", headers=bob).status_code == 404


@pytest.mark.parametrize(
    "content, filename, ctype, status",
    [
        (b"a,b\n1,2\n3,4,5,6\n", "bad.csv", "text/csv", 422),  # ragged rows
        (b"", "empty.csv", "text/csv", 422),
        (b"\x89PNG\r\n\x1a\n" + bytes(200), "pic.png", "image/png", 415),
        (b"PAR1 not really parquet", "fake.parquet", "application/vnd.apache.parquet", 422),
        (b"x" * (MAX_UPLOAD + 10), "big.csv", "text/csv", 413),
    ],
    ids=["malformed-csv", "empty", "wrong-type", "corrupt-parquet", "oversized"],
)
def test_bad_uploads_are_4xx_and_leave_nothing(http, owner, platform, content, filename, ctype, status):
    before = state(platform)
    resp = upload(http, owner, content, filename, ctype)
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"] == "application/problem+json"
    assert state(platform) == before


def test_not_multipart_is_415(http, owner, platform):
    before = state(platform)
    resp = http.post("/api/v1/data/datasets", content=CSV, headers={**owner, "content-type": "text/csv"})
    assert resp.status_code == 415
    assert state(platform) == before


def test_multipart_without_file_part_is_400(http, owner):
    resp = http.post("/api/v1/data/datasets", headers=owner, files={"other": ("x.csv", CSV, "text/csv")})
    assert resp.status_code == 400


@pytest.mark.parametrize(
    "body, status",
    [
        ({"select": ["ghost"]}, 422),
        ({"filter": [{"column": "amount", "op": "gt", "value": "ten"}]}, 422),
        ({"filter": [{"column": "day", "op": "gt", "value": "not-a-date"}]}, 422),
        ({"aggregate": [{"column": "city", "func": "sum"}]}, 422),
        ({"limit": 0}, 422),
        ({"filter": "city = Paris"}, 422),
    ],
)
def test_bad_queries_are_422(http, owner, body, status):
    ds = upload(http, owner, CSV).json()
    resp = http.post(f"/api/v1/data/datasets/{ds['id']}/query", json=body, headers=owner)
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"] == "application/problem+json"


def test_date_filter_works(http, owner):
    ds = upload(http, owner, CSV).json()
    body = {"filter": [{"column": "day", "op": "ge", "value": "2024-01-02"}], "select": ["city"]}
    resp = http.post(f"/api/v1/data/datasets/{ds['id']}/query", json=body, headers=owner)
    assert resp.json()["rows"] == [{"city": "Berlin"}, {"city": "Paris"}]


def test_unknown_dataset_is_404(http, owner):
    assert http.get(f"/api/v1/data/datasets/{uuid.uuid4()}", headers=owner).status_code == 404
    assert http.get("/api/v1/data/datasets/not-a-uuid", headers=owner).status_code == 404
    resp = http.post(f"/api/v1/data/datasets/{uuid.uuid4()}/query", json={}, headers=owner)
    assert resp.status_code == 404 and resp.headers["content-type"] == "application/problem+json"


def test_data_service_verifies_tokens_itself(platform, owner):
    """Defence in depth: straight to the data service (no Traefik), a bad token is 401."""
    import httpx

    data = platform.config.url("data")
    assert httpx.get(f"{data}/api/v1/data/datasets").status_code == 401
    now = int(time.time())
    claims = {"sub": "x", "typ": "access", "iat": now, "exp": now + 60}
    forged = jwt.encode(claims, "a-guessed-shared-secret-of-32-bytes!", algorithm="HS256")
    assert httpx.get(f"{data}/api/v1/data/datasets", headers={"Authorization": f"Bearer {forged}"}).status_code == 401
    assert httpx.get(f"{data}/api/v1/data/datasets", headers=owner).status_code == 200


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer not.a.jwt"}, {"Authorization": "Basic YWRtaW46YWRtaW4="}],
    ids=["missing", "garbage", "wrong-scheme"],
)
def test_bad_credentials_are_401_at_the_edge(http, headers):
    resp = http.get("/api/v1/data/datasets", headers=headers)
    assert resp.status_code == 401
    assert resp.headers["content-type"] == "application/problem+json"


def test_expired_token_is_401(http, platform):
    from datalab.core.auth import Principal, TokenIssuer
    from datalab.core.secret_files import SecretStore

    issuer = TokenIssuer(SecretStore(platform.secrets_dir), "datalab-gateway", "datalab")
    token, _ = issuer.mint(Principal("u", "u", False), "access", -1)
    resp = http.get("/api/v1/data/datasets", headers={"Authorization": f"Bearer {token}"})
    assert resp.status_code == 401 and "expired" in resp.json()["detail"]


def test_content_is_the_dataset_as_parquet(http, owner, user_factory):
    ds = upload(http, owner, CSV).json()
    resp = http.get(f"/api/v1/data/datasets/{ds['id']}/content", headers=owner)
    assert resp.status_code == 200 and resp.headers["content-type"] == "application/vnd.apache.parquet"
    frame = pl.read_parquet(io.BytesIO(resp.content))
    assert frame.shape == (3, 4) and frame["amount"].sum() == 18.0
    _, _, stranger = user_factory("stranger")
    assert http.get(f"/api/v1/data/datasets/{ds['id']}/content", headers=stranger).status_code == 404


def test_delete_publishes_an_event(http, owner, platform):

    from datalab.core import events

    r = platform.redis.client()
    sub = r.pubsub()
    sub.subscribe(events.DATASET_DELETED)
    sub.get_message(timeout=2)  # the subscribe confirmation
    ds = upload(http, owner, CSV).json()
    assert http.delete(f"/api/v1/data/datasets/{ds['id']}", headers=owner).status_code == 204
    message = sub.get_message(timeout=5)
    assert message and message["data"].decode() == ds["id"]
    sub.close()
