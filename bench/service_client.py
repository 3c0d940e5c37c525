"""Service-client transport: aiohttp (what core.client uses) vs httpx, 64 concurrent callers.

Both hit the same real data service `/health` in the same run; printed as a ratio.
Run: `make bench` (or `.venv/bin/python bench/service_client.py`).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
import time
from pathlib import Path

import aiohttp
import httpx

from datalab.devstack.local_stack import Platform, PlatformConfig

CONCURRENCY = 64
REQUESTS = 3000


async def drive(call) -> float:
    sem = asyncio.Semaphore(CONCURRENCY)

    async def one():
        async with sem:
            await call()

    start = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(REQUESTS)))
    return REQUESTS / (time.perf_counter() - start)


async def measure(url: str) -> dict[str, float]:
    results = {}
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=CONCURRENCY)) as session:
        async def aio():
            async with session.get(url) as r:
                await r.read()

        await drive(aio)  # warm-up
        results["aiohttp"] = await drive(aio)
    limits = httpx.Limits(max_connections=CONCURRENCY, max_keepalive_connections=CONCURRENCY)
    async with httpx.AsyncClient(limits=limits) as client:
        async def hx():
            (await client.get(url)).read()

        await drive(hx)
        results["httpx"] = await drive(hx)
    return results


def main() -> None:
    home = Path(tempfile.mkdtemp(prefix="datalab-bench-"))
    os.chmod(home, 0o755)
    names = ["gateway", "data"]
    platform = Platform(PlatformConfig.on_free_ports(
        home, names,         admin_password="bench-password",
    ))
    platform.start()
    try:
        r = asyncio.run(measure(platform.config.url("data") + "/health"))
    finally:
        platform.stop()
        shutil.rmtree(home, ignore_errors=True)
    print(f"service client, {CONCURRENCY} concurrent, {REQUESTS} GETs each:")
    print(f"  httpx   {r['httpx']:8.0f} req/s   (baseline)")
    print(f"  aiohttp {r['aiohttp']:8.0f} req/s   ratio {r['aiohttp'] / r['httpx']:.2f}x")


if __name__ == "__main__":
    main()
