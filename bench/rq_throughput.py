"""Compute jobs/s: submitted through our API (Traefik → forwardAuth → compute → RQ) and run
by our worker, vs the same no-op enqueued with raw RQ to the same worker. One run, one
platform, printed as a ratio (goal ≥ 0.8).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
import time
from pathlib import Path

import httpx
import redis
from rq.registry import FinishedJobRegistry
from rq.serializers import JSONSerializer

from datalab.compute.dispatch import queue
from datalab.compute.tasks import execute
from datalab.devstack.local_stack import Platform, PlatformConfig

JOBS = 300
CONCURRENCY = 16


def wait_finished(conn: redis.Redis, target: int, timeout: float = 300) -> None:
    registry = FinishedJobRegistry("default", connection=conn, serializer=JSONSerializer)
    deadline = time.monotonic() + timeout
    while registry.count < target:
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {registry.count}/{target} jobs finished")
        time.sleep(0.02)


def raw_rq(conn: redis.Redis, done_before: int) -> float:
    q = queue(conn, "default")
    start = time.perf_counter()
    for _ in range(JOBS):
        q.enqueue(execute, kwargs={"job_type": "noop", "params": {"value": None}}, result_ttl=3600)
    wait_finished(conn, done_before + JOBS)
    return JOBS / (time.perf_counter() - start)


async def through_api(base: str, token: str) -> None:
    sem = asyncio.Semaphore(CONCURRENCY)
    async with httpx.AsyncClient(base_url=base, headers={"Authorization": f"Bearer {token}"}) as client:
        async def one():
            async with sem:
                r = await client.post("/api/v1/compute/jobs", json={"type": "noop"})
                r.raise_for_status()

        await asyncio.gather(*(one() for _ in range(JOBS)))


def main() -> None:
    home = Path(tempfile.mkdtemp(prefix="datalab-bench-"))
    os.chmod(home, 0o755)
    names = ["gateway", "data", "compute"]
    platform = Platform(PlatformConfig.on_free_ports(
        home, names, admin_password="bench-password",
        extra_env={"DATALAB_RATE_LIMIT_USER_PER_MINUTE": "0", "DATALAB_RATE_LIMIT_IP_PER_MINUTE": "0"},
    ))
    platform.start()
    try:
        conn = platform.redis.client("compute")
        registry = FinishedJobRegistry("default", connection=conn, serializer=JSONSerializer)
        token = httpx.post(f"{platform.base_url}/api/v1/auth/token",
                           data={"username": "admin", "password": "bench-password"}).json()["access_token"]
        raw_rq(conn, registry.count)  # warm-up
        raw = raw_rq(conn, registry.count)
        before = registry.count
        start = time.perf_counter()
        asyncio.run(through_api(platform.base_url, token))
        wait_finished(conn, before + JOBS)
        api = JOBS / (time.perf_counter() - start)
    finally:
        platform.stop()
        shutil.rmtree(home, ignore_errors=True)
    print(f"compute, {JOBS} no-op jobs, 1 worker, submitted by {CONCURRENCY} clients:")
    print(f"  raw RQ enqueue + worker         {raw:7.1f} jobs/s   (baseline)")
    print(f"  our API (Traefik) + worker      {api:7.1f} jobs/s   ratio {api / raw:.2f}  (goal >= 0.8)")


if __name__ == "__main__":
    main()
