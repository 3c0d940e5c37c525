"""The checks a HashiCorp deployment of DataLab must pass, against any running cluster.

`make e2e` (dev agents on one machine, services/datalab/devstack/e2e.py) and `datalab cluster-test`
(scripts/cluster-test: Vagrant or real hosts, from NOMAD_ADDR, CONSUL_HTTP_ADDR, VAULT_ADDR
and their tokens) run the same ones, in this order:

1. every service passing in Consul;
2. the platform flow through Traefik (routes from Consul tags);
   edge-tls: Traefik's HTTPS entrypoint serves a certificate from Vault's edge CA;
3. the PostgreSQL credentials in use were issued by Vault (leases under database/creds/);
4. fault: an allocation stops -> Nomad replaces it -> the flow passes again;
5. fault: a changed job rolls out as a canary, promoted, under a load loop: 0 failed requests;
6. fault: Vault revokes the data service's leases -> Nomad's template renders a fresh user at
   its next renewal, requests in the gap wait for it (core.db): 0 failed requests.

On a secured cluster with several nodes (`make cluster`, Vagrant, real hosts) four more, the
faults through the cluster's own --fault-command (scripts/cluster fault: stop-node NODE,
start-node NODE, stop-vault, start-vault):

7. acl-denied: anonymous calls to Nomad, Consul and Vault are refused; a job's own workload
   identity (a probe job) cannot take another service's Vault role, read its paths, write
   Consul KV or register a service it is not;
8. vault-down: Vault stopped for 2 minutes -> services keep serving (paced load: 0 failed
   requests); back and unsealed -> credentials are issued and renewed again;
9. client-stop: a client stopped -> Nomad reschedules its allocations on the others, the
   flow passes again (how long it took); then it is started again;
10. leader-stop: the Nomad leader's server stopped (3 servers) -> a new leader, the jobs keep
   running, a paced load through Traefik sees 0 failed requests; then it is started again.

Each prints PASS or FAIL with what it saw; the first failure stops the run (later checks
build on the earlier ones).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shlex
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import hvac
import nomad
from cryptography import x509

from datalab.core.hashicorp_http import ClusterAccessError
from datalab.core.nomad_api import NomadEnv
from datalab.core.services import SERVICES

from . import deploy
from .flow import run_flow
from .hashicorp_env import ConsulEnv, VaultEnv, acl_filtered_error
from .vault_bootstrap import EDGE_PKI_MOUNT

DATA_LEASES = "database/creds/data/"
# Nomad's template renews a lease at ~2/3 of its TTL and only then learns it was revoked;
# requests wait db_credential_wait_seconds (30 s) for the new one. Longer TTLs cannot heal
# in time, so the revocation fault refuses to run (and says so) above this.
MAX_HEALABLE_TTL = 40


class Skipped(Exception):
    """A check that cannot run on this cluster as configured: reported loudly, not a failure."""


def say(msg: str) -> None:
    print(f"[cluster] {msg}", flush=True)


def wait(check: Callable, timeout: float, what: str, interval: float = 1.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s: {what}")


@dataclass
class Cluster:
    base_url: str  # Traefik's entrypoint
    admin_password: str
    nomad: nomad.Nomad
    vault: hvac.Client
    consul_addr: str
    consul_token: str | None = None
    consul_verify: bool | str | ssl.SSLContext = True
    consul_server_name: str | None = None  # CONSUL_TLS_SERVER_NAME
    http_verify: bool | str = True
    admin_user: str = "admin"
    job_dir: Path = Path("jobs")
    var_files: list[Path] = field(default_factory=list)
    variables: list[str] = field(default_factory=list)
    deploy_timeout: float = 300
    # Who is connected to PostgreSQL (user names), when the caller can see it (make e2e).
    db_users: Callable[[], set[str]] | None = None
    # Traefik's HTTPS entrypoint, when base_url is not it (make e2e: plain HTTP on web).
    tls_url: str | None = None
    # The environments the checks were given (the anonymous calls drop their tokens).
    nomad_env: NomadEnv | None = None
    vault_env: VaultEnv | None = None
    faults: Faults | None = None
    vault_down_seconds: float = 120

    def passing(self, name: str) -> int:
        headers = {"X-Consul-Token": self.consul_token} if self.consul_token else {}
        with httpx.Client(verify=self.consul_verify, timeout=10) as http:
            r = http.get(f"{self.consul_addr}/v1/health/service/{name}", params={"passing": "1"}, headers=headers,
                         extensions={"sni_hostname": self.consul_server_name} if self.consul_server_name else None)
        r.raise_for_status()
        passing = r.json()
        if (hidden := acl_filtered_error(r.headers, not passing, self.consul_addr, self.consul_token)) is not None:
            raise hidden
        return len(passing)

    def http(self, **kw) -> httpx.Client:
        return httpx.Client(base_url=self.base_url, verify=self.http_verify, **kw)

    def token(self) -> str:
        with self.http(timeout=30) as http:
            r = http.post("/api/v1/auth/token", data={"username": self.admin_user, "password": self.admin_password})
            r.raise_for_status()
            return r.json()["access_token"]

    def data_leases(self) -> set[str]:
        try:
            return set(self.vault.list(f"sys/leases/lookup/{DATA_LEASES}")["data"]["keys"])
        except (hvac.exceptions.InvalidPath, TypeError):  # none at all
            return set()

    def routed(self) -> bool:
        with self.http(timeout=10) as http:
            return http.get("/api/v1/data/datasets").status_code == 401


@dataclass
class Faults:
    """How this cluster stops and starts a node or Vault: `COMMAND stop-node NODE`,
    `start-node NODE`, `stop-vault`, `start-vault` (scripts/cluster fault). It returns once
    done: a started server's Vault unsealed, as after a reboot."""

    command: list[str]

    def __call__(self, *action: str) -> None:
        say(f"fault: {' '.join(action)}")
        done = subprocess.run([*self.command, *action], timeout=900, stdout=sys.stderr, check=False)
        if done.returncode:
            raise AssertionError(f"fault command {' '.join([*self.command, *action])!r} exited {done.returncode}")


