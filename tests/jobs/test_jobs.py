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
from datalab.ops import vault_bootstrap as vault
from hcl_plain import plain
from traefik_config import assert_entrypoint_timeouts

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


@cache
def parsed(path: Path) -> dict:
    return plain(hcl2.loads(path.read_text()))


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
    out = subprocess.run([*argv, str(path)], capture_output=True, text=True, timeout=60)
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
    canary = svc["canary_tags"]
    assert "traefik.consulcatalog.canary=true" in canary and "traefik.enable=true" in canary
    # The canary's own router: same path (plus an opt-in header), same middlewares as stable.
    rule = next(t for t in canary if ".rule=" in t)
    assert f"PathPrefix(`{SERVICES[service]}`)" in rule and f"routers.{service}-canary." in rule
    assert next(t for t in canary if ".middlewares=" in t).split("=", 1)[1].split(",") == middlewares
    # ...and a lowest-priority fallback on the plain path, so that the moment after a
    # promotion (old instances gone, the promoted one still canary-tagged) is not a 404.
    fallback = f"traefik.http.routers.{service}-canary-fallback"
    assert f"{fallback}.rule=PathPrefix(`{SERVICES[service]}`)" in canary
    assert f"{fallback}.priority=1" in canary
    assert f"{fallback}.middlewares={','.join(middlewares)}" in canary
    ready = paths["/ready"]
    assert ready.get("failures_before_critical", 0) >= 2, "a credential gap must not unroute the instance"


@pytest.mark.parametrize("path", JOBS, ids=lambda p: p.name)
def test_each_task_has_its_own_vault_role_and_the_right_secrets(path):
    name, body = job_body(path)
    for group in groups(body).values():
        for task_name, task in tasks(group).items():
            vault = task["vault"][0]
            if name == "traefik":  # its HTTPS certificate from the edge CA, nothing else
                assert vault["role"] == "nomad-traefik" and vault.get("env") is False
                templates = {t["destination"]: t for t in task["template"]}
                secrets = [t["data"] for t in templates.values() if "secret " in t["data"] or "pkiCert" in t["data"]]
                assert len(secrets) == 1 and 'pkiCert "pki-edge/issue/traefik"' in secrets[0]
                assert templates["secrets/dynamic.yml"]["change_mode"] == "noop"  # Traefik watches it
                assert templates["secrets/dynamic.yml"]["perms"] == "0400"
                continue
            # compute's workers (and dispatched batch runs) have their own role: the API's
            # holds no platform API key.
            worker = (name, task_name) in (("compute", "worker"), ("compute-batch", "job"))
            role = "nomad-compute-worker" if worker else f"nomad-{name}"
            assert vault["role"] == role and vault.get("env") is False
            assert vault.get("disable_file") is True  # no secrets/vault_token: the app never uses it
            templates = {t["destination"]: t for t in task.get("template", [])}
            for dest, t in templates.items():
                if dest.startswith("secrets/"):
                    assert t.get("perms") == "0400", dest
                    if name not in ("postgres", "redis"):
                        # Owned by the user the task runs as, or it cannot read them (raw_exec
                        # as `datalab`: PermissionError on a root-owned 0400 file).
                        assert (t.get("uid"), t.get("gid")) == ("${var.run_as_uid}", "${var.run_as_gid}"), dest
            if name in WITH_DB:
                db = templates["secrets/db.json"]
                assert db["change_mode"] == "noop" and f'database/creds/{name}' in db["data"]
            else:
                assert "secrets/db.json" not in templates
            if name in SERVICES or name == "compute-batch":
                # Its own Redis ACL user only: compute's API task the compute user, the
                # workers (and dispatched batch runs) the worker user.
                user = "worker" if task_name in ("worker", "job") else name
                redis = templates["secrets/redis.json"]
                assert redis["change_mode"] == "noop"  # re-read for every new connection
                assert redis["data"].replace('\\"', '"') == ('{{ with secret "kv/data/datalab/redis/' + user + '" }}'
                                         '{{ .Data.data | toJSON }}{{ end }}'), f"{name}/{task_name}"
                assert all("redis_password" not in t["data"] for t in templates.values())


