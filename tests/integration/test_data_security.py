"""The data service under attack: inputs built to exhaust it, break it or trick it, each
refused with a 4xx problem and nothing left behind (no row, no file, no temp file)."""

import io
import json
import socket
import uuid

import polars as pl
import pytest
from test_data import CSV, state, upload

from conftest import (
    DECODE_MEMORY,
    MAX_DATASET_BYTES,
    MAX_DATASET_CELLS,
    MAX_DATASET_ROWS,
    UPLOAD_IDLE_TIMEOUT,
    eventually,
)
from datalab.data import query as q

pytestmark = pytest.mark.integration

PROBLEM = "application/problem+json"
MAX_COLUMNS = 1_000  # DataSettings.max_dataset_columns, the default (not lowered for tests)


@pytest.fixture()
def owner(user_factory):
    return user_factory("sec")[2]


def parquet(frame: pl.DataFrame) -> bytes:
    buf = io.BytesIO()
    frame.write_parquet(buf, compression="zstd")
    return buf.getvalue()


def constant_rows(rows: int, columns: int = 1) -> pl.DataFrame:
    return pl.select([pl.repeat(7, rows, dtype=pl.Int64).alias(f"c{i}") for i in range(columns)])


def assert_refused(resp, status: int) -> dict:
    assert resp.status_code == status, resp.text[:500]
    assert resp.headers["content-type"] == PROBLEM
    return resp.json()


# ---- size caps, checked before the data is decoded ---------------------------------------


def test_parquet_bomb_is_refused_from_its_footer(http, owner, platform):
    """A few KB of Parquet that decodes to 25x the row cap: 413 before a page is decoded."""
    bomb = parquet(constant_rows(MAX_DATASET_ROWS * 25))
    assert len(bomb) < 100_000
    before = state(platform)
    body = assert_refused(upload(http, owner, bomb, "bomb.parquet", "application/vnd.apache.parquet"), 413)
    assert body["rows"] == MAX_DATASET_ROWS * 25 and body["max_rows"] == MAX_DATASET_ROWS
    assert state(platform) == before


def test_too_many_cells_is_refused(http, owner, platform):
    rows = MAX_DATASET_ROWS // 2
    columns = MAX_DATASET_CELLS // rows + 1  # within the row and column caps, not the cell cap
    before = state(platform)
    resp = upload(http, owner, parquet(constant_rows(rows, columns)), "wide.parquet", "application/octet-stream")
    body = assert_refused(resp, 413)
    assert body["cells"] == rows * columns and body["max_cells"] == MAX_DATASET_CELLS
    assert state(platform) == before


def test_csv_with_too_many_rows_is_refused(http, owner, platform):
    content = b"x\n" + b"1\n" * (MAX_DATASET_ROWS + 1)
    before = state(platform)
    body = assert_refused(upload(http, owner, content, "long.csv"), 413)
    assert body["max_rows"] == MAX_DATASET_ROWS
    assert state(platform) == before


def test_csv_with_too_many_columns_is_refused(http, owner, platform):
    header = ",".join(f"c{i}" for i in range(50_000)).encode()
    before = state(platform)
    body = assert_refused(upload(http, owner, header + b"\n" + b"1," * 49_999 + b"1\n", "wide.csv"), 413)
    assert body["columns"] == 50_000 and body["max_columns"] == MAX_COLUMNS
    assert state(platform) == before


def test_the_caps_are_inclusive(http, owner):
    header = ",".join(f"c{i}" for i in range(MAX_COLUMNS)).encode()
    resp = upload(http, owner, header + b"\n" + b"1," * (MAX_COLUMNS - 1) + b"1\n", "widest.csv")
    assert resp.status_code == 201, resp.text
    assert len(resp.json()["columns"]) == MAX_COLUMNS


def test_a_string_bomb_is_refused_and_never_held(http, owner, platform):
    """A few KB of Parquet: 100 rows repeating one 10 MB string, 1 GB decoded. Within the
    row and cell caps; its decoding hits the conversion child's memory limit (413)."""
    bomb = parquet(pl.select(pl.repeat("a" * 10 * 2**20, 100, dtype=pl.String).alias("s")))
    assert len(bomb) < 100_000
    before = state(platform)
    body = assert_refused(upload(http, owner, bomb, "strings.parquet", "application/octet-stream"), 413)
    assert body["max_decode_memory_bytes"] == DECODE_MEMORY
    assert state(platform) == before