def _faults(c: Cluster) -> Faults:
    if c.faults is None:
        raise Skipped("no --fault-command: this cluster's nodes and Vault cannot be stopped from here "
                      "(scripts/cluster fault does it for make cluster)")
    return c.faults


class LoadLoop:
    """A small paced load through Traefik while something changes; counts failures."""

    def __init__(self, cluster: Cluster, token: str, dataset: str, threads: int = 2, timeout: float = 10):
        self.cluster, self.timeout = cluster, timeout
        self.url = f"/api/v1/data/datasets/{dataset}/query"
        self.auth = {"Authorization": f"Bearer {token}"}
        self.stop = threading.Event()
        self.ok = 0
        self.failures: list[str] = []
        self.threads = [threading.Thread(target=self._run, args=(i,)) for i in range(threads)]

    def _run(self, n: int) -> None:
        started = time.monotonic()
        with self.cluster.http(timeout=self.timeout) as http:
            i = 0
            while not self.stop.is_set():
                i += 1
                try:
                    r = http.post(self.url, headers=self.auth, json={"limit": 1 + (i + n) % 50})
                    if r.status_code == 200:
                        self.ok += 1
                    else:
                        self.failures.append(f"+{time.monotonic() - started:.1f}s HTTP {r.status_code}: {r.text[:120]}")
                except httpx.HTTPError as exc:
                    self.failures.append(f"+{time.monotonic() - started:.1f}s {type(exc).__name__}")
                time.sleep(0.3)  # ~400 requests/min in all: under the gateway's per-user limit

    def __enter__(self) -> LoadLoop:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(self.timeout + 5)


def _load_dataset(c: Cluster, token: str, name: str) -> str:
    with c.http(timeout=60) as http:
        r = http.post("/api/v1/data/datasets", headers={"Authorization": f"Bearer {token}"},
                      files={"file": (name, b"a,b\n1,2\n3,4\n", "text/csv")})
        assert r.status_code == 201, f"upload: HTTP {r.status_code} {r.text[:200]}"
        return r.json()["id"]


# ---- the checks ------------------------------------------------------------------------

def services_passing(c: Cluster) -> str:
    counts = {name: wait(lambda n=name: c.passing(n), 180, f"{name} passing in Consul")
              for name in [*SERVICES, "traefik"]}
    wait(c.routed, 90, "Traefik routing by Consul tags (401 without a token)")
    # Which task driver runs each service (a cluster: docker; make e2e: raw_exec).
    drivers = {name: {t["Driver"] for g in c.nomad.job.get_job(name)["TaskGroups"] for t in g["Tasks"]}
               for name in SERVICES}
    by_driver: dict[str, list[str]] = {}
    for name, used in drivers.items():
        for driver in used:
            by_driver.setdefault(driver, []).append(name)
    return ("every service passing in Consul: " + ", ".join(f"{n}={counts[n]}" for n in SERVICES)
            + "; task drivers: " + "; ".join(f"{d}: {', '.join(names)}" for d, names in sorted(by_driver.items())))


def flow(c: Cluster) -> str:
    report = run_flow(c.base_url, c.admin_user, c.admin_password, verify=c.http_verify)
    print("\n".join(report.lines()), flush=True)
    return f"platform flow through Traefik: {len(report.steps)} steps"


def edge_tls(c: Cluster) -> str:
    """websecure's certificate chains to Vault's edge CA (pki-edge/ca/pem, public) and names
    the address it is reached at; the route answers through it."""
    url = c.tls_url or c.base_url
    if not url.startswith("https://"):
        raise Skipped(f"no HTTPS entrypoint to check: {url} is plain HTTP (give --url https://...)")
    ca_pem = c.vault.secrets.pki.read_ca_certificate(mount_point=EDGE_PKI_MOUNT)
    context = ssl.create_default_context(cadata=ca_pem)  # this CA only: not the system's
    with httpx.Client(base_url=url, verify=context, timeout=10) as http:
        r = http.get("/api/v1/data/datasets")
        assert r.status_code == 401, f"HTTPS {url}: HTTP {r.status_code}, want 401 (routed, no token)"
        host = urlsplit(url).hostname
    with socket.create_connection((host, urlsplit(url).port or 443), timeout=10) as raw, \
            context.wrap_socket(raw, server_hostname=host) as tls:
        cert = x509.load_der_x509_certificate(tls.getpeercert(binary_form=True) or b"")
    left = cert.not_valid_after_utc - datetime.now(UTC)
    return (f"{url}: certificate {cert.subject.rfc4514_string()} from {cert.issuer.rfc4514_string()} "
            f"(Vault {EDGE_PKI_MOUNT}/), verified for {host}, {left.total_seconds() / 3600:.0f} h left")