@pytest.mark.parametrize("path", JOBS, ids=lambda p: p.name)
def test_tasks_that_use_consul_get_their_own_consul_token(path):
    """Under Consul ACLs (default deny) Nomad gives a task a Consul token (workload identity)
    only when the task has a `consul` block: templates' `service` lookups, the app's
    discovery and Traefik's catalog reads need one."""
    name, body = job_body(path)
    for group in groups(body).values():
        for task_name, task in tasks(group).items():
            uses_consul = name == "traefik" or any('service "' in t["data"] for t in task.get("template", []))
            assert ("consul" in task) == uses_consul, f"{name}/{task_name}"


def test_compute_api_has_a_nomad_identity_file_for_dispatch():
    _, body = job_body(ROOT / "jobs" / "compute.nomad.hcl")
    api = tasks(groups(body)["api"])["compute"]
    assert api["identity"][0]["file"] is True  # secrets/nomad_token, read by NomadDispatcher
    assert "identity" not in tasks(groups(body)["workers"])["worker"]


def _policy_paths(policy: str) -> set[str]:
    doc = hcl2.loads((vault.POLICY_DIR / f"{policy}.hcl").read_text())
    return {k.strip('"') for block in doc["path"] for k in block if not k.startswith("__")}


def test_each_vault_role_grants_exactly_what_its_tasks_render():
    """Least privilege across the three files: the policy of each task's Vault role reads the
    secrets its tasks' templates render and nothing more, and the role's bound claims admit
    those tasks (job id and, where bound, task name) and no other task of those jobs."""
    roles = vault.jwt_roles()
    reads: dict[str, set[str]] = {}
    users: dict[str, set[tuple[str, str]]] = {}
    every: set[tuple[str, str]] = set()
    for path in JOBS:
        name, body = job_body(path)
        for group in groups(body).values():
            for task_name, task in tasks(group).items():
                every.add((name, task_name))
                if "vault" not in task:
                    continue
                role = task["vault"][0]["role"]
                secrets = {m for t in task.get("template", [])
                           for m in re.findall(r'(?:secret|pkiCert) "([^"]+)"', t["data"].replace('\\"', '"'))}
                reads.setdefault(role, set()).update(secrets)
                users.setdefault(role, set()).add((name, task_name))
    token = {"auth/token/renew-self", "auth/token/lookup-self"}
    assert set(reads) == set(roles) - {vault.DEFAULT_ROLE}
    for role, paths in reads.items():
        (policy,) = roles[role]["token_policies"]
        assert _policy_paths(policy) == paths | token, role

        def admits(job: str, task: str, claims=roles[role]["bound_claims"]) -> bool:
            got = {"nomad_job_id": job, "nomad_task": task}
            return all(got[claim] in values for claim, values in claims.items())

        assert {t for t in every if admits(*t)} == users[role], role
    # The point of the split: the API task's identity reads no platform key, no worker's user.
    assert reads["nomad-compute"] == {"kv/data/datalab/shared", "kv/data/datalab/redis/compute"}


def test_only_compute_workers_hold_the_platform_api_key():
    """The API key mints the platform's admin identity: the tasks that act as the platform
    (workers reading datasets and reporting models) hold it, the compute API does not."""
    holders = set()
    for path in JOBS:
        name, body = job_body(path)
        for group_name, group in groups(body).items():
            for task_name, task in tasks(group).items():
                if any(t["destination"] == "secrets/service_api_key" for t in task.get("template", [])):
                    holders.add(f"{name}/{group_name}/{task_name}")
    assert "compute/api/compute" not in holders
    assert {"compute/workers/worker", "compute-batch/run/job"} <= holders


