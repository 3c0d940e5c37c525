"""The Nomad job files, read two ways: python-hcl2 (always) for their structure, and Nomad's
own parser (`nomad job run -output`, no agent needed) for what each var-file renders, when
the binary exists (tools/hashistack/build.sh). A dev agent validates them in
test_nomad_validate.py."""

import json
import re
import subprocess
from functools import cache
from pathlib import Path

import hcl2
import pytest

from datalab.devstack.hashistack import find_binary

ROOT = Path(__file__).resolve().parents[2]
JOBS = sorted((ROOT / "jobs").glob("*.nomad.hcl"))
VAR_FILES = sorted((ROOT / "jobs" / "vars").glob("*.hcl"))
SERVICES = {"gateway": "/api/v1/auth", "data": "/api/v1/data", "ai": "/api/v1/ai",
            "compute": "/api/v1/compute", "viz": "/api/v1/viz"}
WITH_DB = {"gateway", "data", "ai"}
NOMAD = find_binary("nomad")
needs_nomad = pytest.mark.skipif(
    NOMAD is None, reason="NO NOMAD BINARY: run tools/hashistack/build.sh nomad; rendered jobs NOT checked by Nomad"
)


def _clean(node):
    """python-hcl2 keeps quotes and bookkeeping keys: drop both."""
    if isinstance(node, dict):
        return {k.strip('"'): _clean(v) for k, v in node.items() if not k.startswith("__")}
    if isinstance(node, list):
        return [_clean(v) for v in node]
    if isinstance(node, str) and len(node) >= 2 and node[0] == node[-1] == '"':
        return node[1:-1]
    return node


@cache
def parsed(path: Path) -> dict:
    return _clean(hcl2.loads(path.read_text()))


def job_body(path: Path) -> tuple[str, dict]:
    (name, body), = parsed(path)["job"][0].items()
    return name, body


def groups(body: dict) -> dict[str, dict]:
    return {name: g for block in body.get("group", []) for name, g in block.items()}


def tasks(group: dict) -> dict[str, dict]:
    return {name: t for block in group.get("task", []) for name, t in block.items()}