def vault_credentials(c: Cluster) -> str:
    leases = c.data_leases()
    assert leases, f"no lease under {DATA_LEASES}: the data service's user was not issued by Vault"
    detail = f"{len(leases)} lease(s) under {DATA_LEASES}"
    if c.db_users is not None:
        users = c.db_users()
        assert any(u.startswith("v-") and "-data-" in u for u in users), f"no Vault user connected: {users}"
        detail += f"; connected: {', '.join(sorted(users))}"
    return detail


def reschedule(c: Cluster) -> str:
    victim = next(a for a in c.nomad.job.get_allocations("data") if a["ClientStatus"] == "running")
    c.nomad.allocation.stop_allocation(victim["ID"])
    say(f"stopped data allocation {victim['ID'][:8]}; waiting for its replacement")
    wait(lambda: any(a["ClientStatus"] == "running" and a["ID"] != victim["ID"]
                     for a in c.nomad.job.get_allocations("data")), 180, "a replacement data allocation")
    wait(lambda: c.passing("data") > 0, 120, "the replacement passing in Consul")
    wait(c.routed, 60, "Traefik routing to it")  # at its next Consul Catalog refresh
    run_flow(c.base_url, c.admin_user, c.admin_password, verify=c.http_verify)
    return f"allocation {victim['ID'][:8]} stopped, replaced by Nomad; the flow passes again"


def canary_rollout(c: Cluster) -> str:
    token = c.token()
    dataset = _load_dataset(c, token, "canary.csv")
    tag = f"canary-{int(time.time())}"
    with LoadLoop(c, token, dataset) as load:
        time.sleep(2)
        outcome = deploy.deploy_one(c.nomad, c.job_dir / "data.nomad.hcl", c.var_files,
                                       [*c.variables, f"version_tag={tag}"], promote=True, timeout=c.deploy_timeout)
        # The update is over when the old allocations are gone and Traefik has seen it.
        if outcome.ok:
            wait(lambda: _only_newest_running(c, "data"), 120, "the old data allocations stopped")
            time.sleep(5)
    assert outcome.ok, outcome.reason
    assert not load.failures, f"{len(load.failures)} failed requests: {load.failures[:5]}"
    assert load.ok > 0, "the load loop made no request"
    return f"data job changed -> canary -> {outcome.reason}; {load.ok} requests during the update, 0 failed"


def _only_newest_running(c: Cluster, job: str) -> bool:
    allocs = c.nomad.job.get_allocations(job)
    newest = max(a["JobVersion"] for a in allocs)
    return not any(a["ClientStatus"] == "running" and a["JobVersion"] != newest for a in allocs)


def lease_revocation(c: Cluster) -> str:
    ttl = int(c.vault.read("database/roles/data")["data"]["default_ttl"])
    if ttl > MAX_HEALABLE_TTL:
        raise Skipped(
            f"database role data has default_ttl {ttl}s: Nomad's template would notice a revoked lease only at "
            f"its next renewal (~{ttl * 2 // 3}s), longer than requests wait; bootstrap with --default-ttl 30s "
            "to run this fault")
    token = c.token()
    dataset = _load_dataset(c, token, "revoke.csv")
    old = c.data_leases()
    def data_users() -> set[str]:
        return {u for u in c.db_users() if "-data-" in u} if c.db_users else set()

    old_users = data_users()
    with LoadLoop(c, token, dataset, timeout=60) as load:
        time.sleep(2)
        for lease in old:
            c.vault.sys.revoke_lease(lease_id=DATA_LEASES + lease)
        revoked = time.monotonic()
        say(f"revoked {len(old)} data lease(s); waiting for Nomad to render a fresh credential")
        wait(lambda: c.data_leases() - old, 120, "a new lease under database/creds/data")
        if c.db_users is not None:
            wait(lambda: data_users() - old_users, 60, "a fresh data user connected")
        healed = time.monotonic() - revoked
        time.sleep(3)
    assert not c.data_leases() & old, "a revoked lease is still listed"
    if c.db_users is not None:
        assert not data_users() & old_users, f"a revoked user is still connected: {data_users() & old_users}"
    assert not load.failures, f"{len(load.failures)} failed requests: {load.failures[:5]}"
    _load_dataset(c, token, "after-revoke.csv")  # writes work on the new credential too
    waited = _log_count(c, "data", "database credential rejected")
    return (f"{len(old)} data lease(s) revoked; fresh credential in {healed:.0f}s (lease TTL {ttl}s); "
            f"{load.ok} requests meanwhile, 0 failed ({waited} connection(s) waited for the new "
            "credential, per the data logs); writes work")


