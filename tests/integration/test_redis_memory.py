"""Redis's memory limit: a maxmemory, and `noeviction` so that queue data is never dropped.
When Redis is full, a cache write fails and the cache code takes it as "not cached" (the
caller still gets its answer), while a queued job, which has no TTL, stays exactly where it
was. A dedicated small Valkey (same ACL users as the platform's) is filled for real."""

import uuid

import httpx
import pytest
from redis.exceptions import OutOfMemoryError
from rq.job import JobStatus

from datalab.compute import dispatch as rqq
from datalab.core.redis_users import MAXMEMORY_POLICY
from datalab.devstack.servers import Redis, free_port

pytestmark = pytest.mark.integration

CSV = b"city,amount\nParis,10.5\nBerlin,3\nParis,4.5\n"


def test_the_platform_valkey_has_a_memory_limit_and_never_evicts(platform):
    admin = platform.redis.client()
    assert MAXMEMORY_POLICY == "noeviction"
    assert admin.config_get("maxmemory-policy") == {"maxmemory-policy": "noeviction"}
    assert int(admin.config_get("maxmemory")["maxmemory"]) == 256 * 1024 * 1024  # the embedded default
    admin.close()


@pytest.fixture()
def full_redis(platform, tmp_path):
    server = Redis(tmp_path / "redis", free_port(), platform.redis.passwords, maxmemory="4mb")
    server.start()
    try:
        yield server
    finally:
        server.stop()  # by its PID


def fill(server: Redis) -> int:
    """Write cache-like entries (with a TTL, as every cache entry has) until Redis refuses one,
    then pin the limit 512 KiB under what is used: the slack that connection buffers come
    and go in (a closed client frees ~20 KiB) would otherwise let the odd small write through.
    Under an evicting policy the loop never ends in a refusal and the lower limit evicts."""
    admin = server.client()
    try:
        for i in range(1000):  # 1000 x 64 KiB is far past 4 MB
            try:
                admin.set(f"dl:viz:img:fill-{i}", b"x" * 65536, ex=600)
            except OutOfMemoryError:
                break
        else:
            raise AssertionError("Redis never refused a write: it evicts instead of failing")
        admin.config_set("maxmemory", admin.info("memory")["used_memory"] - 512 * 1024)
        return i
    finally:
        admin.close()


async def test_full_redis_cache_writes_fail_softly_and_a_queued_job_survives(
        platform, full_redis, http, user_factory, monkeypatch):
    # A job queued before Redis fills up (RQ's job hash and queue entry have no TTL).
    compute = full_redis.client("compute")
    job = rqq.RQDispatcher().submit(compute, rqq.Submission("noop", {"value": "kept"}, owner_id="mem-test"))
    assert fill(full_redis) > 0

    # A data instance on the full Redis, as its own ACL user; the rest is the platform's.
    from datalab.data.app import DataSettings, build_app

    for key, value in platform.service_env("data").items():
        if key.startswith("DATALAB_"):
            monkeypatch.setenv(key, value)
    monkeypatch.setenv("DATALAB_REDIS_URL", f"redis://127.0.0.1:{full_redis.port}/0")
    _, _, owner = user_factory("mem")
    ds = http.post("/api/v1/data/datasets", headers=owner, files={"file": ("m.csv", CSV, "text/csv")}).json()
    app = build_app(DataSettings())
    body = {"group_by": ["city"], "aggregate": [{"column": "amount", "func": "sum"}]}
    async with app.router.lifespan_context(app), httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://data"
    ) as client:
        for _ in range(2):  # not cached (the write failed), so a miss again: never an error
            resp = await client.post(f"/api/v1/data/datasets/{ds['id']}/query", headers=owner, json=body)
            assert resp.status_code == 200, resp.text
            assert resp.headers["X-Cache"] == "miss"
            assert resp.json()["rows"] == [{"city": "Berlin", "amount_sum": 3.0}, {"city": "Paris", "amount_sum": 15.0}]

    # Nothing was evicted to make room: the queued job is intact and still queued.
    kept = rqq.fetch(compute, job.id)
    assert kept is not None and kept.get_status() == JobStatus.QUEUED
    assert kept.kwargs["params"] == {"value": "kept"}
    assert job.id.encode() in compute.lrange("rq:queue:default", 0, -1)
    # A new enqueue is refused (the API answers 503), not half-written into the queue.
    with pytest.raises(OutOfMemoryError):
        rqq.RQDispatcher().submit(compute, rqq.Submission("noop", {}, owner_id=f"mem-{uuid.uuid4().hex[:4]}"))
    assert compute.llen("rq:queue:default") == 1
    compute.close()
