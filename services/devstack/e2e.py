"""`make e2e`: every job deployed for real on this machine, then the flow and the faults.

Real agents on loopback: Consul and Nomad (built from Go modules), OpenBao (Vault's API);
PostgreSQL and Redis as host processes registered in Consul under the names the jobs look
up (the `postgres`/`redis` jobs need Docker, which this machine lacks; Nomad still
validates them). `datalab vault bootstrap` runs with Nomad's real JWKS, `datalab deploy`
registers the jobs with jobs/vars/local.hcl (raw_exec, tasks as the unprivileged user
`datalab`, from a deploy virtualenv built with the system Python so that user can run it).
"""

from __future__ import annotations

import argparse
import json
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import asyncpg
import httpx
import hvac

from datalab.hashicorp import nomad as nomad_cli
from datalab.hashicorp import vault

from .flow import run_flow
from .hashistack import REPO, ConsulDev, NomadDev, OpenBaoDev
from .servers import Postgres, Redis, free_port

RUN_AS = "datalab"
SERVICES = ["gateway", "data", "ai", "compute", "viz"]
DEPLOY_ORDER = ["traefik", "gateway", "data", "ai", "compute", "viz", "compute-batch"]


def say(msg: str) -> None:
    print(f"[e2e] {msg}", flush=True)


def ensure_user(name: str) -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(name)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name], check=True)
        return pwd.getpwnam(name)


def build_deploy_venv(target: Path) -> Path:
    """What a host would install: the project (not editable) in a virtualenv made from a
    Python every user can run (root's pyenv under /root is not)."""
    uv = REPO / ".tools" / "uv" / "bin" / "uv"
    python = shutil.which("python3", path="/usr/local/bin:/usr/bin:/bin") or sys.executable
    env = {**os.environ, "UV_PYTHON_DOWNLOADS": "never"}
    subprocess.run([str(uv), "venv", "-q", "--allow-existing", "-p", python, str(target)], check=True, env=env)
    subprocess.run([str(uv), "pip", "install", "-q", "--python", str(target / "bin" / "python"),
                    f"{REPO}[embedded]"], check=True, env=env)
    return target


def consul_register(consul: ConsulDev, name: str, port: int) -> None:
    body = {"Name": name, "ID": name, "Address": "127.0.0.1", "Port": port,
            "Check": {"TCP": f"127.0.0.1:{port}", "Interval": "5s", "Timeout": "2s"}}
    req = urllib.request.Request(f"{consul.address}/v1/agent/service/register", data=json.dumps(body).encode(),
                                 method="PUT")
    urllib.request.urlopen(req, timeout=5).read()


def passing(consul: ConsulDev, name: str) -> int:
    with urllib.request.urlopen(f"{consul.address}/v1/health/service/{name}?passing=1", timeout=5) as resp:
        return len(json.loads(resp.read()))