def _log_count(c: Cluster, job: str, needle: str) -> int | str:
    """How often the running allocations of `job` logged `needle` (their stdout, JSON logs)."""
    count = 0
    try:
        for alloc in c.nomad.job.get_allocations(job):
            if alloc["ClientStatus"] != "running":
                continue
            for task in alloc.get("TaskStates") or {}:
                count += deploy.task_log(c.nomad, alloc["ID"], task, "stdout", 200_000).count(needle)
    except Exception as exc:  # logs need the read-logs capability; the check itself passed
        return f"unknown ({type(exc).__name__})"
    return count


# ---- faults of a secured multi-node cluster ---------------------------------------------

PROBE_JOB = "acl-probe"
# Runs on a client (raw_exec, the node's datalab virtualenv) with the probe job's own
# workload identities; prints what each call got. Tokens stay in its environment.
PROBE_SCRIPT = r"""
import json, os, httpx
vault, consul = os.environ["PROBE_VAULT_ADDR"], os.environ["PROBE_CONSUL_ADDR"]
jwt = os.environ["NOMAD_TOKEN_vault_probe"]
out = {}
with httpx.Client(verify=os.environ["NOMAD_TASK_DIR"] + "/ca.pem", timeout=15) as v:
    login = f"{vault}/v1/auth/jwt-nomad/login"
    out["vault login as nomad-viz"] = v.post(login, json={"role": "nomad-viz", "jwt": jwt}).status_code
    r = v.post(login, json={"jwt": jwt})
    out["vault login (default role)"] = r.status_code
    token = r.json()["auth"]["client_token"] if r.status_code == 200 else ""
    out["vault policies"] = r.json()["auth"]["policies"] if token else []
    for path in ("kv/data/datalab/gateway", "kv/data/datalab/shared", "kv/data/datalab/redis/worker",
                 "database/creds/data"):
        out[f"vault read {path}"] = v.get(f"{vault}/v1/{path}", headers={"X-Vault-Token": token}).status_code
with httpx.Client(timeout=15) as c:
    h = {"X-Consul-Token": os.environ.get("CONSUL_HTTP_TOKEN", "")}
    out["consul token"] = bool(h["X-Consul-Token"])
    out["consul kv write"] = c.put(f"{consul}/v1/kv/datalab/acl-probe", content=b"x", headers=h).status_code
    out["consul register service data"] = c.put(f"{consul}/v1/agent/service/register", headers=h,
        json={"Name": "data", "ID": "acl-probe-data", "Port": 1}).status_code
print("ACL-PROBE " + json.dumps(out), flush=True)
"""


def _probe_job(consul_addr: str, vault_addr: str, ca_pem: str, venv: str) -> str:
    script = PROBE_SCRIPT.replace("${", "$${").replace("%{", "%%{")
    ca = ca_pem.replace("${", "$${").replace("%{", "%%{")
    return f"""
job "{PROBE_JOB}" {{
  type = "batch"
  group "probe" {{
    restart {{
      attempts = 0
      mode     = "fail"
    }}
    reschedule {{
      attempts  = 0
      unlimited = false
    }}
    task "probe" {{
      driver = "raw_exec"
      config {{
        command = "{venv}/bin/python"
        args    = ["${{NOMAD_TASK_DIR}}/probe.py"]
      }}
      # Its own identities only: one for Vault's JWT login, its Consul token (task identity).
      identity {{
        name = "vault_probe"
        aud  = ["vault.io"]
        env  = true
        ttl  = "10m"
      }}
      consul {{}}
      env {{
        PROBE_VAULT_ADDR  = "{vault_addr}"
        PROBE_CONSUL_ADDR = "{consul_addr}"
      }}
      template {{
        destination     = "local/probe.py"
        left_delimiter  = "[[[["
        right_delimiter = "]]]]"
        data            = <<-EOT
{script}
        EOT
      }}
      template {{
        destination     = "local/ca.pem"
        left_delimiter  = "[[[["
        right_delimiter = "]]]]"
        data            = <<-EOT
{ca}
        EOT
      }}
      resources {{
        cpu    = 100
        memory = 128
      }}
    }}
  }}
}}
"""


def _status(call: Callable[[], httpx.Response]) -> int:
    try:
        return call().status_code
    except httpx.HTTPError as exc:
        raise AssertionError(f"{type(exc).__name__}: {exc}") from None