def test_gateway_alone_holds_the_signing_key():
    for path in JOBS:
        name, body = job_body(path)
        dests = {t["destination"] for g in groups(body).values() for task in tasks(g).values()
                 for t in task.get("template", [])}
        assert ("secrets/jwt_private_key.pem" in dests) == (name == "gateway"), name


def test_no_secret_values_in_jobs_or_configs():
    literal = re.compile(r'(password|secret|token|api_key)\s*=\s*"[^"${]{6,}"', re.I)
    # YAML (Traefik): `token: <literal>`, `password: <literal>`; a template action is fine.
    yaml_literal = re.compile(r'^\s*(password|secret|token|api_?key)\w*:\s*["\']?(?!\{\{)[^\s"\'#{][^\s"\']{5,}',
                              re.I | re.M)
    for path in list((ROOT / "jobs").rglob("*.hcl")) + list((ROOT / "config").rglob("*.hcl")):
        assert not literal.search(path.read_text()), path
    for path in (ROOT / "config").rglob("*.yml"):
        assert not yaml_literal.search(path.read_text()), path
    # and the probe itself works
    assert literal.search('password = "hunter2hunter2"') and yaml_literal.search("  token: s.abcdef123456")
    assert not yaml_literal.search('  token: "{{ env "CONSUL_HTTP_TOKEN" }}"')


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
    # NomadDispatcher.submit sends exactly these two meta keys.
    assert job["Type"] == "batch" and job["ParameterizedJob"]["MetaRequired"] == ["rq_job_id", "job_type"]
    assert job["ParameterizedJob"]["Payload"] == "optional"
    task = job["TaskGroups"][0]["Tasks"][0]
    assert task["DispatchPayload"]["File"] == "payload.json"
    env = task["Env"]
    assert env["DATALAB_WORKER_MAX_JOBS"] == "1" and env["DATALAB_WORKER_BURST"] == "true"


@needs_nomad
@pytest.mark.parametrize("path", [p for p in JOBS if p.stem.split(".")[0] not in ("postgres", "redis")],
                         ids=lambda p: p.name)
def test_secrets_belong_to_the_user_the_task_runs_as(path):
    local = ROOT / "jobs" / "vars" / "local.hcl"
    raw = rendered(path, local, ("run_as_uid=995", "run_as_gid=994"))
    docker = rendered(path, ROOT / "jobs" / "vars" / "vagrant.hcl")
    default_docker = rendered(path, None)
    for job, user, owner in ((raw, "datalab", (995, 994)), (docker, "10001:10001", (10001, 10001)),
                             (default_docker, "", (-1, -1))):  # -1: the agent's user (root)
        for group in job["TaskGroups"]:
            for task in group["Tasks"]:
                assert task["User"] == user, (group["Name"], task["Name"])
                secrets = [t for t in task["Templates"] if t["DestPath"].startswith("secrets/")]
                assert secrets and all((t["Uid"], t["Gid"]) == owner for t in secrets), task["Name"]


def edge_dynamic_config(template: dict) -> dict:
    """The traefik job's dynamic config as Traefik reads it, with a stand-in for what
    pkiCert renders (the certificate and key, JSON strings), after checking that it asks
    the edge CA for this client's IP and the edge's names."""
    import yaml

    text = template["EmbeddedTmpl"]
    first, _, rest = text.partition("\n")
    assert first.startswith('{{- with pkiCert "pki-edge/issue/traefik" "common_name=traefik.service.consul" '
                            '"alt_names=traefik.service.consul,localhost" '
                            '(printf "ip_sans=%s,127.0.0.1" (env "NOMAD_IP_https"))'), first
    assert rest.rstrip().endswith("{{- end }}")
    assert template["ChangeMode"] == "noop" and template["Perms"] == "0400"  # Traefik watches it; the key
    body = rest.rstrip().removesuffix("{{- end }}").replace("{{ .Cert | toJSON }}", '"CERT PEM"')
    config = yaml.safe_load(body.replace("{{ .Key | toJSON }}", '"KEY PEM"'))
    assert config["tls"]["stores"]["default"]["defaultCertificate"] == {"certFile": "CERT PEM", "keyFile": "KEY PEM"}
    return config