def wait(check, timeout: float, what: str, interval: float = 1.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s: {what}")


class LoadLoop:
    """A small bounded load through Traefik while something changes; counts failures."""

    def __init__(self, base: str, token: str, dataset: str, threads: int = 2, max_requests: int = 5000):
        self.url = f"{base}/api/v1/data/datasets/{dataset}/query"
        self.auth = {"Authorization": f"Bearer {token}"}
        self.max = max_requests
        self.stop = threading.Event()
        self.ok = 0
        self.failures: list[str] = []
        self.threads = [threading.Thread(target=self._run, args=(i,)) for i in range(threads)]

    def _run(self, n: int) -> None:
        with httpx.Client(timeout=10) as http:
            for i in range(self.max):
                if self.stop.is_set():
                    return
                try:
                    r = http.post(self.url, headers=self.auth, json={"limit": 1 + (i + n) % 50})
                    if r.status_code == 200:
                        self.ok += 1
                    else:
                        self.failures.append(f"HTTP {r.status_code}: {r.text[:120]}")
                except httpx.HTTPError as exc:
                    self.failures.append(type(exc).__name__)
                time.sleep(0.3)  # ~400 requests/min in all: under the gateway's per-user limit

    def __enter__(self) -> LoadLoop:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(30)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--keep", action="store_true", help="leave everything running (debugging)")
    parser.add_argument("--timeout", type=float, default=240, help="seconds per job deployment")
    args = parser.parse_args(argv)

    root = Path(tempfile.mkdtemp(prefix="datalab-e2e-"))
    os.chmod(root, 0o755)
    user = ensure_user(RUN_AS)
    home = root / "home"
    home.mkdir()
    os.chown(home, user.pw_uid, user.pw_gid)
    started: list = []
    summary: list[str] = []
    try:
        say("building the deploy virtualenv")
        venv = build_deploy_venv(REPO / ".tools" / "deploy-venv")

        consul, bao = ConsulDev(root / "consul"), OpenBaoDev(root / "openbao")
        pg, redis = Postgres(root / "postgres", free_port()), None
        for agent in (consul, bao, pg):
            agent.start()
            started.append(agent)
        pg.execute("CREATE DATABASE datalab") if not pg.execute(
            "SELECT 1 FROM pg_database WHERE datname = 'datalab'") else None
        import secrets as pysecrets

        redis = Redis(root / "redis", free_port(), pysecrets.token_urlsafe(24))
        redis.start()
        started.append(redis)
        consul_register(consul, "postgres", pg.port)
        consul_register(consul, "redis", redis.port)
        nomad = NomadDev(root / "nomad", consul, bao)
        nomad.start()
        started.append(nomad)
        summary += [consul.version(), bao.version().split(" (")[0], nomad.version(), pg.version(),
                    redis.version().split(" sha=")[0]]
        say("agents up: " + "; ".join(summary))

        say("vault bootstrap (with Nomad's JWKS)")
        client = hvac.Client(url=bao.address, token=bao.root_token)
        vault.bootstrap(client, vault.Options(pg_admin_url=pg.admin_url("datalab"), nomad_addr=nomad.address,
                                              redis_password=redis.password))
        admin_password = client.secrets.kv.v2.read_secret_version(
            path="datalab/gateway", mount_point="kv", raise_on_deleted_version=True)["data"]["data"]["admin_password"]

        http_port, ping_port = free_port(), free_port()
        variables = [
            f"venv={venv}", f"datalab_home={home}", f"consul_addr={consul.address}",
            f"run_as_uid={user.pw_uid}", f"run_as_gid={user.pw_gid}",
            f"ports={{ traefik_http = {http_port}, traefik_https = {free_port()}, traefik_ping = {ping_port} }}",
        ]
        var_files = [REPO / "jobs" / "vars" / "local.hcl"]
        api = nomad_cli.client(nomad.address)
        for job in DEPLOY_ORDER:
            outcome = nomad_cli.deploy_one(api, REPO / "jobs" / f"{job}.nomad.hcl", var_files, variables,
                                           promote=True, timeout=args.timeout)
            say(f"deploy {job}: {'OK' if outcome.ok else 'FAILED'} {outcome.reason}")
            if not outcome.ok:
                return 1
        for name in SERVICES + ["traefik"]:
            wait(lambda n=name: passing(consul, n) > 0, 120, f"{name} passing in Consul")
        say("every service passing in Consul")

        base = f"http://127.0.0.1:{http_port}"
        wait(lambda: httpx.get(f"{base}/api/v1/data/datasets").status_code == 401, 60, "Traefik routing by tags")
        report = run_flow(base, "admin", admin_password)
        say("platform flow through Traefik (routes from Consul tags):\n" + "\n".join(report.lines()))

        # The credentials in use were issued by Vault: a lease, and v-… users connected.
        leases = client.list("sys/leases/lookup/database/creds/data/")["data"]["keys"]
        users = pg.execute("SELECT DISTINCT usename FROM pg_stat_activity WHERE usename LIKE 'v-%'")
        names = sorted(u["usename"] for u in users)
        assert leases and any("data" in n for n in names), (leases, names)
        say(f"Vault-issued credentials: {len(leases)} data lease(s); connected users: {', '.join(names)}")
        summary.append(f"flow ok; {len(leases)} data leases; users {names}")

        # Fault 1: an allocation stops -> Nomad replaces it -> the flow passes again.
        victim = next(a for a in api.job.get_allocations("data") if a["ClientStatus"] == "running")
        api.allocation.stop_allocation(victim["ID"])
        say(f"stopped data allocation {victim['ID'][:8]}; waiting for its replacement")
        wait(lambda: any(a["ClientStatus"] == "running" and a["ID"] != victim["ID"]
                         for a in api.job.get_allocations("data")), 180, "a replacement data allocation")
        wait(lambda: passing(consul, "data") > 0, 120, "the replacement passing in Consul")
        # Traefik learns of it at its next Consul Catalog refresh.
        wait(lambda: httpx.get(f"{base}/api/v1/data/datasets").status_code == 401, 60, "Traefik routing to it")
        run_flow(base, "admin", admin_password)
        say("fault 1 (allocation stopped): replaced by Nomad, flow passes again")
        summary.append("reschedule ok")

        # Fault 2: a changed job rolls out as a canary, promoted, under a small load loop.
        token = httpx.post(f"{base}/api/v1/auth/token", data={"username": "admin", "password": admin_password})
        token = token.json()["access_token"]
        ds = httpx.post(f"{base}/api/v1/data/datasets", headers={"Authorization": f"Bearer {token}"},
                        files={"file": ("load.csv", b"a,b\n1,2\n3,4\n", "text/csv")}).json()["id"]
        with LoadLoop(base, token, ds) as load:
            time.sleep(2)
            outcome = nomad_cli.deploy_one(api, REPO / "jobs" / "data.nomad.hcl", var_files,
                                           variables + ["version_tag=2"], promote=True, timeout=args.timeout)
            time.sleep(2)
        assert outcome.ok, outcome.reason
        assert not load.failures, load.failures[:5]
        say(f"fault 2 (canary deploy of a changed data job): {outcome.reason}; "
            f"{load.ok} requests during the update, 0 failed")
        summary.append(f"canary rollout ok ({load.ok} requests, 0 failed)")
        say("PASS")
        return 0
    finally:
        if not args.keep:
            for agent in reversed(started):
                try:
                    agent.stop()
                except Exception as exc:  # keep tearing down
                    say(f"stopping {agent}: {exc}")
            shutil.rmtree(root, ignore_errors=True)
        say("summary: " + " | ".join(summary))


if __name__ == "__main__":
    sys.exit(main())