@cache
def rendered(path: Path, var_file: Path | None = None, extra: tuple = ()) -> dict:
    argv = [NOMAD, "job", "run", "-output"]
    if var_file:
        argv += ["-var-file", str(var_file)]
    for item in extra:
        argv += ["-var", item]
    out = subprocess.run(argv + [str(path)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)["Job"]


def test_every_job_and_var_file_parses():
    assert {p.name.split(".")[0] for p in JOBS} == {
        "gateway", "data", "ai", "compute", "viz", "traefik", "postgres", "redis", "compute-batch"}
    for path in JOBS + VAR_FILES:
        assert parsed(path) is not None


def test_every_job_declares_the_same_common_variables():
    declared = {p.name: {k for block in parsed(p)["variable"] for k in block} for p in JOBS}
    reference = declared["data.nomad.hcl"]
    for name, variables in declared.items():
        assert variables == reference, f"{name} differs: {variables ^ reference}"
    for var_file in VAR_FILES:
        assert set(parsed(var_file)) <= reference, var_file.name


@pytest.mark.parametrize("service", sorted(SERVICES))
def test_service_jobs_have_the_deployment_shape(service):
    name, body = job_body(ROOT / "jobs" / f"{service}.nomad.hcl")
    assert name == service and body["type"] == "service"
    update = body["update"][0]
    assert update["canary"] == 1 and update["auto_revert"] is True and update["auto_promote"] is True
    assert update["health_check"] == "checks"
    assert body["reschedule"][0]["unlimited"] is True and body["migrate"]
    api = groups(body)["api"]
    assert api["shutdown_delay"] == "5s"
    assert api["spread"][0]["attribute"] == "${node.unique.name}"
    assert api["restart"][0]["render_templates"] is True
    assert api["scaling"][0]["enabled"] is True
    svc = api["service"][0]
    assert svc["provider"] == "consul" and svc["name"] == service
    paths = {c["path"]: c for c in svc["check"]}
    assert set(paths) == {"/health", "/ready"} and paths["/health"]["check_restart"]
    tags = svc["tags"]
    assert "traefik.enable=true" in tags
    assert f"traefik.http.routers.{service}.rule=PathPrefix(`{SERVICES[service]}`)" in tags
    middlewares = next(t for t in tags if ".middlewares=" in t).split("=", 1)[1].split(",")
    assert middlewares == (["retry@file"] if service == "gateway" else ["auth@file", "retry@file"])
    assert "traefik.consulcatalog.canary=true" in svc["canary_tags"]


@pytest.mark.parametrize("path", JOBS, ids=lambda p: p.name)
def test_each_task_has_its_own_vault_role_and_the_right_secrets(path):
    name, body = job_body(path)
    for group in groups(body).values():
        for task_name, task in tasks(group).items():
            if name == "traefik":  # holds no secret, so asks Vault for nothing
                assert "vault" not in task
                continue
            vault = task["vault"][0]
            role = {"compute-batch": "nomad-compute"}.get(name, f"nomad-{name}")
            assert vault["role"] == role and vault.get("env") is False
            templates = {t["destination"]: t for t in task.get("template", [])}
            for dest, t in templates.items():
                if dest.startswith("secrets/"):
                    assert t.get("perms") == "0400", dest
            if name in WITH_DB:
                db = templates["secrets/db.json"]
                assert db["change_mode"] == "noop" and f'database/creds/{name}' in db["data"]
            else:
                assert "secrets/db.json" not in templates
            if name in SERVICES or name == "compute-batch":
                assert "secrets/redis_password" in templates


def test_gateway_alone_holds_the_signing_key():
    for path in JOBS:
        name, body = job_body(path)
        dests = {t["destination"] for g in groups(body).values() for task in tasks(g).values()
                 for t in task.get("template", [])}
        assert ("secrets/jwt_private_key.pem" in dests) == (name == "gateway"), name


def test_no_secret_values_in_jobs_or_configs():
    literal = re.compile(r'(password|secret|token|api_key)\s*=\s*"[^"${]{6,}"', re.I)
    for path in list((ROOT / "jobs").rglob("*.hcl")) + list((ROOT / "config").rglob("*.hcl")):
        assert not literal.search(path.read_text()), path


@needs_nomad
@pytest.mark.parametrize("var_file", VAR_FILES, ids=lambda p: p.stem)
@pytest.mark.parametrize("path", JOBS, ids=lambda p: p.name)
def test_nomad_renders_every_job_with_every_var_file(path, var_file):
    job = rendered(path, var_file)
    driver = parsed(var_file).get("driver", "docker")
    for group in job["TaskGroups"]:
        for task in group["Tasks"]:
            expected = "docker" if path.stem.split(".")[0] in ("postgres", "redis") else driver
            assert task["Driver"] == expected
            if task["Driver"] == "raw_exec":
                assert task["User"] and task["User"] != "root"
                assert task["Config"]["command"].endswith(("/bin/datalab", "/bin/traefik"))
                assert not task.get("VolumeMounts")
            else:
                assert "image" in task["Config"]


@needs_nomad
def test_gpu_device_only_when_asked():
    ai = ROOT / "jobs" / "ai.nomad.hcl"
    none = rendered(ai, None, ("gpu_count=0",))["TaskGroups"][0]["Tasks"][0]["Resources"].get("Devices")
    assert not none
    (device,) = rendered(ai, None, ("gpu_count=2",))["TaskGroups"][0]["Tasks"][0]["Resources"]["Devices"]
    assert device["Name"] == "nvidia/gpu" and device["Count"] == 2
    assert device["Constraints"][0]["LTarget"] == "${device.attr.memory}"
    production = rendered(ai, ROOT / "jobs" / "vars" / "production.hcl")
    assert production["TaskGroups"][0]["Tasks"][0]["Resources"]["Devices"][0]["Count"] == 1


@needs_nomad
def test_compute_batch_is_parameterized():
    job = rendered(ROOT / "jobs" / "compute-batch.nomad.hcl")
    assert job["Type"] == "batch" and job["ParameterizedJob"]["MetaRequired"] == ["rq_job_id"]
    env = job["TaskGroups"][0]["Tasks"][0]["Env"]
    assert env["DATALAB_WORKER_MAX_JOBS"] == "1" and env["DATALAB_WORKER_BURST"] == "true"