def test_decoded_size_over_the_cap_is_refused(http, owner, platform):
    """5 rows of a 10 MB string: decodes inside the child's limit, but 50 MB is more than
    a query may hold (DATALAB_MAX_DATASET_BYTES)."""
    data = parquet(pl.select(pl.repeat("b" * 10 * 2**20, 5, dtype=pl.String).alias("s")))
    before = state(platform)
    body = assert_refused(upload(http, owner, data, "strings.parquet", "application/octet-stream"), 413)
    assert body["decoded_bytes"] == 5 * (10 * 2**20 + 16) and body["max_decoded_bytes"] == MAX_DATASET_BYTES
    assert state(platform) == before


def test_nested_parquet_columns_are_refused(http, owner, platform):
    """One row can hold a list of any length: the row and cell caps would not bound it."""
    before = state(platform)
    frame = pl.DataFrame({"id": [1], "values": [[7] * 1000]})
    assert_refused(upload(http, owner, parquet(frame), "nested.parquet", "application/octet-stream"), 422)
    assert state(platform) == before


# ---- list pages carry a summary; the single GET the schema -------------------------------


def test_list_items_carry_a_column_count_not_the_schema(http, user_factory):
    _, _, me = user_factory("lister")
    ds = upload(http, me, CSV).json()
    page = http.get("/api/v1/data/datasets", headers=me).json()
    (item,) = page["items"]
    assert item["id"] == ds["id"] and item["column_count"] == 4 and "columns" not in item
    one = http.get(f"/api/v1/data/datasets/{ds['id']}", headers=me).json()
    assert [c["name"] for c in one["columns"]] == ["city", "amount", "qty", "day"]


def test_openapi_list_model_is_the_summary(http, platform):
    import httpx

    spec = httpx.get(f"{platform.config.url('data')}/api/v1/data/openapi.json").json()
    summary = spec["components"]["schemas"]["DatasetSummary"]["properties"]
    assert "column_count" in summary and "columns" not in summary
    assert "columns" in spec["components"]["schemas"]["DatasetOut"]["properties"]


# ---- numbers and text that PostgreSQL or polars cannot take -----------------------------


def test_huge_offsets_are_422(http, owner):
    ds = upload(http, owner, CSV).json()
    resp = http.post(f"/api/v1/data/datasets/{ds['id']}/query", json={"offset": 10**30}, headers=owner)
    assert_refused(resp, 422)
    assert_refused(http.get("/api/v1/data/datasets", params={"offset": 10**30}, headers=owner), 422)
    # The largest accepted offset is a valid, empty page, not an error.
    last = http.post(f"/api/v1/data/datasets/{ds['id']}/query", json={"offset": q.MAX_OFFSET}, headers=owner)
    assert last.status_code == 200 and last.json()["rows"] == []
    listed = http.get("/api/v1/data/datasets", params={"offset": q.MAX_OFFSET}, headers=owner)
    assert listed.status_code == 200 and listed.json()["items"] == []


@pytest.mark.parametrize("name", ["nul\x00name", "bell\x07", "line\nbreak"], ids=["nul", "bell", "newline"])
def test_control_characters_in_dataset_names_are_422(http, owner, platform, name):
    before = state(platform)
    assert_refused(upload(http, owner, CSV, name=name), 422)
    assert state(platform) == before


def test_control_characters_in_column_names_are_422(http, owner, platform):
    before = state(platform)
    frame = pl.DataFrame({"ok": [1], "bad\x00column": [2]})
    assert_refused(upload(http, owner, parquet(frame), "cols.parquet", "application/octet-stream"), 422)
    assert state(platform) == before


def test_a_path_in_the_file_name_is_not_kept(http, owner, platform):
    resp = upload(http, owner, CSV, filename="../../../evil.csv")
    assert resp.status_code == 201, resp.text
    assert resp.json()["name"] == "evil.csv"
    assert not list(platform.config.home.parent.glob("evil*")) and not list(platform.config.home.rglob("evil*"))


# ---- bodies that are not what they claim -------------------------------------------------


def test_truncated_multipart_body_is_refused(http, owner, platform):
    """No closing boundary: the client did not send all of it, so it is not a dataset."""
    boundary = "trunc" + uuid.uuid4().hex
    body = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="cut.csv"\r\n'
        f"Content-Type: text/csv\r\n\r\n"
    ).encode() + CSV  # ... and no \r\n--boundary--
    before = state(platform)
    headers = {**owner, "content-type": f"multipart/form-data; boundary={boundary}"}
    assert_refused(http.post("/api/v1/data/datasets", content=body, headers=headers), 400)
    assert state(platform) == before


