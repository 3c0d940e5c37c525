"""Viz: first render vs cached image vs ETag revalidation (304), one run, as ratios against
the first render (goal: cached >= 50x faster); then why renders run in processes: threads
vs a process pool drawing the same charts concurrently, with the event loop's lag.

Each "first render" uses a fresh title, so it misses the cache and draws for real (data's
query cache is warm after the first round, as it would be for a dashboard).
Run: `.venv/bin/python bench/viz_cache.py`.
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import os
import shutil
import statistics
import tempfile
import time
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path

import httpx

from datalab.devstack.local_stack import Platform, PlatformConfig
from datalab.viz.render import draw
from datalab.viz.spec import ChartSpec

ROUNDS = 15
POINTS = 2000
CSV = "x,y,g\n" + "".join(f"{i},{(i * 37) % 101},{'abc'[i % 3]}\n" for i in range(POINTS))
CONCURRENT = 16  # renders in flight at once, for the executor comparison
WORKERS = 2


def main() -> None:
    home = Path(tempfile.mkdtemp(prefix="datalab-bench-"))
    os.chmod(home, 0o755)
    names = ["gateway", "data", "viz"]
    platform = Platform(PlatformConfig.on_free_ports(
        home, names,         admin_password="bench-password",
    ))
    platform.start()
    try:
        with httpx.Client(base_url=platform.base_url, timeout=60) as edge:
            token = edge.post("/api/v1/auth/token", data={"username": "admin", "password": "bench-password"}).json()
            auth = {"Authorization": f"Bearer {token['access_token']}"}
            upload = {"file": ("b.csv", CSV, "text/csv")}
            ds = edge.post("/api/v1/data/datasets", headers=auth, files=upload).json()["id"]
        cache = {
            label: measure_cache(base, auth, ds, label)
            for label, base in (("viz service", platform.config.url("viz")), ("through Traefik", platform.base_url))
        }
        with httpx.Client(base_url=platform.config.url("data"), timeout=60) as data:
            meta = median_ms(lambda: data.get(f"/api/v1/data/datasets/{ds}", headers=auth))
    finally:
        platform.stop()
        shutil.rmtree(home, ignore_errors=True)
    executors = asyncio.run(measure_executors())

    print(f"viz chart (scatter, {POINTS} points in 3 groups, PNG 800x500), median of {ROUNDS}:")
    print(f"  {'':16}" + "".join(f"{label:>28}" for label in cache))
    for i, row in enumerate(("first render", "cached image", "304 revalidate")):
        cells = [f"{c[i]:8.2f} ms {'baseline' if i == 0 else f'{c[0] / c[i]:.1f}x faster':>14}" for c in cache.values()]
        print(f"  {row:16}" + "".join(f"{cell:>28}" for cell in cells))
    print(f"  (the floor of every answer: data's metadata check, asked directly, {meta:.2f} ms; goal cached >= 50x)")
    print(f"\nrender executor, {CONCURRENT} charts drawn at once, {WORKERS} workers, {os.cpu_count()} CPUs:")
    base = executors["threads"][0]
    for label, (rate, p50, p99) in executors.items():
        print(f"  {label:10} {rate:6.1f} charts/s ({rate / base:4.2f}x)"
              f"   event-loop lag p50 {p50:6.2f} ms  p99 {p99:7.2f} ms")


def median_ms(call) -> float:
    times = []
    for _ in range(ROUNDS):
        t = time.perf_counter()
        call()
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1000


def measure_cache(base: str, auth: dict, dataset_id: str, label: str) -> tuple[float, float, float]:
    first, cached, revalidated = [], [], []
    with httpx.Client(base_url=base, timeout=60) as http:
        for i in range(ROUNDS):
            spec = {"dataset_id": dataset_id, "kind": "scatter", "x": "x", "y": "y", "group_by": "g",
                    "title": f"{label} run {i}"}
            t = time.perf_counter()
            r = http.post("/api/v1/viz/charts", headers=auth, json=spec)
            first.append(time.perf_counter() - t)
            assert r.headers["X-Cache"] == "miss", r.text
            t = time.perf_counter()
            assert http.post("/api/v1/viz/charts", headers=auth, json=spec).headers["X-Cache"] == "hit"
            cached.append(time.perf_counter() - t)
            t = time.perf_counter()
            revalidate = {**auth, "If-None-Match": r.headers["ETag"]}
            assert http.post("/api/v1/viz/charts", headers=revalidate, json=spec).status_code == 304
            revalidated.append(time.perf_counter() - t)
    first_ms, cached_ms, revalidated_ms = (statistics.median(x) * 1000 for x in (first, cached, revalidated))
    return first_ms, cached_ms, revalidated_ms


async def measure_executors() -> dict[str, tuple[float, float, float]]:
    """Charts per second and the event loop's lag (how late a 1 ms sleep wakes) while
    `CONCURRENT` renders run on a thread pool vs a forkserver process pool."""
    spec = ChartSpec(dataset_id="7c9e6679-7425-40de-944b-e07fc1f90ae7", kind="scatter", x="x", y="y", group_by="g")
    types = {"x": "integer", "y": "integer", "g": "string"}
    body = json.dumps({"rows": [{"x": i, "y": (i * 37) % 101, "g": "abc"[i % 3]} for i in range(POINTS)],
                       "total": POINTS}).encode()
    results = {}
    pools: dict[str, Executor] = {
        "threads": ThreadPoolExecutor(WORKERS),
        "processes": ProcessPoolExecutor(WORKERS, mp_context=multiprocessing.get_context("forkserver")),
    }
    for label, pool in pools.items():
        with pool:
            loop = asyncio.get_running_loop()
            await asyncio.gather(*(loop.run_in_executor(pool, draw, spec, types, body, "png") for _ in range(WORKERS)))
            lags: list[float] = []
            done = asyncio.Event()

            async def ticker(done: asyncio.Event = done, lags: list[float] = lags) -> None:
                while not done.is_set():
                    t = time.perf_counter()
                    await asyncio.sleep(0.001)
                    lags.append((time.perf_counter() - t - 0.001) * 1000)

            tick = asyncio.create_task(ticker())
            t = time.perf_counter()
            renders = (loop.run_in_executor(pool, draw, spec, types, body, "png") for _ in range(CONCURRENT))
            await asyncio.gather(*renders)
            elapsed = time.perf_counter() - t
            done.set()
            await tick
            lags.sort()
            results[label] = (CONCURRENT / elapsed, statistics.median(lags), lags[int(len(lags) * 0.99)])
    return results


if __name__ == "__main__":
    main()
