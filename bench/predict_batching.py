"""Predict throughput with micro-batching vs without, 64 concurrent clients, 1 row each.

One platform (gateway, data, ai) plus a second ai process on the same database and models
volume with DATALAB_BATCH_MAX_SIZE=1 (batching off). Both serve the same random forest
(300 trees: a 1-row predict costs about what a 64-row one does). Printed as a ratio.
Run: `.venv/bin/python bench/predict_batching.py`.
"""

from __future__ import annotations

import asyncio
import io
import os
import re
import shutil
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import aiohttp
import numpy as np
import polars as pl

from datalab.devstack.local_stack import Platform, PlatformConfig
from datalab.devstack.servers import Process, free_port, wait_until

CONCURRENCY = 64
TREES = 300
REQUESTS = {"unbatched": 640, "batched": 3200}  # sized for a few seconds each


async def drive(url: str, headers: dict, n: int) -> float:
    async with aiohttp.ClientSession(headers=headers, connector=aiohttp.TCPConnector(limit=CONCURRENCY)) as s:
        sem = asyncio.Semaphore(CONCURRENCY)
        rng = np.random.default_rng(0)

        async def one(x: float):
            async with sem, s.post(url, json={"rows": [{"x": x, "z": 0.0}]}) as r:
                assert r.status == 200, await r.text()
                await r.read()

        xs = rng.uniform(0, 10, n).tolist()
        await asyncio.gather(*(one(x) for x in xs[: CONCURRENCY * 2]))  # warm-up: model load, pools
        start = time.perf_counter()
        await asyncio.gather(*(one(x) for x in xs))
        return n / (time.perf_counter() - start)


def mean_batch(base: str) -> float:
    text = urllib.request.urlopen(f"{base}/metrics", timeout=5).read().decode()
    total = float(re.search(r"^datalab_ai_predict_batch_rows_sum (\S+)$", text, re.M).group(1))
    count = float(re.search(r"^datalab_ai_predict_batch_rows_count (\S+)$", text, re.M).group(1))
    return total / count


def setup(platform: Platform) -> tuple[dict, str]:
    """Log in, upload a dataset, train the forest (synchronously) on the batched instance."""
    import httpx

    with httpx.Client(base_url=platform.base_url, timeout=120) as http:
        token = http.post("/api/v1/auth/token", data={"username": "admin", "password": "bench-password"})
        headers = {"Authorization": f"Bearer {token.json()['access_token']}"}
        rng = np.random.default_rng(1)
        x = rng.uniform(0, 10, 2000)
        buf = io.BytesIO()
        pl.DataFrame({"x": x, "z": rng.normal(size=2000), "y": 3 * x + rng.normal(0, 0.5, 2000)}).write_csv(buf)
        ds = http.post("/api/v1/data/datasets", headers=headers, files={"file": ("b.csv", buf.getvalue(), "text/csv")})
        body = {"dataset_id": ds.json()["id"], "target": "y", "features": ["x", "z"], "kind": "random_forest",
                "params": {"n_estimators": TREES}}
        model = http.post("/api/v1/ai/models", headers=headers, json=body)
        assert model.status_code == 201, model.text
        return headers, model.json()["id"]


def main() -> None:
    home = Path(tempfile.mkdtemp(prefix="datalab-bench-"))
    os.chmod(home, 0o755)
    names = ["gateway", "data", "ai"]
    platform = Platform(PlatformConfig.on_free_ports(
        home, names,         admin_password="bench-password",
    ))
    unbatched: Process | None = None
    try:
        platform.start()
        port = free_port()
        env = platform.service_env("ai") | {"DATALAB_PORT": str(port), "DATALAB_BATCH_MAX_SIZE": "1"}
        unbatched = Process("ai-unbatched", [sys.executable, "-m", "datalab.cli", "serve", "ai"],
                            platform.logs / "ai-unbatched.log", env=env)
        unbatched.start()
        wait_until(lambda: _ok(f"http://127.0.0.1:{port}/ready"), 60, unbatched, "ready")
        headers, model_id = setup(platform)
        bases = {"unbatched": f"http://127.0.0.1:{port}", "batched": platform.config.url("ai")}
        path = f"/api/v1/ai/models/{model_id}/predict"
        rates = {mode: asyncio.run(drive(bases[mode] + path, headers, REQUESTS[mode])) for mode in bases}
        batches = {mode: mean_batch(base) for mode, base in bases.items()}
    finally:
        if unbatched is not None:
            unbatched.stop()
        platform.stop()
        shutil.rmtree(home, ignore_errors=True)
    print(f"predict, random forest of {TREES} trees, {CONCURRENCY} concurrent clients, 1 row per request:")
    print(f"  unbatched (DATALAB_BATCH_MAX_SIZE=1) {rates['unbatched']:8.0f} req/s   "
          f"mean rows/call {batches['unbatched']:5.1f}   (baseline)")
    print(f"  micro-batched (256 rows, 2 ms)       {rates['batched']:8.0f} req/s   "
          f"mean rows/call {batches['batched']:5.1f}   ratio {rates['batched'] / rates['unbatched']:.2f}x")


def _ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return resp.status == 200
    except OSError:
        return False


if __name__ == "__main__":
    main()
