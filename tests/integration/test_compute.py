"""Compute API + real RQ workers on the real Redis, through Traefik."""

import os
import signal
import statistics
import time

import httpx
import psutil
import pytest

from conftest import eventually

pytestmark = pytest.mark.integration

CSV = b"a,b,c,label\n1,2,3.5,x\n2,4,1.0,y\n3,6,4.5,x\n4,8,0.5,y\n5,10,2.0,x\n"


def submit(http, headers, **body):
    return http.post("/api/v1/compute/jobs", json=body, headers=headers)


def wait_for(http, headers, job_id, statuses=("finished", "failed", "canceled", "stopped"), timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = http.get(f"/api/v1/compute/jobs/{job_id}", headers=headers).json()
        if job["status"] in statuses:
            return job
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} still {job['status']} after {timeout}s: {job}")


@pytest.fixture(scope="module")
def owner(user_factory):
    return user_factory("compute")[2]


@pytest.fixture(scope="module")
def dataset(http, owner):
    resp = http.post("/api/v1/data/datasets", headers=owner, files={"file": ("abc.csv", CSV, "text/csv")})
    assert resp.status_code == 201, resp.text
    return resp.json()["id"]


def test_noop_runs_to_finished(http, owner):
    resp = submit(http, owner, type="noop", params={"value": {"n": 1}})
    assert resp.status_code == 202 and resp.headers["Location"].endswith(resp.json()["id"])
    job = wait_for(http, owner, resp.json()["id"])
    assert job["status"] == "finished" and job["result"] == {"ok": True, "value": {"n": 1}}
    assert job["progress"] == 1.0 and job["started_at"] and job["ended_at"]


def test_describe_and_correlation_compute_real_results(http, owner, dataset):
    described = wait_for(http, owner, submit(http, owner, type="describe", dataset_id=dataset).json()["id"])
    assert described["status"] == "finished", described
    mean = next(r for r in described["result"]["statistics"] if r["statistic"] == "mean")
    assert mean["a"] == 3.0 and mean["b"] == 6.0

    corr = wait_for(http, owner, submit(http, owner, type="correlation", params={"dataset_id": dataset}).json()["id"])
    assert corr["status"] == "finished", corr
    result = corr["result"]
    assert result["columns"] == ["a", "b", "c"]
    i, j = result["columns"].index("a"), result["columns"].index("b")
    assert result["matrix"][i][j] == pytest.approx(1.0)
    # Independent reference: the standard library's Pearson correlation.
    expected = statistics.correlation([1, 2, 3, 4, 5], [3.5, 1.0, 4.5, 0.5, 2.0])
    assert result["matrix"][i][result["columns"].index("c")] == pytest.approx(expected)


def test_monte_carlo_matches_the_analytic_mean(http, owner):
    params = {"simulations": 400_000, "s0": 100, "mu": 0.05, "sigma": 0.2, "horizon_years": 1, "seed": 7}
    job = wait_for(http, owner, submit(http, owner, type="monte_carlo", params=params).json()["id"])
    assert job["status"] == "finished" and job["queue"] == "heavy"
    r = job["result"]
    stderr = r["std"] / (r["simulations"] ** 0.5)
    assert abs(r["mean"] - r["expected_analytic"]) < 5 * stderr
    assert r["p5"] < r["p50"] < r["p95"] and 0 < r["probability_of_loss"] < 1


def test_a_job_that_raises_ends_failed_with_its_error(http, owner):
    one_numeric = http.post("/api/v1/data/datasets", headers=owner,
                            files={"file": ("one.csv", b"name,v\nx,1\ny,2\n", "text/csv")}).json()["id"]
    job = wait_for(http, owner, submit(http, owner, type="correlation", dataset_id=one_numeric, retries=1).json()["id"],
                   timeout=90)
    assert job["status"] == "failed"
    assert job["error"] == ("datalab.compute.jobs.JobError: "
                            "correlation needs at least two numeric columns, the dataset has 1")
    assert job["retries_left"] == 0  # a deterministic error spends no retries
    assert "Traceback" not in job["error"]


@pytest.mark.parametrize(
    "body, status",
    [
        ({"type": "no-such-job"}, 422),
        ({"type": "monte_carlo", "params": {"simulations": -1}}, 422),
        ({"type": "sleep", "params": {"seconds": 1, "extra": True}}, 422),
        ({"type": "describe"}, 422),  # no dataset_id
        ({"type": "describe", "dataset_id": "7c9e6679-7425-40de-944b-e07fc1f90ae7"}, 404),
        ({"type": "noop", "depends_on": ["no-such-job"]}, 404),
        ({"type": "noop", "queue": "nowhere"}, 422),
    ],
)
def test_bad_submissions_are_4xx(http, owner, body, status):
    resp = submit(http, owner, **body)
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"] == "application/problem+json"