def acl_denied(c: Cluster) -> str:
    if c.nomad_env is None or c.vault_env is None:
        raise Skipped("no Nomad/Vault environment given (datalab cluster-test sets them)")
    seen: dict[str, object] = {}
    # Plain HTTP clients with no token at all (python-nomad would fall back to NOMAD_TOKEN).
    nomad_addr = c.nomad_env.address
    with httpx.Client(verify=c.nomad_env.verify, timeout=10) as anonymous:
        seen["nomad GET /v1/jobs"] = _status(lambda: anonymous.get(f"{nomad_addr}/v1/jobs"))
        seen["nomad GET /v1/acl/tokens"] = _status(lambda: anonymous.get(f"{nomad_addr}/v1/acl/tokens"))
    # A key that exists (written with the operator's token, removed after): KV reads of
    # missing keys answer 404 whoever asks.
    key = f"{c.consul_addr}/v1/kv/datalab/acl-check"
    operator = {"X-Consul-Token": c.consul_token} if c.consul_token else {}
    with httpx.Client(verify=c.consul_verify, timeout=10) as consul:
        consul.put(key, content=b"operator", headers=operator).raise_for_status()
        try:
            seen["consul GET /v1/kv/datalab/acl-check"] = _status(lambda: consul.get(key))
            seen["consul PUT /v1/kv/datalab/acl-check"] = _status(lambda: consul.put(key, content=b"x"))
            r = consul.get(f"{c.consul_addr}/v1/catalog/services")
            seen["consul catalog services visible"] = sorted(set(r.json()) & {*SERVICES, "postgres", "vault"}) \
                if r.status_code == 200 else r.status_code
        finally:
            consul.delete(key, headers=operator)
    vault_url = c.vault_env.url
    with httpx.Client(verify=c.vault_env.verify, timeout=10) as vault:
        for path in ("kv/data/datalab/gateway", "database/creds/data", f"{EDGE_PKI_MOUNT}/issue/traefik"):
            url = f"{vault_url}/v1/{path}"
            seen[f"vault GET {path}"] = _status(lambda url=url: vault.get(url))  # type: ignore[misc]
    bad = {k: v for k, v in seen.items() if v not in (403, [])}
    assert not bad, f"anonymous calls not refused: {bad}"

    probe = _run_probe(c)
    wanted = {"vault login as nomad-viz": (400, 403), "vault login (default role)": (200,),
              "consul token": (True,), "consul kv write": (403,), "consul register service data": (403,)}
    wanted |= {k: (403,) for k in probe if k.startswith("vault read ")}
    wrong = {k: probe.get(k) for k, ok in wanted.items() if probe.get(k) not in ok}
    if [p for p in probe.get("vault policies", []) if p != "default"]:
        wrong["vault policies"] = probe["vault policies"]
    assert not wrong, f"the probe job's identity got what it must not: {wrong} (all: {probe})"
    return (f"anonymous: {len(seen)} calls refused (Nomad, Consul, Vault); job {PROBE_JOB}'s own identity: "
            f"nomad-viz role refused ({probe['vault login as nomad-viz']}), default role -> "
            f"{probe['vault policies']}, {sum(k.startswith('vault read') for k in probe)} other services' "
            "Vault paths 403, Consul KV write 403, registering as data 403")


def _run_probe(c: Cluster) -> dict:
    assert c.vault_env is not None
    ca_pem = Path(c.vault_env.verify).read_text() if isinstance(c.vault_env.verify, str) else ""
    if not ca_pem:
        raise Skipped("VAULT_CACERT is not set: the probe job needs the CA of Vault's certificate")
    venv = next((v.split("=", 1)[1] for v in c.variables if v.startswith("venv=")), "/opt/datalab/.venv")
    hcl = _probe_job("http://127.0.0.1:8500", c.vault_env.url, ca_pem, venv)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"{PROBE_JOB}.nomad.hcl"
        path.write_text(hcl)
        job = deploy.parse_job(c.nomad, path, [], [])
    c.nomad.job.register_job(PROBE_JOB, {"Job": job})
    try:
        def finished() -> dict | None:
            done = [a for a in c.nomad.job.get_allocations(PROBE_JOB) if a["ClientStatus"] in ("complete", "failed")]
            return done[0] if done else None

        alloc = wait(finished, 180, f"the {PROBE_JOB} job to finish")
        log = deploy.task_log(c.nomad, alloc["ID"], "probe", "stdout", 100_000)
        line = next((ln for ln in log.splitlines() if ln.startswith("ACL-PROBE ")), None)
        if line is None:
            err = deploy.task_log(c.nomad, alloc["ID"], "probe", "stderr", 4_000)
            raise AssertionError(f"the probe printed nothing ({alloc['ClientStatus']}): {err[-600:]}")
        return json.loads(line.removeprefix("ACL-PROBE "))
    finally:
        c.nomad.job.deregister_job(PROBE_JOB, purge=True)


