"""The platform flow, as a user drives it through the edge: log in, upload, query, train,
predict, a compute job, a chart (and its 304). One function used by every way DataLab runs:
the tests (embedded platform), `make e2e` (real Nomad/Consul/Vault) and
`scripts/cluster-test` (any running cluster).
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field

import httpx


class FlowError(AssertionError):
    pass


@dataclass
class FlowReport:
    steps: list[tuple[str, float]] = field(default_factory=list)  # (step, seconds)

    def lines(self) -> list[str]:
        return [f"  ok  {name:<28} {secs * 1000:8.1f} ms" for name, secs in self.steps]


def _check(cond: bool, what: str, resp: httpx.Response | None = None) -> None:
    if not cond:
        detail = f" (HTTP {resp.status_code}: {resp.text[:300]})" if resp is not None else ""
        raise FlowError(what + detail)


def sample_csv(rows: int = 200, seed: int = 1) -> bytes:
    """y = 3x + 1 + noise, a category, and a column unrelated to y."""
    rng = random.Random(seed)
    lines = ["x,z,segment,y"]
    for _ in range(rows):
        x, z = rng.uniform(0, 10), rng.uniform(0, 1)
        lines.append(f"{x:.4f},{z:.4f},{rng.choice('abc')},{3 * x + 1 + rng.gauss(0, 0.1):.4f}")
    return ("\n".join(lines) + "\n").encode()


def run_flow(base_url: str, username: str, password: str, timeout: float = 120,
             verify: bool | str = True) -> FlowReport:
    """`verify`: a CA bundle path when the edge serves TLS with the cluster's own CA."""
    report = FlowReport()
    with httpx.Client(base_url=base_url, timeout=60, verify=verify) as http:

        def step(name: str, fn):
            start = time.perf_counter()
            out = fn()
            report.steps.append((name, time.perf_counter() - start))
            return out

        def login():
            r = http.post("/api/v1/auth/token", data={"username": username, "password": password})
            _check(r.status_code == 200, "login", r)
            return {"Authorization": f"Bearer {r.json()['access_token']}"}

        auth = step("login", login)

        def refused():
            r = http.get("/api/v1/data/datasets")
            _check(r.status_code == 401, "a request without a token must be refused at the edge", r)

        step("no token -> 401", refused)

        def upload():
            r = http.post("/api/v1/data/datasets", headers=auth, files={"file": ("flow.csv", sample_csv(), "text/csv")})
            _check(r.status_code == 201 and r.json()["rows"] == 200, "upload", r)
            return r.json()["id"]

        dataset = step("upload csv", upload)

        def query():
            body = {"group_by": ["segment"], "aggregate": [{"column": "y", "func": "count", "alias": "n"}]}
            r = http.post(f"/api/v1/data/datasets/{dataset}/query", headers=auth, json=body)
            _check(r.status_code == 200 and sum(row["n"] for row in r.json()["rows"]) == 200, "query", r)

        step("query (group by)", query)

        def train():
            body = {"dataset_id": dataset, "target": "y", "features": ["x", "z"], "kind": "linear"}
            r = http.post("/api/v1/ai/models", headers=auth, json=body)
            _check(r.status_code == 201 and r.json()["metrics"]["r2"] > 0.95, "train", r)
            return r.json()["id"]

        model = step("train model", train)

        def predict():
            r = http.post(f"/api/v1/ai/models/{model}/predict", headers=auth, json={"rows": [{"x": 2, "z": 0.5}]})
            _check(r.status_code == 200 and abs(r.json()["predictions"][0] - 7) < 0.5, "predict", r)

        step("predict", predict)

        def compute():
            r = http.post("/api/v1/compute/jobs", headers=auth, json={"type": "correlation", "dataset_id": dataset})
            _check(r.status_code == 202, "submit compute job", r)
            job_id = r.json()["id"]
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                job = http.get(f"/api/v1/compute/jobs/{job_id}", headers=auth).json()
                if job["status"] in ("finished", "failed", "stopped", "canceled"):
                    break
                time.sleep(0.2)
            _check(job["status"] == "finished", f"compute job ended {job['status']}: {job.get('error')}")
            cols = job["result"]["columns"]
            corr = job["result"]["matrix"][cols.index("x")][cols.index("y")]
            _check(corr > 0.99, f"correlation of x and y should be ~1, got {corr}")

        step("compute job (worker)", compute)

        def chart():
            spec = {"dataset_id": dataset, "kind": "scatter", "x": "x", "y": "y"}
            r = http.post("/api/v1/viz/charts", headers=auth, json=spec)
            _check(r.status_code == 200 and r.content[:8] == b"\x89PNG\r\n\x1a\n" and len(r.content) > 5000,
                   "chart PNG", r)
            again = http.post("/api/v1/viz/charts", headers={**auth, "If-None-Match": r.headers["ETag"]}, json=spec)
            _check(again.status_code == 304, "chart revalidation should be 304", again)

        step("chart png + 304", chart)

        def cleanup():
            _check(http.delete(f"/api/v1/ai/models/{model}", headers=auth).status_code == 204, "delete model")
            _check(http.delete(f"/api/v1/data/datasets/{dataset}", headers=auth).status_code == 204, "delete dataset")

        step("delete model + dataset", cleanup)
    return report