@pytest.mark.parametrize(
    "content",
    [
        b"\x00\x01\x02\xff\xfe\xfd" * 300,  # binary garbage: read lossily, it was one garbage column
        b"\xff\xfecity,amount\nParis,1\n",  # invalid UTF-8 in the header, no NUL
        b"city,amount\nParis\x00,1\n",  # a NUL in otherwise valid text
    ],
    ids=["binary", "invalid-utf8-header", "nul-byte"],
)
def test_binary_garbage_as_csv_is_422(http, owner, platform, content):
    before = state(platform)
    assert_refused(upload(http, owner, content, "garbage.csv"), 422)
    assert state(platform) == before


def test_a_stalled_upload_is_408_and_leaves_nothing(platform, owner):
    """A client that stops sending mid-body: refused after the idle timeout, not held."""
    boundary = "stall" + uuid.uuid4().hex
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="slow.csv"\r\n'
        f"Content-Type: text/csv\r\n\r\n"
    ).encode() + CSV
    port = platform.config.service_ports["data"]
    before = state(platform)
    with socket.create_connection(("127.0.0.1", port), timeout=UPLOAD_IDLE_TIMEOUT * 10) as sock:
        sock.sendall(
            (
                f"POST /api/v1/data/datasets HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                f"Authorization: {owner['Authorization']}\r\n"
                f"Content-Type: multipart/form-data; boundary={boundary}\r\n"
                f"Content-Length: {len(head) + 10_000}\r\n\r\n"
            ).encode()
            + head
        )
        answer = b""
        while b"\r\n\r\n" not in answer:  # then nothing more is sent
            chunk = sock.recv(65536)
            assert chunk, f"connection closed without an answer: {answer!r}"
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    assert state(platform) == before


# ---- a failed database write leaves no file behind ----------------------------------------


def test_a_refused_insert_leaves_no_file(http, owner, platform):
    """The file is finished when PostgreSQL refuses the row (a real constraint, added for
    this test): the upload fails and the finished Parquet file is removed with it."""
    constraint = "test_refuse_insert"
    platform.postgres.execute(
        f"ALTER TABLE data.datasets ADD CONSTRAINT {constraint} CHECK (name <> 'refused-by-postgres')",
        database="datalab",
    )
    try:
        before = state(platform)
        resp = upload(http, owner, CSV, name="refused-by-postgres")
        assert resp.status_code == 500 and resp.headers["content-type"] == PROBLEM
        assert state(platform) == before
    finally:
        platform.postgres.execute(f"ALTER TABLE data.datasets DROP CONSTRAINT {constraint}", database="datalab")
    assert upload(http, owner, CSV, name="accepted-again").status_code == 201


# ---- the audit trail ------------------------------------------------------------------------


def audit_lines(platform) -> list[dict]:
    path = platform.config.home / "logs" / "data.log"
    lines = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if record.get("audit") is True:
            lines.append(record)
    return lines


def test_denied_access_and_delete_are_audited(http, user_factory, platform):
    _, _, alice = user_factory("audit-owner")
    _, _, mallory = user_factory("audit-other")
    alice_id = http.get("/api/v1/auth/me", headers=alice).json()["id"]
    mallory_id = http.get("/api/v1/auth/me", headers=mallory).json()["id"]
    ds = upload(http, alice, CSV).json()["id"]

    assert http.get(f"/api/v1/data/datasets/{ds}", headers=mallory).status_code == 404  # still a 404
    assert http.delete(f"/api/v1/data/datasets/{ds}", headers=mallory).status_code == 404
    assert http.delete(f"/api/v1/data/datasets/{ds}", headers=alice).status_code == 204

    def mine():
        return [r for r in audit_lines(platform) if r.get("object") == ds]

    assert eventually(lambda: any(r["action"] == "dataset.delete" for r in mine()))
    denied = [r for r in mine() if r["outcome"] == "denied"]
    assert len(denied) == 2 and all(r["action"] == "dataset.access" and r["actor"] == mallory_id for r in denied)
    (deleted,) = [r for r in mine() if r["action"] == "dataset.delete"]
    assert deleted["outcome"] == "success" and deleted["actor"] == alice_id