@needs_nomad
def test_traefik_static_config_rendered_by_nomad():
    import yaml

    job = rendered(ROOT / "jobs" / "traefik.nomad.hcl", ROOT / "jobs" / "vars" / "local.hcl",
                   ("ports={ traefik_http = 18080, traefik_https = 18443, traefik_ping = 18082 }",))
    assert job["Type"] == "system"
    (task,) = job["TaskGroups"][0]["Tasks"]
    assert task["Config"]["args"] == ["--configFile=${NOMAD_SECRETS_DIR}/traefik.yml"]
    static = next(t for t in task["Templates"] if t["DestPath"] == "secrets/traefik.yml")
    config = yaml.safe_load(static["EmbeddedTmpl"].replace('"{{ env "CONSUL_HTTP_TOKEN" }}"', '""')
                            .replace('"{{ env "NOMAD_SECRETS_DIR" }}', '"/secrets'))
    entry = config["entryPoints"]
    # One machine (raw_exec): plain HTTP on web, as the embedded platform; no redirect.
    assert {k: v for k, v in entry["web"].items() if k != "transport"} == {"address": ":18080", "asDefault": True}
    assert set(entry) == {"web", "websecure", "ping", "auth"}
    assert entry["websecure"]["address"] == ":18443" and entry["websecure"]["asDefault"] is True
    assert "tls" in entry["websecure"]["http"] and "asDefault" not in entry["ping"]
    assert_entrypoint_timeouts(entry)
    catalog = config["providers"]["consulCatalog"]
    assert catalog["exposedByDefault"] is False and catalog["strictChecks"] == ["passing"]
    assert catalog["endpoint"]["token"] == ""  # rendered from the task's CONSUL_HTTP_TOKEN
    assert '{{ env "CONSUL_HTTP_TOKEN" }}' in static["EmbeddedTmpl"]
    ports = {p["Label"]: p["Value"] for p in job["TaskGroups"][0]["Networks"][0]["ReservedPorts"]}
    assert ports == {"http": 18080, "https": 18443, "ping": 18082}
    dynamic = edge_dynamic_config(next(t for t in task["Templates"] if t["DestPath"] == "secrets/dynamic.yml"))
    assert set(dynamic["http"]["middlewares"]) == {"auth", "retry"}
    auth = dynamic["http"]["middlewares"]["auth"]["forwardAuth"]
    assert auth["address"] == "http://127.0.0.1:8083/internal/auth/verify" and auth["trustForwardHeader"] is False
    assert auth["authResponseHeaders"] == ["X-User-Id", "X-User-Name", "Authorization"]


@needs_nomad
@pytest.mark.parametrize("var_file", ["vagrant.hcl", "production.hcl"])
def test_traefik_on_a_cluster_redirects_plain_http_to_https(var_file):
    import yaml

    job = rendered(ROOT / "jobs" / "traefik.nomad.hcl", ROOT / "jobs" / "vars" / var_file)
    (task,) = job["TaskGroups"][0]["Tasks"]
    templates = {t["DestPath"]: t["EmbeddedTmpl"] for t in task["Templates"]}
    static = yaml.safe_load(templates["secrets/traefik.yml"].replace('"{{ env "CONSUL_HTTP_TOKEN" }}"', '""')
                            .replace('"{{ env "NOMAD_SECRETS_DIR" }}', '"/secrets'))
    entry = static["entryPoints"]
    redirect = {"to": "websecure", "scheme": "https", "permanent": True}
    assert entry["web"]["http"]["redirections"]["entryPoint"] == redirect
    assert not entry["web"].get("asDefault") and entry["websecure"]["asDefault"] and "tls" in entry["websecure"]["http"]
    assert entry["auth"]["address"] == "127.0.0.1:8083" and not entry["auth"].get("asDefault")
    assert_entrypoint_timeouts(entry)
    # forwardAuth goes through the loopback entrypoint: through web it would get the redirect.
    dynamic = next(t for t in task["Templates"] if t["DestPath"] == "secrets/dynamic.yml")
    auth = edge_dynamic_config(dynamic)["http"]["middlewares"]["auth"]["forwardAuth"]
    assert auth["address"] == "http://127.0.0.1:8083/internal/auth/verify"


