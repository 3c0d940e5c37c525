"""Compute's security findings, against the real platform: model ownership and artifact
paths (train_model), what the worker agrees to run, quotas, and ids that once gave 500s."""

import hashlib
import json
import time
import uuid

import pytest
from rq import Queue
from rq.job import Job
from rq.serializers import JSONSerializer

from conftest import eventually
from datalab.compute.app import ComputeSettings

pytestmark = pytest.mark.integration

JOBS = "/api/v1/compute/jobs"
MODELS = "/api/v1/ai/models"
LINE = "x,y\n" + "\n".join(f"{i},{2 * i + 1}" for i in range(40)) + "\n"
ENDED = ("finished", "failed", "canceled", "stopped")


def assert_problem(resp, *statuses):
    assert resp.status_code in statuses, (resp.status_code, resp.text)
    assert resp.headers["content-type"] == "application/problem+json", resp.text
    return resp.json()


def upload(http, headers, content: str = LINE) -> str:
    resp = http.post("/api/v1/data/datasets", headers=headers,
                     files={"file": ("line.csv", content.encode(), "text/csv")})
    assert resp.status_code == 201, resp.text
    return resp.json()["id"]


def wait_ended(http, headers, job_id, timeout=120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = http.get(f"{JOBS}/{job_id}", headers=headers).json()
        if job["status"] in ENDED:
            return job
        time.sleep(0.3)
    raise AssertionError(f"job {job_id} did not end: {job}")


def audit_lines(platform, action, log="compute"):
    path = platform.config.home / "logs" / f"{log}.log"
    lines = []
    for raw in path.read_text().splitlines():
        try:
            line = json.loads(raw)
        except ValueError:
            continue
        if line.get("audit") and line.get("action") == action:
            lines.append(line)
    return lines


@pytest.fixture(scope="module")
def alice(user_factory):
    return user_factory("alice")[2]


@pytest.fixture(scope="module")
def bob(user_factory):
    return user_factory("bob")[2]


@pytest.fixture(scope="module")
def rq_redis(platform):
    # The compute credential: with per-service Redis users only compute and the workers
    # can write RQ's keys at all (test_redis_acl.py); the worker must still refuse.
    conn = platform.redis.client("compute")
    yield conn
    conn.close()


# -- finding 1: a model is trained only by its owner, and only into models/ -------------------

def test_a_user_cannot_train_into_another_users_model(platform, http, alice, bob):
    model = http.post(MODELS, headers=alice, json={
        "dataset_id": upload(http, alice), "target": "y", "features": ["x"], "kind": "linear"}).json()
    assert model["status"] == "ready", model
    artifact = platform.config.home / "models" / f"{model['id']}.joblib"
    before = hashlib.sha256(artifact.read_bytes()).hexdigest()
    predict = f"{MODELS}/{model['id']}/predict"
    assert http.post(predict, headers=alice, json={"rows": [{"x": 10}]}).json()["predictions"] == pytest.approx([21])

    bobs = upload(http, bob, "x,y\n" + "\n".join(f"{i},{-1000 * i}" for i in range(40)) + "\n")
    attack = {"type": "train_model", "dataset_id": bobs,
              "params": {"model_id": model["id"], "target": "y", "features": ["x"], "kind": "linear"}}
    resp = http.post(JOBS, headers=bob, json=attack)
    if resp.status_code == 202:  # the old behaviour: let it run, then show what it did
        wait_ended(http, bob, resp.json()["id"])
    assert hashlib.sha256(artifact.read_bytes()).hexdigest() == before, "alice's artifact was replaced"
    assert http.post(predict, headers=alice, json={"rows": [{"x": 10}]}).json()["predictions"] == pytest.approx([21])
    assert_problem(resp, 403, 404)
    assert any(line["outcome"] == "denied" and line["object"] == model["id"]
               for line in audit_lines(platform, "model.access"))

    # Nor may the owner re-train a model that is not awaiting training, nor name a model
    # the ai service never created.
    own = dict(attack, dataset_id=model["dataset_id"])
    assert_problem(http.post(JOBS, headers=alice, json=own), 409)
    unknown = dict(attack, params=dict(attack["params"], model_id=str(uuid.uuid4())))
    assert_problem(http.post(JOBS, headers=bob, json=unknown), 404)


@pytest.mark.parametrize("model_id", ["../../x", "../x", "/tmp/x", "x/../../y", "..", "a" * 300, "x\x00y"])
def test_model_ids_that_are_not_ids_are_422_and_write_nothing(platform, http, bob, model_id):
    marker = f"traversal-{uuid.uuid4().hex[:8]}"
    model_id = model_id.replace("y", f"{marker}y").replace("x", marker)
    body = {"type": "train_model", "dataset_id": upload(http, bob),
            "params": {"model_id": model_id, "target": "y", "features": ["x"], "kind": "linear"}}
    resp = http.post(JOBS, headers=bob, json=body)
    if resp.status_code == 202:
        wait_ended(http, bob, resp.json()["id"])
    written = [p for base in (platform.config.home.parent, platform.config.home, platform.config.home / "models")
               for p in base.glob(f"{marker}*")]
    assert not written, f"the job wrote {written}"
    assert_problem(resp, 422)


def test_training_through_ai_still_works(http, alice):
    """The one legitimate path: ai creates the row (pending) and submits the job itself."""
    resp = http.post(MODELS, headers=alice, json={"dataset_id": upload(http, alice), "target": "y",
                                                  "features": ["x"], "kind": "linear", "async": True})
    assert resp.status_code == 202, resp.text
    model = resp.json()
    deadline = time.monotonic() + 120
    while model["status"] == "training" and time.monotonic() < deadline:
        time.sleep(0.5)
        model = http.get(f"{MODELS}/{model['id']}", headers=alice).json()
    assert model["status"] == "ready", model
    # Its job cannot be submitted a second time.
    again = {"type": "train_model", "dataset_id": model["dataset_id"],
             "params": {"model_id": model["id"], "target": "y", "features": ["x"], "kind": "linear"}}
    assert_problem(http.post(JOBS, headers=alice, json=again), 409)


# -- finding 2: the worker runs the platform's job types and nothing else ---------------------

@pytest.mark.parametrize("func, args", [
    ("os.system", lambda marker: (f"touch {marker}",)),
    ("builtins.exec", lambda marker: (f"open({str(marker)!r}, 'w').close()",)),
    ("subprocess.call", lambda marker: (["touch", str(marker)],)),
])
def test_the_worker_refuses_a_callable_it_does_not_know(platform, rq_redis, tmp_path, func, args):
    marker = tmp_path / "pwned"
    job = Queue("default", connection=rq_redis, serializer=JSONSerializer).enqueue(func, *args(marker))

    def ended():
        status = Job.fetch(job.id, connection=rq_redis, serializer=JSONSerializer).get_status()
        return status.value in ENDED
    assert eventually(ended, timeout=60)
    assert Job.fetch(job.id, connection=rq_redis, serializer=JSONSerializer).get_status().value == "failed"
    assert not marker.exists()
    assert eventually(lambda: any(line["object"] == job.id and line["outcome"] == "denied"
                                  for line in audit_lines(platform, "job.run", log="worker-0")))


def test_the_worker_refuses_an_unknown_job_type_and_foreign_callbacks(platform, rq_redis, tmp_path):
    from rq import Callback

    q = Queue("default", connection=rq_redis, serializer=JSONSerializer)
    unknown = q.enqueue("datalab.compute.tasks.execute", kwargs={"job_type": "nope", "params": {}})
    # A registered job type, but a callback naming a callable of the attacker's choice
    # (print accepts RQ's callback arguments: run, it would let the job finish).
    foreign = q.enqueue("datalab.compute.tasks.execute", kwargs={"job_type": "noop", "params": {}},
                        on_success=Callback("builtins.print"))
    for job in (unknown, foreign):
        assert eventually(lambda job=job: Job.fetch(job.id, connection=rq_redis, serializer=JSONSerializer)
                          .get_status().value in ENDED, timeout=60)
        assert Job.fetch(job.id, connection=rq_redis, serializer=JSONSerializer).get_status().value == "failed"


# -- finding 6: quotas -----------------------------------------------------------------------

def test_params_are_bounded(http, bob):
    limit = ComputeSettings.model_fields["max_params_bytes"].default
    body = assert_problem(http.post(JOBS, headers=bob, json={"type": "noop", "params": {"value": "v" * limit}}), 413)
    assert str(limit) in body["detail"]


def test_concurrent_jobs_per_user_are_bounded(http, user_factory):
    _, _, carol = user_factory("carol")
    limit = ComputeSettings.model_fields["max_active_jobs"].default
    # One job that holds the rest deferred: they count as active without using workers.
    first = http.post(JOBS, headers=carol, json={"type": "sleep", "params": {"seconds": 20}}).json()
    ids = [first["id"]]
    for _ in range(limit - 1):
        resp = http.post(JOBS, headers=carol, json={"type": "noop", "depends_on": [first["id"]]})
        assert resp.status_code == 202, resp.text
        ids.append(resp.json()["id"])
    over = http.post(JOBS, headers=carol, json={"type": "noop"})
    body = assert_problem(over, 429)
    assert int(over.headers["Retry-After"]) > 0 and str(limit) in body["detail"]
    for job_id in reversed(ids):
        http.delete(f"{JOBS}/{job_id}", headers=carol)
    wait_ended(http, carol, first["id"])
    assert http.post(JOBS, headers=carol, json={"type": "noop"}).status_code == 202


def test_users_cannot_hold_a_worker_for_long(http, bob):
    limit = ComputeSettings.model_fields["user_max_timeout"].default["default"]
    assert_problem(http.post(JOBS, headers=bob, json={"type": "sleep", "params": {"seconds": 3600}}), 422)
    assert_problem(http.post(JOBS, headers=bob, json={"type": "noop", "timeout": limit + 1}), 422)
    longest_sleep = ComputeSettings.model_fields["user_max_sleep"].default
    assert_problem(http.post(JOBS, headers=bob, json={"type": "sleep", "params": {"seconds": longest_sleep + 1}}), 422)
    # `default` is the short lane: a heavy job type cannot be moved onto it.
    assert_problem(http.post(JOBS, headers=bob, json={"type": "monte_carlo", "queue": "default"}), 422)
    # The type's own longer timeout is cut to the users' limit.
    resp = http.post(JOBS, headers=bob, json={"type": "sleep", "params": {"seconds": 0}})
    assert resp.status_code == 202, resp.text
    assert wait_ended(http, bob, resp.json()["id"])["status"] == "finished"


# -- finding 7: ids and numbers that gave 500s -----------------------------------------------

BAD_IDS = ["a:b", "a b", "x" * 200, "é", "a.b", "..", "a%00b", "a\tb", "*", "rq:job:x"]


@pytest.mark.parametrize("job_id", BAD_IDS)
def test_odd_job_ids_are_404(http, bob, job_id):
    from urllib.parse import quote

    assert_problem(http.get(f"{JOBS}/{quote(job_id, safe='')}", headers=bob), 404)
    assert_problem(http.delete(f"{JOBS}/{quote(job_id, safe='')}", headers=bob), 404)


@pytest.mark.parametrize("dep", ["a:b", "é", "x" * 200, "a\x00b", ""])
def test_odd_dependency_ids_are_422(http, bob, dep):
    assert_problem(http.post(JOBS, headers=bob, json={"type": "noop", "depends_on": [dep]}), 422)


def test_huge_offsets_and_nul_bytes_are_4xx(http, bob):
    assert_problem(http.get(JOBS, headers=bob, params={"offset": 10**30}), 422)
    assert_problem(http.get(JOBS, headers=bob, params={"limit": 10**30}), 422)
    for params in ({"status": "a\x00b"}, {"type": "a\x00b"}):
        assert 400 <= http.get(JOBS, headers=bob, params=params).status_code < 500
    assert_problem(http.post(JOBS, headers=bob, json={"type": "no\x00op"}), 422)
    assert_problem(http.post(JOBS, headers=bob, json={"type": "describe", "dataset_id": "a\x00b"}), 422)
    assert_problem(http.post(JOBS, headers=bob, json={"type": "noop", "params": {"value": "a\x00b"}}), 422)


def test_a_refused_cross_user_job_access_is_audited(platform, http, alice, bob):
    job = http.post(JOBS, headers=alice, json={"type": "noop"}).json()
    assert_problem(http.get(f"{JOBS}/{job['id']}", headers=bob), 404)
    assert eventually(lambda: any(line["outcome"] == "denied" and line["object"] == job["id"]
                                  for line in audit_lines(platform, "job.access")))



ODD = [None, True, -1, 0, 10**30, -(10**30), 1.5, "", "x" * 5000, "a\x00b", "é", "../../x", [], ["a"], {}, {"a": 1}]


def test_odd_values_anywhere_in_a_submission_are_never_5xx(http, bob):
    """What a schema fuzzer does, in brief: every field of a submission, every odd value."""
    dataset = upload(http, bob)
    bases = [
        {"type": "noop"},
        {"type": "describe", "dataset_id": dataset},
        {"type": "monte_carlo", "params": {"simulations": 100}},
        {"type": "train_model", "dataset_id": dataset,
         "params": {"model_id": str(uuid.uuid4()), "target": "y", "features": ["x"], "kind": "linear"}},
    ]
    statuses = set()
    for base in bases:
        fields = [*base, "queue", "depends_on", "retries", "timeout"]
        for field in fields:
            for value in ODD:
                resp = http.post(JOBS, headers=bob, json={**base, field: value})
                statuses.add(resp.status_code)
                assert resp.status_code < 500, (field, value, resp.text)
                if resp.status_code == 202:
                    http.delete(f"{JOBS}/{resp.json()['id']}", headers=bob)
        for name in base.get("params", {}):
            for value in ODD:
                resp = http.post(JOBS, headers=bob, json={**base, "params": {**base["params"], name: value}})
                assert resp.status_code < 500, (name, value, resp.text)
                if resp.status_code == 202:
                    http.delete(f"{JOBS}/{resp.json()['id']}", headers=bob)
    # Numbers JSON cannot carry back: Python's parser reads them, a response could not hold them.
    for raw in ('{"type": "noop", "params": {"value": NaN}}', '{"type": "noop", "params": {"value": 1e400}}',
                '{"type": "monte_carlo", "params": {"s0": Infinity}}'):
        resp = http.post(JOBS, headers={**bob, "Content-Type": "application/json"}, content=raw)
        assert_problem(resp, 422)
    for params in ({"limit": "x"}, {"offset": -1}, {"offset": "1e3"}, {"status": "é"}, {"type": "x" * 500}):
        assert 400 <= http.get(JOBS, headers=bob, params=params).status_code < 500, params
