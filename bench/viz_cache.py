"""Chart latency: first render vs cached image vs ETag revalidation (304), one run,
printed as ratios against the first render (goal: cached >= 50x faster).

Each "first render" uses a fresh title, so it misses the cache and renders for real.
"""

from __future__ import annotations

import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import httpx

from datalab.devstack.platform import Platform, PlatformConfig
from datalab.devstack.servers import free_port

ROUNDS = 15
CSV = "x,y,g\n" + "".join(f"{i},{(i * 37) % 101},{'abc'[i % 3]}\n" for i in range(2000))


def main() -> None:
    home = Path(tempfile.mkdtemp(prefix="datalab-bench-"))
    os.chmod(home, 0o755)
    names = ["gateway", "data", "viz"]
    platform = Platform(PlatformConfig(
        home=home, http_port=free_port(), traefik_ping_port=free_port(), postgres_port=free_port(),
        redis_port=free_port(), service_ports={n: free_port() for n in names}, services=names,
        admin_password="bench-password",
    ))
    platform.start()
    try:
        with httpx.Client(base_url=platform.base_url, timeout=60) as edge:
            token = edge.post("/api/v1/auth/token", data={"username": "admin", "password": "bench-password"}).json()
            auth = {"Authorization": f"Bearer {token['access_token']}"}
            ds = edge.post("/api/v1/data/datasets", headers=auth, files={"file": ("b.csv", CSV, "text/csv")}).json()
        results = {}
        for label, base in (("viz service", platform.config.url("viz")), ("through Traefik", platform.base_url)):
            with httpx.Client(base_url=base, timeout=60) as http:
                results[label] = measure(http, auth, ds["id"], label)
    finally:
        platform.stop()
        shutil.rmtree(home, ignore_errors=True)
    print(f"viz chart (scatter, 2000 points, PNG), median of {ROUNDS}:")
    for label, (f, c, v) in results.items():
        print(f"  {label}:")
        print(f"    first render    {f:8.2f} ms   (baseline)")
        print(f"    cached image    {c:8.2f} ms   {f / c:6.1f}x faster  (goal >= 50x)")
        print(f"    304 revalidate  {v:8.2f} ms   {f / v:6.1f}x faster")


def measure(http: httpx.Client, auth: dict, dataset_id: str, label: str) -> tuple[float, float, float]:
    first, cached, revalidated = [], [], []
    for i in range(ROUNDS):
        spec = {"dataset_id": dataset_id, "kind": "scatter", "x": "x", "y": "y", "group_by": "g",
                "title": f"{label} run {i}"}
        t = time.perf_counter()
        r = http.post("/api/v1/viz/charts", headers=auth, json=spec)
        first.append(time.perf_counter() - t)
        assert r.headers["X-Cache"] == "miss"
        t = time.perf_counter()
        assert http.post("/api/v1/viz/charts", headers=auth, json=spec).headers["X-Cache"] == "hit"
        cached.append(time.perf_counter() - t)
        t = time.perf_counter()
        revalidate = {**auth, "If-None-Match": r.headers["ETag"]}
        assert http.post("/api/v1/viz/charts", headers=revalidate, json=spec).status_code == 304
        revalidated.append(time.perf_counter() - t)
    return tuple(statistics.median(x) * 1000 for x in (first, cached, revalidated))


if __name__ == "__main__":
    main()
