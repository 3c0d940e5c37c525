"""AI service through Traefik: train every kind, predict (also concurrently, micro-batched),
every bad input as a 4xx problem, privacy, the worker's result contract, and the async path
through the real compute service (skipped, loudly, when compute is not running)."""

import asyncio
import json
import re
import time
import uuid

import httpx
import numpy as np
import polars as pl
import pytest

from conftest import eventually
from datalab.ml import training

pytestmark = pytest.mark.integration

MODELS = "/api/v1/ai/models"
PROBLEM = "application/problem+json"


def csv(columns: dict[str, list]) -> bytes:
    names = list(columns)
    lines = [",".join(names)] + [",".join(str(v) for v in row) for row in zip(*columns.values(), strict=True)]
    return ("\n".join(lines) + "\n").encode()


def regression_csv(n: int = 300) -> bytes:
    rng = np.random.default_rng(1)
    x = rng.uniform(0, 10, n).round(4)
    return csv({"x": x, "noise": rng.normal(size=n).round(4),
                "y": (3 * x + rng.normal(0, 0.2, n)).round(4), "city": ["Paris", "Berlin"] * (n // 2)})


def classification_csv(n: int = 300) -> bytes:
    rng = np.random.default_rng(2)
    x = rng.uniform(0, 10, n).round(4)
    return csv({"x": x, "z": rng.normal(size=n).round(4), "label": np.where(x > 5, "high", "low")})


def upload(http, headers, content: bytes, name="data.csv") -> str:
    resp = http.post("/api/v1/data/datasets", headers=headers, files={"file": (name, content, "text/csv")})
    assert resp.status_code == 201, resp.text
    return resp.json()["id"]


def train(http, headers, dataset_id, target, features, kind, **extra) -> httpx.Response:
    body = {"dataset_id": dataset_id, "target": target, "features": features, "kind": kind, **extra}
    return http.post(MODELS, json=body, headers=headers)


def assert_problem(resp: httpx.Response, status: int, *fragments: str) -> dict:
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"].startswith(PROBLEM)
    body = resp.json()
    assert body["status"] == status
    for fragment in fragments:
        assert fragment in body["detail"], body
    return body


@pytest.fixture(scope="module")
def owner(user_factory):
    return user_factory("ai")[2]


@pytest.fixture(scope="module")
def datasets(http, owner):
    return {
        "regression": upload(http, owner, regression_csv()),
        "classification": upload(http, owner, classification_csv()),
    }


@pytest.fixture(scope="module")
def line_model(http, owner, datasets) -> dict:
    resp = train(http, owner, datasets["regression"], "y", ["x"], "linear", name="line")
    assert resp.status_code == 201, resp.text
    return resp.json()


@pytest.mark.parametrize("kind", ["linear", "random_forest", "gradient_boosting"])
def test_regression_kinds_learn_the_line(http, owner, datasets, kind):
    resp = train(http, owner, datasets["regression"], "y", ["x", "noise"], kind)
    assert resp.status_code == 201, resp.text
    model = resp.json()
    assert model["status"] == "ready" and model["task"] == "regression" and model["kind"] == kind
    assert model["metrics"]["r2"] > 0.9 and model["metrics"]["rmse"] < 1.5
    assert model["n_train"] + model["n_test"] == 300 and model["device"] == "cpu" and model["job_id"] is None
    resp = http.post(f"{MODELS}/{model['id']}/predict", headers=owner,
                     json={"rows": [{"x": 2, "noise": 0}, {"x": 5, "noise": 0}, {"x": 8.5, "noise": 0}]})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert "probabilities" not in body
    assert body["predictions"] == pytest.approx([6, 15, 25.5], abs=1.0)


@pytest.mark.parametrize("kind", ["logistic", "random_forest", "gradient_boosting"])
def test_classification_kinds_separate_the_classes(http, owner, datasets, kind):
    resp = train(http, owner, datasets["classification"], "label", ["x", "z"], kind)
    assert resp.status_code == 201, resp.text
    model = resp.json()
    assert model["task"] == "classification" and model["classes"] == ["high", "low"]
    assert model["metrics"]["accuracy"] >= 0.9 and model["metrics"]["f1_macro"] >= 0.9
    resp = http.post(f"{MODELS}/{model['id']}/predict", headers=owner,
                     json={"rows": [{"x": 1, "z": 0}, {"x": 9, "z": 0}]})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["predictions"] == ["low", "high"] and body["classes"] == ["high", "low"]
    assert body["probabilities"][0][1] > 0.5 and body["probabilities"][1][0] > 0.5
    assert all(sum(p) == pytest.approx(1.0) for p in body["probabilities"])


async def test_concurrent_predicts_are_each_answered_correctly(base_url, owner, line_model, http):
    xs = [i / 4 for i in range(64)]
    url = f"{MODELS}/{line_model['id']}/predict"
    # The reference: one request with every row.
    expected = http.post(url, headers=owner, json={"rows": [{"x": x} for x in xs]}).json()["predictions"]
    limits = httpx.Limits(max_connections=64)
    async with httpx.AsyncClient(base_url=base_url, headers=owner, timeout=30, limits=limits) as client:
        async def one(x):
            resp = await client.post(url, json={"rows": [{"x": x}]})
            assert resp.status_code == 200, resp.text
            return resp.json()["predictions"][0]

        for _ in range(3):  # several rounds: batches form differently each time
            got = await asyncio.gather(*(one(x) for x in xs))
            assert got == pytest.approx(expected, rel=1e-9)
    assert expected == pytest.approx([3 * x for x in xs], abs=0.5)


def test_metrics_are_exposed(platform, http, owner, line_model):
    http.post(f"{MODELS}/{line_model['id']}/predict", headers=owner, json={"rows": [{"x": 1}]})
    text = httpx.get(f"{platform.config.url('ai')}/metrics").text
    assert 'datalab_ai_predictions_total{kind="linear"}' in text
    assert "datalab_ai_predict_batch_rows_bucket" in text
    assert 'datalab_ai_training_seconds_count{kind="linear",mode="sync"}' in text


def _cache_misses(platform) -> float:
    text = httpx.get(f"{platform.config.url('ai')}/metrics").text
    match = re.search(r'^datalab_ai_model_cache_total\{result="miss"\} (\S+)$', text, re.M)
    return float(match.group(1)) if match else 0.0


def test_deletion_feed_drops_cached_models(platform, http, owner, line_model):
    """Predict trusts the cache; a delete through any ai instance is published on Redis and
    every instance drops the model. Here: the one instance hears it and reloads the model."""

    url = f"{MODELS}/{line_model['id']}/predict"
    assert http.post(url, headers=owner, json={"rows": [{"x": 1}]}).status_code == 200  # cached
    before = _cache_misses(platform)
    r = platform.redis.client()
    assert r.publish("dl:events:model-deleted", line_model["id"]) >= 1  # the ai instance listens

    def reloaded() -> bool:
        assert http.post(url, headers=owner, json={"rows": [{"x": 1}]}).status_code == 200
        return _cache_misses(platform) > before

    assert eventually(reloaded)


# -- bad input, each a clear 4xx problem ---------------------------------------------------

def test_bad_training_requests(http, owner, datasets):
    reg = datasets["regression"]
    assert_problem(train(http, owner, reg, "nope", ["x"], "linear"), 422, "Unknown column(s): 'nope'")
    assert_problem(train(http, owner, reg, "y", ["x", "ghost"], "linear"), 422, "'ghost'")
    assert_problem(train(http, owner, reg, "y", ["x", "city"], "linear"), 422,
                   "Features must be numeric", "'city' (string)")
    assert_problem(train(http, owner, reg, "y", ["city"], "random_forest"), 422, "'city' (string)")
    assert_problem(train(http, owner, reg, "y", ["y"], "linear"), 422, "cannot also be a feature")
    assert_problem(train(http, owner, reg, "city", ["x"], "linear"), 422, "needs a numeric target")
    assert_problem(train(http, owner, reg, "y", ["x"], "logistic"), 422, "needs a categorical target")
    assert_problem(train(http, owner, reg, "y", ["x"], "random_forest", params={"trees": 5}), 422,
                   "Unknown parameter 'trees'")
    body = assert_problem(train(http, owner, reg, "y", ["x"], "svm"), 422)
    assert any(e["loc"][-1] == "kind" for e in body["errors"])
    assert_problem(train(http, owner, str(uuid.uuid4()), "y", ["x"], "linear"), 404, "No dataset")
    assert_problem(train(http, owner, "not-an-id", "y", ["x"], "linear"), 404, "No dataset")


def test_empty_dataset_is_refused(http, owner):
    empty = upload(http, owner, b"x,y\n", "empty.csv")
    assert_problem(train(http, owner, empty, "y", ["x"], "linear"), 422, "empty")


def test_single_class_target_is_refused(http, owner):
    ds = upload(http, owner, csv({"x": list(range(20)), "label": ["same"] * 20}))
    assert_problem(train(http, owner, ds, "label", ["x"], "logistic"), 422, "single class")


def test_bad_prediction_requests(http, owner, line_model):
    url = f"{MODELS}/{line_model['id']}/predict"
    body = assert_problem(http.post(url, headers=owner, json={"rows": [{"x": 1}, {"z": 2}, {"x": "3"}]}),
                          422, "row 1 'x': missing")
    assert body["errors"] == [
        {"row": 1, "feature": "x", "msg": "missing"},
        {"row": 2, "feature": "x", "msg": "must be a finite number, not str"},
    ]
    assert_problem(http.post(url, headers=owner, json={"rows": []}), 422)
    assert_problem(http.post(url, headers=owner, json={"rows": [1, 2]}), 422)
    assert_problem(http.post(f"{MODELS}/{uuid.uuid4()}/predict", headers=owner, json={"rows": [{"x": 1}]}),
                   404, "No model")
    assert_problem(http.get(f"{MODELS}/not-a-uuid", headers=owner), 404, "No model")


def test_odd_inputs_are_4xx_not_500(http, owner, datasets):
    """Each was an unhandled 500: an offset past PostgreSQL's bigint, a NUL character
    (PostgreSQL text cannot hold one), a dataset id that names another data route."""
    assert_problem(http.get(MODELS, params={"offset": 10**30}, headers=owner), 422)
    body = assert_problem(train(http, owner, datasets["regression"], "y", ["x"], "linear", name="a\x00b"), 422)
    assert body["errors"][0]["loc"] == ["body", "name"]
    for bad in ("", "/", "x/content", "..", "\x00"):
        assert_problem(train(http, owner, bad, "y", ["x"], "linear"), 404, "No dataset")
    # A dataset id in another spelling of the same UUID is the dataset.
    spelled = datasets["regression"].replace("-", "").upper()
    assert train(http, owner, spelled, "y", ["x"], "linear").json()["dataset_id"] == datasets["regression"]


def audit_lines(platform, service: str, action: str) -> list[dict]:
    lines = (platform.logs / f"{service}.log").read_text().splitlines()
    out = []
    for line in lines:
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if entry.get("audit") is True and entry.get("action") == action:
            out.append(entry)
    return out


def test_deletes_and_refused_access_are_audited(platform, http, owner, user_factory, datasets):
    name, _, alice = user_factory("audited")
    intruder, _, other = user_factory("snoop")
    mid = train(http, alice, datasets_of(http, alice), "y", ["x"], "linear").json()["id"]
    for action, call in (
        ("model.read", lambda h: http.get(f"{MODELS}/{mid}", headers=h)),
        ("model.predict", lambda h: http.post(f"{MODELS}/{mid}/predict", headers=h, json={"rows": [{"x": 1}]})),
        ("model.delete", lambda h: http.delete(f"{MODELS}/{mid}", headers=h)),
    ):
        assert_problem(call(other), 404)  # the answer stays "no such model"
        assert eventually(lambda a=action: any(
            e["outcome"] == "denied" and e["actor"] == intruder and e["object"] == f"model:{mid}"
            for e in audit_lines(platform, "ai", a)))
    # A model that does not exist is no one's: no audit line for it.
    ghost = str(uuid.uuid4())
    assert_problem(http.get(f"{MODELS}/{ghost}", headers=other), 404)
    assert http.delete(f"{MODELS}/{mid}", headers=alice).status_code == 204
    assert eventually(lambda: any(
        e["outcome"] == "success" and e["actor"] == name and e["object"] == f"model:{mid}" and e["request_id"]
        for e in audit_lines(platform, "ai", "model.delete")))
    assert not any(ghost in (e.get("object") or "") for e in audit_lines(platform, "ai", "model.read"))


def datasets_of(http, headers) -> str:
    return upload(http, headers, regression_csv(40))


def test_models_are_private(http, owner, user_factory, line_model, datasets):
    _, _, other = user_factory("intruder")
    mid = line_model["id"]
    assert_problem(http.get(f"{MODELS}/{mid}", headers=other), 404)
    assert_problem(http.post(f"{MODELS}/{mid}/predict", headers=other, json={"rows": [{"x": 1}]}), 404)
    assert_problem(http.delete(f"{MODELS}/{mid}", headers=other), 404)
    assert http.get(MODELS, headers=other).json()["total"] == 0
    # Nor can anyone train on a dataset that is not theirs.
    assert_problem(train(http, other, datasets["regression"], "y", ["x"], "linear"), 404, "No dataset")
    assert http.get(f"{MODELS}/{mid}", headers=owner).status_code == 200


def test_list_is_paginated_and_admin_sees_all(http, user_factory, admin_headers):
    _, _, alice = user_factory("lister")
    ds = upload(http, alice, regression_csv(40))
    ids = [train(http, alice, ds, "y", ["x"], "linear", name=f"m{i}").json()["id"] for i in range(3)]
    first = http.get(MODELS, params={"limit": 2}, headers=alice).json()
    rest = http.get(MODELS, params={"limit": 2, "offset": 2}, headers=alice).json()
    assert first["total"] == 3 and len(first["items"]) == 2 and len(rest["items"]) == 1
    assert {m["id"] for m in first["items"] + rest["items"]} == set(ids)
    admin_view = http.get(MODELS, params={"limit": 500}, headers=admin_headers).json()
    assert set(ids) <= {m["id"] for m in admin_view["items"]}
    assert_problem(http.get(MODELS, params={"limit": 0}, headers=alice), 422)


def test_delete_removes_row_artifact_and_cached_model(http, owner, datasets, platform):
    model = train(http, owner, datasets["regression"], "y", ["x"], "linear").json()
    artifact = platform.config.home / "models" / f"{model['id']}.joblib"
    url = f"{MODELS}/{model['id']}"
    assert artifact.exists()
    assert http.post(f"{url}/predict", headers=owner, json={"rows": [{"x": 1}]}).status_code == 200
    assert http.delete(url, headers=owner).status_code == 204
    assert not artifact.exists()
    assert_problem(http.get(url, headers=owner), 404)
    assert_problem(http.post(f"{url}/predict", headers=owner, json={"rows": [{"x": 1}]}), 404)
    assert_problem(http.delete(url, headers=owner), 404)


# -- the worker's side of async training ---------------------------------------------------

def _training_row(platform, http, headers, dataset_id, kind="random_forest") -> str:
    """A model row in status `training`, as POST /models leaves it before enqueuing the job
    (written straight to PostgreSQL, so this runs whether or not compute is up)."""
    owner_id = http.get("/api/v1/auth/me", headers=headers).json()["id"]
    model_id = str(uuid.uuid4())
    platform.postgres.execute(
        "INSERT INTO ai.models (id, owner_id, dataset_id, kind, target, features, params, status, "
        "created_at, updated_at) VALUES ($1, $2, $3, $4, 'y', '[\"x\"]', '{}', 'training', now(), now())",
        model_id, owner_id, dataset_id, kind, database="datalab",
    )
    return model_id


def test_result_contract_as_the_worker_uses_it(platform, http, owner, datasets, admin_headers):
    model_id = _training_row(platform, http, owner, datasets["regression"])
    url = f"{MODELS}/{model_id}"
    assert_problem(http.post(f"{url}/predict", headers=owner, json={"rows": [{"x": 1}]}), 409, "training")
    assert_problem(http.put(f"{url}/result", headers=owner, json={"status": "ready"}), 403)
    assert_problem(http.put(f"{url}/result", headers=admin_headers, json={"status": "ready"}), 422,
                   "No artifact")
    # What the worker does: fit with training.fit, write with training.save, then report.
    rng = np.random.default_rng(3)
    x = rng.uniform(0, 10, 200)
    frame = pl.DataFrame({"x": x, "y": 3 * x + rng.normal(0, 0.2, 200)})
    training.save(training.fit(frame, "y", ["x"], "random_forest"),
                  platform.config.home / "models" / f"{model_id}.joblib")
    report = {"status": "ready", "metrics": {"r2": 0.99}, "n_train": 160, "n_test": 40, "device": "cpu"}
    resp = http.put(f"{url}/result", headers=admin_headers, json=report)
    assert resp.status_code == 200, resp.text
    model = resp.json()
    assert model["status"] == "ready" and model["task"] == "regression" and model["metrics"]["r2"] > 0.9
    assert http.put(f"{url}/result", headers=admin_headers, json=report).status_code == 200  # a retry
    assert_problem(http.put(f"{url}/result", headers=admin_headers, json={"status": "failed"}), 409, "already ready")
    pred = http.post(f"{url}/predict", headers=owner, json={"rows": [{"x": 4}]}).json()["predictions"]
    assert pred == pytest.approx([12], abs=1.0)


def test_failed_training_is_recorded(platform, http, owner, datasets, admin_headers):
    model_id = _training_row(platform, http, owner, datasets["regression"])
    resp = http.put(f"{MODELS}/{model_id}/result", headers=admin_headers,
                    json={"status": "failed", "error": "worker ran out of memory"})
    assert resp.status_code == 200 and resp.json()["error"] == "worker ran out of memory"
    assert_problem(http.post(f"{MODELS}/{model_id}/predict", headers=owner, json={"rows": [{"x": 1}]}), 409, "failed")


def test_a_failure_reason_holding_nul_is_recorded(platform, http, owner, datasets, admin_headers):
    # PostgreSQL text holds no NUL: it was a 500 for the worker, and the model stayed training.
    model_id = _training_row(platform, http, owner, datasets["regression"])
    resp = http.put(f"{MODELS}/{model_id}/result", headers=admin_headers,
                    json={"status": "failed", "error": "column 'a\x00b' is not numeric"})
    assert resp.status_code == 200, resp.text
    assert resp.json()["status"] == "failed" and resp.json()["error"] == "column 'a\ufffdb' is not numeric"


def test_result_for_a_deleted_model_removes_the_orphan_artifact(platform, http, admin_headers):
    model_id = str(uuid.uuid4())
    orphan = platform.config.home / "models" / f"{model_id}.joblib"
    orphan.write_bytes(b"written by a worker after the model was deleted")
    assert_problem(http.put(f"{MODELS}/{model_id}/result", headers=admin_headers, json={"status": "ready"}), 404)
    assert not orphan.exists()


# -- async training through the real compute service ---------------------------------------

def _compute_answers(url: str) -> bool:
    try:
        return httpx.get(f"{url}/health", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.fixture(scope="module")
def compute(platform) -> str:
    if "compute" not in platform.config.services or not _compute_answers(platform.config.url("compute")):
        pytest.skip(
            "!!! COMPUTE SERVICE NOT RUNNING in this platform (not in DATALAB_TEST_SERVICES, or "
            "/health did not answer): async training through a train_model job is NOT tested !!!"
        )
    return platform.config.url("compute")


def test_async_training_runs_as_a_compute_job(http, owner, datasets, compute):
    resp = train(http, owner, datasets["regression"], "y", ["x"], "gradient_boosting", **{"async": True})
    assert resp.status_code == 202, resp.text
    model = resp.json()
    assert model["status"] in ("training", "ready") and model["job_id"]
    url = f"{MODELS}/{model['id']}"
    deadline = time.monotonic() + 180
    while model["status"] == "training" and time.monotonic() < deadline:
        time.sleep(0.5)
        model = http.get(url, headers=owner).json()
    assert model["status"] == "ready", model
    assert model["metrics"]["r2"] > 0.9 and model["task"] == "regression"
    pred = http.post(f"{url}/predict", headers=owner, json={"rows": [{"x": 5}]}).json()["predictions"]
    assert pred == pytest.approx([15], abs=1.0)


def test_deleting_a_model_in_training_leaves_no_artifact(platform, http, owner, datasets, compute):
    resp = train(http, owner, datasets["regression"], "y", ["x"], "random_forest", **{"async": True})
    assert resp.status_code == 202, resp.text
    model = resp.json()
    assert http.delete(f"{MODELS}/{model['id']}", headers=owner).status_code == 204
    job_url = f"/api/v1/compute/jobs/{model['job_id']}"
    deadline = time.monotonic() + 180
    while http.get(job_url, headers=owner).json()["status"] in ("queued", "deferred", "scheduled", "started"):
        assert time.monotonic() < deadline, "the training job never ended"
        time.sleep(0.5)
    # Cancelled before it ran, or stopped, or it finished and its report found no model:
    # either way nothing is left on the models volume.
    assert eventually(lambda: not (platform.config.home / "models" / f"{model['id']}.joblib").exists())
    assert_problem(http.get(f"{MODELS}/{model['id']}", headers=owner), 404)


async def test_async_training_without_compute_is_503_and_leaves_nothing(platform, owner, datasets):
    """An ai instance whose discovery finds compute dead (a port nothing listens on); the
    rest is real: the platform's PostgreSQL, Redis, secrets and data service."""
    from datalab.ai.app import AiSettings, build_app
    from datalab.devstack.servers import free_port

    env = platform.service_env("ai")
    table = {n: [platform.config.url(n)] for n in platform.config.service_ports}
    table["compute"] = [f"http://127.0.0.1:{free_port()}"]
    settings = AiSettings(
        home=platform.config.home, secrets_dir=platform.secrets_dir,
        database_url=env["DATALAB_DATABASE_URL"], redis_url=env["DATALAB_REDIS_URL"],
        redis_secret=env["DATALAB_REDIS_SECRET"],
        static_services=table,
    )
    app = build_app(settings)
    async with app.router.lifespan_context(app), httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://ai"
    ) as client:
        before = (await client.get(MODELS, headers=owner)).json()["total"]
        body = {"dataset_id": datasets["regression"], "target": "y", "features": ["x"], "kind": "linear", "async": True}
        resp = await client.post(MODELS, headers=owner, json=body)
        assert_problem(resp, 503, "compute service is not answering")
        assert (await client.get(MODELS, headers=owner)).json()["total"] == before