def test_dependencies_run_in_order_and_cancel(http, owner):
    first = submit(http, owner, type="sleep", params={"seconds": 1.5}).json()
    second = submit(http, owner, type="noop", params={"value": 2}, depends_on=[first["id"]]).json()
    assert second["status"] == "deferred"
    done = wait_for(http, owner, second["id"])
    assert done["status"] == "finished"
    assert done["started_at"] >= wait_for(http, owner, first["id"])["ended_at"]

    long = submit(http, owner, type="sleep", params={"seconds": 30}).json()
    waiting = submit(http, owner, type="noop", depends_on=[long["id"]]).json()
    assert http.delete(f"/api/v1/compute/jobs/{waiting['id']}", headers=owner).json()["status"] == "canceled"
    wait_for(http, owner, long["id"], statuses=("started",))
    assert http.delete(f"/api/v1/compute/jobs/{long['id']}", headers=owner).json()["status"] == "stopped"
    assert wait_for(http, owner, long["id"])["status"] == "stopped"
    assert http.delete(f"/api/v1/compute/jobs/{long['id']}", headers=owner).status_code == 409


def test_progress_is_reported(http, owner):
    job = submit(http, owner, type="sleep", params={"seconds": 2}).json()
    seen = set()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        view = http.get(f"/api/v1/compute/jobs/{job['id']}", headers=owner).json()
        seen.add(view["progress"])
        if view["status"] == "finished":
            break
        time.sleep(0.1)
    assert any(0 < p < 1 for p in seen) and 1.0 in seen


def test_jobs_are_private_and_listed_with_filters(http, owner, user_factory):
    job = wait_for(http, owner, submit(http, owner, type="noop", params={"value": "mine"}).json()["id"])
    _, _, other = user_factory("other")
    assert http.get(f"/api/v1/compute/jobs/{job['id']}", headers=other).status_code == 404
    assert http.delete(f"/api/v1/compute/jobs/{job['id']}", headers=other).status_code == 404
    listed = http.get("/api/v1/compute/jobs", params={"type": "noop", "status": "finished"}, headers=owner).json()
    assert job["id"] in [j["id"] for j in listed["items"]]
    assert all(j["type"] == "noop" and j["status"] == "finished" for j in listed["items"])
    assert http.get("/api/v1/compute/jobs", headers=other).json()["total"] == 0


def test_metrics_show_queues_and_job_durations(platform, http, owner):
    wait_for(http, owner, submit(http, owner, type="noop").json()["id"])
    assert eventually(lambda: "datalab_compute_queue_length{queue=\"heavy\"}"
                      in httpx.get(f"{platform.config.url('compute')}/metrics").text, timeout=15)
    worker_metrics = f"http://127.0.0.1:{platform.config.worker_metrics_port}/metrics"
    assert eventually(lambda: 'datalab_job_duration_seconds_count{outcome="finished",type="noop"}'
                      in httpx.get(worker_metrics).text)


def kill_worker(platform) -> None:
    """SIGKILL the worker and its work horse: what an OOM kill or a lost node does."""
    worker = next(p for p in platform.processes if p.name == "worker-0")
    tree = [psutil.Process(worker.pid), *psutil.Process(worker.pid).children(recursive=True)]
    for proc in tree:
        os.kill(proc.pid, signal.SIGKILL)
    psutil.wait_procs(tree, timeout=10)


def test_a_killed_worker_never_leaves_a_job_started(http, owner, platform):
    # With a retry left, the abandoned job runs again on the next worker and finishes.
    retried = submit(http, owner, type="sleep", params={"seconds": 3}, retries=1).json()
    wait_for(http, owner, retried["id"], statuses=("started",))
    kill_worker(platform)
    platform.start_worker(0)
    # Seen abandoned within the heartbeat grace (15 s here) and put back for a retry ...
    url = f"/api/v1/compute/jobs/{retried['id']}"
    assert eventually(lambda: http.get(url, headers=owner).json()["retries_left"] == 0, timeout=60)
    # ... which runs once a scheduler holds the queue again: the dead worker's scheduler
    # lock has to expire first (RQ: 61 s), so this can take a minute and more.
    job = wait_for(http, owner, retried["id"], statuses=("finished", "failed"), timeout=180)
    assert job["status"] == "finished"

    # Without one, it ends failed with a readable reason, never stuck in `started`.
    doomed = submit(http, owner, type="sleep", params={"seconds": 60}).json()
    wait_for(http, owner, doomed["id"], statuses=("started",))
    kill_worker(platform)
    job = wait_for(http, owner, doomed["id"], statuses=("finished", "failed"), timeout=90)
    assert job["status"] == "failed"
    assert "stopped (killed or lost)" in job["error"]
    platform.start_worker(0)
    assert wait_for(http, owner, submit(http, owner, type="noop").json()["id"])["status"] == "finished"
