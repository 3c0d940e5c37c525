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
import time
import urllib.request
from pathlib import Path

import hvac
import psutil

from datalab.core.redis_users import SERVICE_USERS
from datalab.core.services import SERVICES
from datalab.ops import deploy
from datalab.ops import vault_bootstrap as vault
from datalab.ops.cluster_checks import CHECKS, CLUSTER_ONLY, Cluster, run_checks

from .hashistack import REPO, ConsulDev, NomadDev, OpenBaoDev
from .servers import Postgres, Redis, free_ports

RUN_AS = "datalab"
# Deployed all at once (datalab deploy --parallel): no job waits on another to start.
DEPLOY_JOBS = ["traefik", *SERVICES, "compute-batch"]
LEASE_TTL = "15s"
RUN_MARKER = "DATALAB_E2E_RUN"


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--keep", action="store_true", help="leave everything running (debugging)")
    parser.add_argument("--timeout", type=float, default=240, help="seconds per job deployment")
    args = parser.parse_args(argv)

    root = Path(tempfile.mkdtemp(prefix="datalab-e2e-"))
    # Inherited by everything this run starts (PostgreSQL's backends included), so the
    # teardown check knows this run's processes from other runs' of the same user.
    os.environ[RUN_MARKER] = str(root)
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

        # Each set of ports is picked only once what started before is listening on its own,
        # so no port is handed out twice (a free port is free until someone binds it).
        consul = ConsulDev(root / "consul")
        consul.start()
        started.append(consul)
        bao = OpenBaoDev(root / "openbao")
        bao.start()
        started.append(bao)
        pg = Postgres(root / "postgres", free_ports(1)[0])
        pg.start()
        started.append(pg)
        pg.execute("CREATE DATABASE datalab") if not pg.execute(
            "SELECT 1 FROM pg_database WHERE datname = 'datalab'") else None
        consul_register(consul, "postgres", pg.port)
        nomad = NomadDev(root / "nomad", consul, bao)
        nomad.start()
        started.append(nomad)

        say("vault bootstrap (with Nomad's JWKS)")
        client = hvac.Client(url=bao.address, token=bao.root_token)
        # Short leases, so that Nomad's template (which renews at ~2/3 of the TTL) notices a
        # revoked lease within seconds in fault 3; production keeps the 1h default.
        vault.bootstrap(client, vault.Options(pg_admin_url=pg.admin_url("datalab"), nomad_addr=nomad.address,
                                              default_ttl=LEASE_TTL))
        # Redis with the ACL users bootstrap generated, as the redis job gets them from Vault.
        passwords = {user: json.loads(vault.kv_json(client, f"datalab/redis/{user}"))["password"]
                     for user in (*SERVICE_USERS, "admin")}
        redis = Redis(root / "redis", free_ports(1)[0], passwords)
        redis.start()
        started.append(redis)
        consul_register(consul, "redis", redis.port)
        traefik = subprocess.run([str(venv / "bin" / "traefik"), "version"], capture_output=True, text=True,
                                 check=True).stdout.split()
        summary += [consul.version(), bao.version().split(" (")[0], nomad.version(),
                    f"Traefik {traefik[traefik.index('Version:') + 1]}", pg.version(),
                    redis.version().split(" sha=")[0]]
        say("agents up, vault bootstrapped: " + "; ".join(summary))
        admin_password = client.secrets.kv.v2.read_secret_version(
            path="datalab/gateway", mount_point="kv", raise_on_deleted_version=True)["data"]["data"]["admin_password"]

        http_port, https_port, ping_port = free_ports(3)  # Traefik's, now that every agent listens
        variables = [
            f"venv={venv}", f"datalab_home={home}", f"consul_addr={consul.address}",
            f"run_as_uid={user.pw_uid}", f"run_as_gid={user.pw_gid}",
            f"ports={{ traefik_http = {http_port}, traefik_https = {https_port}, traefik_ping = {ping_port} }}",
        ]
        var_files = [REPO / "jobs" / "vars" / "local.hcl"]
        api = deploy.client(nomad.address)
        started_deploy = time.monotonic()
        outcomes = deploy.deploy_many(lambda: deploy.client(nomad.address),
                                         [REPO / "jobs" / f"{job}.nomad.hcl" for job in DEPLOY_JOBS], var_files,
                                         variables, promote=True, timeout=args.timeout, parallel=len(DEPLOY_JOBS))
        say(f"deployed {len(outcomes)} jobs in {time.monotonic() - started_deploy:.0f}s")
        if not all(o.ok for o in outcomes):
            return 1
        cluster = Cluster(
            base_url=f"http://127.0.0.1:{http_port}", tls_url=f"https://127.0.0.1:{https_port}",
            admin_password=admin_password, nomad=api, vault=client,
            consul_addr=consul.address, job_dir=REPO / "jobs", var_files=var_files, variables=variables,
            deploy_timeout=args.timeout, db_users=lambda: {
                r["usename"]
                for r in pg.execute("SELECT DISTINCT usename FROM pg_stat_activity WHERE usename LIKE 'v-%'")
            },
        )
        # This stack is made to run them all, but those a one-node dev stack has no shape for.
        say(f"not here (make cluster runs them): {', '.join(CLUSTER_ONLY)}")
        passed, lines = run_checks(cluster, [n for n, _ in CHECKS if n not in CLUSTER_ONLY], skips_fail=True)
        summary += lines
        if not passed:
            return 1
        # Every job ran as its own Redis ACL user: nothing it did may have been refused.
        if denied := redis.acl_denials():
            say(f"FAIL: Redis refused what a job did (core/redis_users.py lacks a rule): {denied}")
            return 1
        summary.append("redis: every job as its own ACL user, nothing refused")
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
        say("summary:\n  " + "\n  ".join(summary))
        if not args.keep:
            left = leftover_processes(root)
            if left:  # overrides the result: a run that leaks processes has not passed
                raise SystemExit(f"[e2e] teardown left processes running: {left}")
            say("teardown: no process of this run left (none marked by it, under its directory or from its virtualenv)")


def leftover_processes(root: Path) -> list[str]:
    """This run's processes still alive: named by its directory or deploy virtualenv on their
    command line, or carrying its marker. Another run's (a test platform's PostgreSQL, also
    as the `datalab` user) is not this run's leak."""
    left = []
    venv = str(REPO / ".tools" / "deploy-venv")
    for proc in psutil.process_iter(["pid", "username", "cmdline"]):
        if proc.info["pid"] == os.getpid():
            continue
        cmdline = " ".join(proc.info["cmdline"] or [])
        mine = str(root) in cmdline or venv in cmdline
        if not mine and proc.info["username"] == RUN_AS:
            try:
                mine = proc.environ().get(RUN_MARKER) == str(root)
            except psutil.AccessDenied:
                mine = True  # cannot tell: count it
            except psutil.NoSuchProcess:
                continue
        if mine:
            left.append(f"{proc.info['pid']} {cmdline[:80]}")
    return left


if __name__ == "__main__":
    sys.exit(main())