@needs_nomad
def test_postgres_and_redis_keep_data_on_host_volumes():
    pg = rendered(ROOT / "jobs" / "postgres.nomad.hcl")["TaskGroups"][0]
    assert pg["Volumes"]["postgres"]["Type"] == "host"
    # PostgreSQL >= 18 images: one mount at /var/lib/postgresql, PGDATA left to the image.
    assert pg["Tasks"][0]["VolumeMounts"][0]["Destination"] == "/var/lib/postgresql"
    assert "PGDATA" not in (pg["Tasks"][0]["Env"] or {})
    redis = rendered(ROOT / "jobs" / "redis.nomad.hcl")["TaskGroups"][0]
    conf = next(t for t in redis["Tasks"][0]["Templates"] if t["DestPath"] == "secrets/redis.conf")
    assert (conf["Uid"], conf["Gid"]) == (999, 999)  # the image's redis user reads it
    # ACL users from Vault (default off), a memory limit tied to the task's, never evicting.
    assert '{{ with secret "kv/data/datalab/redis-server" }}{{ .Data.data.acl }}{{ end }}' in conf["EmbeddedTmpl"]
    assert "requirepass" not in conf["EmbeddedTmpl"]
    assert f"maxmemory {redis['Tasks'][0]['Resources']['MemoryMB'] * 3 // 4}mb" in conf["EmbeddedTmpl"]
    from datalab.core.redis_users import MAXMEMORY_POLICY
    assert f"maxmemory-policy {MAXMEMORY_POLICY}" in conf["EmbeddedTmpl"]


@needs_nomad
def test_nomad_fmt_is_clean():
    out = subprocess.run([NOMAD, "fmt", "-check", "-recursive", str(ROOT / "jobs"), str(ROOT / "config" / "nomad")],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, f"not `nomad fmt`-formatted:\n{out.stdout}{out.stderr}"


@needs_nomad
@pytest.mark.parametrize("var_file", ["local.hcl", "vagrant.hcl", "production.hcl"])
def test_data_decode_child_fits_inside_the_task_memory(var_file):
    """The upload conversion's memory cap is below the task's, so a value bomb is refused
    by the cap (413), not by the cgroup's OOM killer taking the service."""
    job = rendered(ROOT / "jobs" / "data.nomad.hcl", ROOT / "jobs" / "vars" / var_file)
    (task,) = job["TaskGroups"][0]["Tasks"]
    cap = int(task["Env"]["DATALAB_DECODE_MEMORY_BYTES"])
    assert 0 < cap <= task["Resources"]["MemoryMB"] * 1024 * 1024 // 2


@needs_nomad
@pytest.mark.parametrize("service", sorted(SERVICES))
def test_every_service_believes_only_traefik_for_the_client_address(service):
    """Each service's API task learns Traefik's node addresses from Consul: its audit lines
    and (gateway) rate limits name the real client, and no other peer is believed."""
    job = rendered(ROOT / "jobs" / f"{service}.nomad.hcl", ROOT / "jobs" / "vars" / "vagrant.hcl")
    task = next(t for g in job["TaskGroups"] for t in g["Tasks"] if t["Name"] == service)
    assert task["Env"]["DATALAB_TRUSTED_PROXIES_FILE"] == "${NOMAD_TASK_DIR}/trusted_proxies"
    (tmpl,) = [t for t in task["Templates"] if t["DestPath"] == "local/trusted_proxies"]
    assert 'service "traefik|any"' in tmpl["EmbeddedTmpl"] and tmpl["ChangeMode"] == "noop"
