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

Each prints PASS or FAIL with what it saw; the first failure stops the run (later checks
build on the earlier ones).
"""

from __future__ import annotations

import os
import socket
import ssl
import sys
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
    return "every service passing in Consul: " + ", ".join(f"{n}={counts[n]}" for n in SERVICES)


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


CHECKS: list[tuple[str, Callable[[Cluster], str]]] = [
    ("services", services_passing),
    ("flow", flow),
    ("edge-tls", edge_tls),
    ("vault-credentials", vault_credentials),
    ("reschedule", reschedule),        # fault: an allocation stopped
    ("canary", canary_rollout),        # fault: a changed job rolled out
    ("revoke-lease", lease_revocation),  # fault: Vault revokes the data service's leases
]


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


# What each check calls besides Traefik: the preflight asks only those.
NEEDS = {"services": {"consul"}, "edge-tls": {"vault"}, "vault-credentials": {"vault"},
         "reschedule": {"nomad", "consul"}, "canary": {"nomad"}, "revoke-lease": {"vault", "nomad"}}


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
        )
        preflight(cluster, nomad_env, consul_env, vault_env, needed)
    except ClusterAccessError as exc:
        print(f"datalab cluster-test: {exc}", file=sys.stderr, flush=True)
        return 1
    say(f"cluster-test against {args.url} (Nomad {nomad_env.address}, Consul {consul_env.url}, Vault {vault_env.url})")
    passed, lines = run_checks(cluster, args.check)
    print("\n".join(["", "cluster-test summary:", *(f"  {line}" for line in lines),
                     f"  {'PASS' if passed else 'FAIL'}"]), flush=True)
    return 0 if passed else 1