def vault_down(c: Cluster) -> str:
    faults = _faults(c)
    token = c.token()
    dataset = _load_dataset(c, token, "vault-down.csv")
    with LoadLoop(c, token, dataset, timeout=60) as load:
        time.sleep(2)
        faults("stop-vault")
        stopped = time.monotonic()
        try:
            c.vault.sys.read_health_status(method="GET")
            reachable = "still answering"
        except Exception as exc:
            reachable = type(exc).__name__
        assert reachable != "still answering", "Vault still answers after stop-vault"
        served_before = load.ok
        time.sleep(max(0.0, c.vault_down_seconds - (time.monotonic() - stopped)))
        down_for = time.monotonic() - stopped
        served_down = load.ok - served_before
        failed_down = len(load.failures)
        faults("start-vault")
        back = time.monotonic()
        old = c.data_leases()
        # Renewals resume: Nomad renews (or, past their TTL, replaces) the data service's lease.
        wait(lambda: _lease_renewed_since(c, back), 180, "a data lease renewed or issued after Vault came back")
        resumed = time.monotonic() - back
        time.sleep(5)
    assert not load.failures, f"{len(load.failures)} failed requests: {load.failures[:5]}"
    assert served_down > 0, "no request was served while Vault was down"
    _load_dataset(c, token, "after-vault.csv")
    run_flow(c.base_url, c.admin_user, c.admin_password, verify=c.http_verify)
    return (f"Vault down {down_for:.0f}s ({reachable}): {served_down} requests served meanwhile, {failed_down} failed; "
            f"back and unsealed: data lease renewed/issued {resumed:.0f}s later ({len(old)} lease(s) listed); "
            f"{load.ok} requests in all, 0 failed; the flow passes")


def _lease_renewed_since(c: Cluster, since_monotonic: float) -> bool:
    since = datetime.now(UTC).timestamp() - (time.monotonic() - since_monotonic)
    for lease in c.data_leases():
        try:
            info = c.vault.sys.read_lease(lease_id=DATA_LEASES + lease)["data"]
        except hvac.exceptions.VaultError:
            continue
        stamp = info.get("last_renewal") or info.get("issue_time")
        if stamp and datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp() > since:
            return True
    return False


def _nodes(c: Cluster) -> list[dict]:
    return [n for n in c.nomad.nodes.get_nodes() if n.get("Status") == "ready"]


def _running_jobs_on(c: Cluster, node_id: str) -> set[str]:
    return {a["JobID"] for a in c.nomad.node.get_allocations(node_id) if a["ClientStatus"] == "running"}


STATEFUL = {"postgres", "redis"}


def client_stop(c: Cluster) -> str:
    faults = _faults(c)
    edge_host = urlsplit(c.base_url).hostname
    clients = _nodes(c)
    if len(clients) < 2:
        raise Skipped(f"{len(clients)} ready client(s): nowhere to reschedule")
    candidates = [n for n in clients if not _running_jobs_on(c, n["ID"]) & STATEFUL]
    # Not the client whose Traefik the checks go through, when another will do.
    candidates.sort(key=lambda n: n.get("Address") == edge_host)
    if not candidates:
        raise Skipped("every client runs postgres or redis (set stateful_node): stopping one loses their data")
    victim = candidates[0]
    moved = sorted(_running_jobs_on(c, victim["ID"]) - {"traefik"})
    if not set(moved) & set(SERVICES):
        raise AssertionError(f"{victim['Name']} runs no DataLab service ({moved}): nothing would be rescheduled "
                             "(a count of 2 spreads one instance per client: jobs/vars/cluster.hcl)")
    base_url = c.base_url
    if victim.get("Address") == edge_host:  # go through a surviving client's Traefik
        other = next(n for n in clients if n["ID"] != victim["ID"])
        base_url = c.base_url.replace(edge_host or "", other["Address"], 1)
    faults("stop-node", victim["Name"])
    stopped = time.monotonic()
    try:
        wait(lambda: c.nomad.node.get_node(victim["ID"])["Status"] == "down", 180,
             f"Nomad to mark {victim['Name']} down")
        down = time.monotonic() - stopped

        def replaced() -> bool:
            return all(any(a["ClientStatus"] == "running" and a["NodeID"] != victim["ID"]
                           for a in c.nomad.job.get_allocations(job)) for job in moved)

        wait(replaced, 300, f"{', '.join(moved)} running on another client")
        wait(lambda: all(c.passing(s) > 0 for s in SERVICES), 180, "every service passing again")
        flowed = wait(lambda: _flow_passes(c, base_url), 180, "the flow through Traefik again", interval=5)
        healed = time.monotonic() - stopped
    finally:
        faults("start-node", victim["Name"])
    wait(lambda: c.nomad.node.get_node(victim["ID"])["Status"] == "ready", 300, f"{victim['Name']} ready again")
    # Whole again for the next check: its Traefik (a system job) serving on it too, and
    # believed by the services again (their trusted_proxies re-render from Consul).
    wait(lambda: c.passing("traefik") >= len(clients), 180, f"Traefik passing on {victim['Name']} again")
    wait(lambda: _flow_passes(c, c.base_url), 120, f"the flow through {c.base_url} again", interval=5)
    return (f"{victim['Name']} stopped: marked down in {down:.0f}s; {', '.join(moved) or 'nothing'} rescheduled "
            f"on the other client(s); the flow passes again {healed:.0f}s after the stop "
            f"({len(flowed.steps)} steps); {victim['Name']} back and ready")


def _flow_passes(c: Cluster, base_url: str):
    try:
        return run_flow(base_url, c.admin_user, c.admin_password, verify=c.http_verify)
    except Exception as exc:
        say(f"flow not yet: {type(exc).__name__}: {str(exc)[:160]}")
        return None


def leader_stop(c: Cluster) -> str:
    faults = _faults(c)
    if c.nomad_env is None:
        raise Skipped("no Nomad environment given (datalab cluster-test sets it)")
    servers = [m for m in c.nomad.agent.get_members()["Members"] if m.get("Status") == "alive"]
    if len(servers) < 3:
        raise Skipped(f"{len(servers)} Nomad server(s): stopping the leader leaves no quorum (DATALAB_SERVERS=3)")
    leader_addr = c.nomad.status.leader.get_leader()
    leader = next(m for m in servers if f"{m['Addr']}:{m['Tags']['port']}" == leader_addr)
    node = leader["Name"].split(".")[0]  # server1.global
    # Ask a server that stays up (NOMAD_ADDR may be the leader's): same scheme, port and CA.
    ours = urlsplit(c.nomad_env.address)
    survivor = next(m["Addr"] for m in servers if m["Name"] != leader["Name"])
    via = dataclasses.replace(c.nomad_env, address=f"{ours.scheme}://{survivor}:{ours.port or 4646}").client()
    running = {j["ID"] for j in via.jobs.get_jobs() if j["Status"] == "running"}
    token = c.token()
    dataset = _load_dataset(c, token, "leader.csv")
    with LoadLoop(c, token, dataset, timeout=30) as load:
        time.sleep(3)
        faults("stop-node", node)
        stopped = time.monotonic()
        try:
            def new_leader() -> str | None:
                try:
                    now = via.status.leader.get_leader()
                except nomad.api.exceptions.BaseNomadException:  # no leader yet
                    return None
                return now if now and now != leader_addr else None

            elected = wait(new_leader, 120, "a new Nomad leader")
            took = time.monotonic() - stopped
            time.sleep(20)  # the load goes on, the survivors lead
            still = {j["ID"] for j in via.jobs.get_jobs() if j["Status"] == "running"}
        finally:
            faults("start-node", node)
        wait(lambda: sum(m.get("Status") == "alive" for m in via.agent.get_members()["Members"]) >= len(servers),
             180, f"{node} back in the Nomad cluster")
        time.sleep(3)
    assert running <= still, f"jobs no longer running: {sorted(running - still)}"
    assert not load.failures, f"{len(load.failures)} failed requests: {load.failures[:5]}"
    assert load.ok > 0, "the load loop made no request"
    return (f"leader {node} ({leader_addr}) stopped: new leader {elected} in {took:.1f}s; {len(running)} jobs kept "
            f"running; {load.ok} requests through Traefik meanwhile, 0 failed; {node} back")


CHECKS: list[tuple[str, Callable[[Cluster], str]]] = [
    ("services", services_passing),
    ("flow", flow),
    ("edge-tls", edge_tls),
    ("vault-credentials", vault_credentials),
    ("reschedule", reschedule),        # fault: an allocation stopped
    ("canary", canary_rollout),        # fault: a changed job rolled out
    ("revoke-lease", lease_revocation),  # fault: Vault revokes the data service's leases
    ("acl-denied", acl_denied),        # anonymous calls, a job's own identity
    ("vault-down", vault_down),        # fault: Vault stopped for 2 minutes
    ("client-stop", client_stop),      # fault: a client node stopped
    ("leader-stop", leader_stop),      # fault: the Nomad leader's server stopped
]
# What a one-machine dev stack (make e2e: no ACLs, one node, -dev agents) cannot run.
CLUSTER_ONLY = ("acl-denied", "vault-down", "client-stop", "leader-stop")


def run_checks(c: Cluster, only: list[str] | None = None, skips_fail: bool = False) -> tuple[bool, list[str]]:
    """Run the checks in order; stop at the first failure. Returns (passed, summary lines).
    A check that cannot run here says SKIP and why; `skips_fail` makes that a failure."""
    lines: list[str] = []
    for name, check in CHECKS:
        if only and name not in only:
            continue
        started = time.monotonic()
        try:
            detail = check(c)
        except Skipped as why:
            lines.append(f"SKIP {name}: {why}")
            say("!!! " + lines[-1])
            if skips_fail:
                return False, lines
            continue
        except Exception as exc:  # report and stop: the later checks build on this one
            lines.append(f"FAIL {name}: {type(exc).__name__}: {exc}")
            say(lines[-1])
            return False, lines
        lines.append(f"PASS {name} ({time.monotonic() - started:.0f}s): {detail}")
        say(lines[-1])
    return True, lines


# ---- `datalab cluster-test` ----------------------------------------------------------------

def add_arguments(p) -> None:
    p.add_argument("--url", default=os.environ.get("DATALAB_URL", "http://127.0.0.1:8080"),
                   help="Traefik's entrypoint (default: DATALAB_URL or http://127.0.0.1:8080)")
    p.add_argument("--cacert", default=os.environ.get("DATALAB_CACERT"),
                   help="CA bundle for the edge's TLS (default: DATALAB_CACERT; system CAs otherwise)")
    p.add_argument("--var-file", action="append", default=[],
                   help="the var-files the jobs were deployed with (default: jobs/vars/vagrant.hcl)")
    p.add_argument("--var", action="append", default=[], help="key=value the jobs were deployed with")
    p.add_argument("--jobs-dir", default="jobs", type=Path)
    p.add_argument("--check", action="append", choices=[name for name, _ in CHECKS],
                   help="run only these checks (repeatable; default: all, in order)")
    p.add_argument("--timeout", type=float, default=600, help="seconds per deployment (canary fault)")
    p.add_argument("--fault-command", default=os.environ.get("DATALAB_FAULT_COMMAND"),
                   help="how this cluster stops/starts a node or Vault: called as CMD stop-node NODE, "
                   "start-node NODE, stop-vault, start-vault (make cluster: 'scripts/cluster fault'; default: "
                   "DATALAB_FAULT_COMMAND); without it those faults are skipped, saying so")
    p.add_argument("--vault-down", type=float, default=120, help="seconds Vault stays down (vault-down fault)")
    p.add_argument("--strict", action="store_true", help="a check that cannot run here fails the run (make cluster)")


# What each check calls besides Traefik: the preflight asks only those.
NEEDS = {"services": {"consul"}, "edge-tls": {"vault"}, "vault-credentials": {"vault"},
         "reschedule": {"nomad", "consul"}, "canary": {"nomad"}, "revoke-lease": {"vault", "nomad"},
         "acl-denied": {"nomad", "consul", "vault"}, "vault-down": {"vault"}, "client-stop": {"nomad", "consul"},
         "leader-stop": {"nomad"}}


def preflight(c: Cluster, nomad_env: NomadEnv, consul_env: ConsulEnv, vault_env: VaultEnv,
              needed: set[str]) -> None:
    """One cheap call to each product the checks need, so that an unreachable agent, a TLS
    failure or a refused token is one line naming the address and what to set, before any
    check starts. Raises ClusterAccessError."""
    calls = {
        "nomad": (lambda: c.nomad.jobs.get_jobs(), nomad_env.access_error),
        "consul": (lambda: c.passing("traefik"), consul_env.access_error),
        "vault": (lambda: c.vault.auth.token.lookup_self(), vault_env.access_error),
    }
    for product in ("nomad", "consul", "vault"):
        if product not in needed:
            continue
        call, explain = calls[product]
        try:
            call()
        except Exception as exc:
            denied = explain(exc)
            if denied is not None:
                raise denied from None
            raise


def run(args) -> int:
    """Everything from the environment HashiCorp's own CLIs read (core/nomad_api.py,
    ops/hashicorp_env.py: NOMAD_ADDR/NOMAD_TOKEN/NOMAD_CACERT..., CONSUL_HTTP_ADDR/
    CONSUL_HTTP_TOKEN/CONSUL_CACERT..., VAULT_ADDR/VAULT_TOKEN/VAULT_CACERT...). The admin
    password: DATALAB_ADMIN_PASSWORD, else Vault's kv/datalab/gateway."""
    checks = args.check or [name for name, _ in CHECKS]
    needed = set().union(*(NEEDS.get(name, set()) for name in checks))
    try:
        nomad_env, consul_env, vault_env = NomadEnv.from_env(), ConsulEnv.from_env(), VaultEnv.from_env()
        vault_client = vault_env.client()
        password = os.environ.get("DATALAB_ADMIN_PASSWORD")
        if not password:
            try:
                password = vault_client.secrets.kv.v2.read_secret_version(
                    path="datalab/gateway", mount_point="kv", raise_on_deleted_version=True,
                )["data"]["data"]["admin_password"]
            except Exception as exc:
                denied = vault_env.access_error(exc)
                if denied is not None:
                    raise denied from None
                raise
        cluster = Cluster(
            base_url=args.url, admin_password=str(password), nomad=nomad_env.client(), vault=vault_client,
            consul_addr=consul_env.url, consul_token=consul_env.token, consul_verify=consul_env.ssl_context(),
            consul_server_name=consul_env.tls_server_name, http_verify=args.cacert or True,
            job_dir=args.jobs_dir, variables=args.var, deploy_timeout=args.timeout,
            var_files=[Path(f) for f in args.var_file] or [args.jobs_dir / "vars" / "vagrant.hcl"],
            nomad_env=nomad_env, vault_env=vault_env, vault_down_seconds=args.vault_down,
            faults=Faults(shlex.split(args.fault_command)) if args.fault_command else None,
        )
        preflight(cluster, nomad_env, consul_env, vault_env, needed)
    except ClusterAccessError as exc:
        print(f"datalab cluster-test: {exc}", file=sys.stderr, flush=True)
        return 1
    say(f"cluster-test against {args.url} (Nomad {nomad_env.address}, Consul {consul_env.url}, Vault {vault_env.url})")
    passed, lines = run_checks(cluster, args.check, skips_fail=args.strict)
    print("\n".join(["", "cluster-test summary:", *(f"  {line}" for line in lines),
                     f"  {'PASS' if passed else 'FAIL'}"]), flush=True)
    return 0 if passed else 1
