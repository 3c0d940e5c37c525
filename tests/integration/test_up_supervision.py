"""`datalab up` never leaves servers behind: a second Ctrl-C while stopping, a SIGKILLed
launcher, a leftover of an earlier run in the same home. Real processes throughout:
`datalab up` with the gateway, compute and a worker on free ports in a temporary home."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest

from datalab.devstack.servers import free_ports, port_open

pytestmark = pytest.mark.integration

SERVICES = ["gateway", "compute"]  # compute brings a worker: a grandchild tree to clean up


@pytest.fixture()
def home():
    home = Path(tempfile.mkdtemp(prefix="datalab-sup-"))
    os.chmod(home, 0o755)  # PostgreSQL runs as an unprivileged user when we are root
    yield home
    shutil.rmtree(home, ignore_errors=True)


def up_env(home: Path) -> tuple[dict, dict[str, int]]:
    names = ["HTTP", "TRAEFIK_PING", "POSTGRES", "REDIS", "WORKER_METRICS", *(s.upper() for s in SERVICES)]
    ports = dict(zip(names, free_ports(len(names)), strict=True))
    env = {k: v for k, v in os.environ.items() if not k.startswith("DATALAB_")}
    env.update({f"DATALAB_{k}_PORT": str(v) for k, v in ports.items()})
    env.update({"DATALAB_HOME": str(home), "DATALAB_SERVICES": ",".join(SERVICES)})
    return env, ports


class Up:
    def __init__(self, env: dict):
        self.proc = subprocess.Popen([sys.executable, "-m", "datalab.cli", "up"], env=env,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.lines: list[str] = []

    def wait_for(self, prefix: str, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                raise AssertionError(f"datalab up exited before {prefix!r}:\n{self.output}")
            self.lines.append(line)
            if line.startswith(prefix):
                return
        raise AssertionError(f"no {prefix!r} after {timeout}s:\n{self.output}")

    def finish(self, timeout: float = 90) -> int:
        rest, _ = self.proc.communicate(timeout=timeout)
        self.lines.append(rest)
        return self.proc.returncode

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def children(self) -> list[psutil.Process]:
        kids = psutil.Process(self.proc.pid).children(recursive=True)
        names = " ".join(" ".join(k.cmdline()) for k in kids)
        for part in ("postgres", "serve gateway", "serve compute", "cli worker", "traefik"):
            assert part in names, f"{part} is not running under datalab up: {names}"
        return kids


def assert_all_gone(kids: list[psutil.Process], ports: dict[str, int], home: Path | None) -> None:
    """Every child gone, every port free, and (home given: a clean stop) no pid file left."""
    try:
        _, alive = psutil.wait_procs(kids, timeout=30)
        assert alive == [], f"outlived datalab up: {[(p.pid, p.cmdline()) for p in alive]}"
        held = {name: port for name, port in ports.items() if port_open(port)}
        assert held == {}, f"ports still held: {held}"
        if home is not None:
            assert sorted(p.name for p in (home / "run").glob("*.pid")) == []
    finally:  # never leave a server of this test behind, whatever failed
        for p in kids:
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass


def test_a_second_ctrl_c_while_stopping_still_stops_everything(home):
    env, ports = up_env(home)
    up = Up(env)
    up.wait_for("Ctrl-C stops everything")
    kids = up.children()
    up.proc.send_signal(signal.SIGINT)
    up.wait_for("DataLab: stopping")  # the stop is under way: now the impatient second one
    up.proc.send_signal(signal.SIGINT)
    code = up.finish()
    assert_all_gone(kids, ports, home)
    assert "Traceback" not in up.output and "DataLab: stopped." in up.output, up.output
    assert code == 0, up.output


def test_children_die_with_a_sigkilled_launcher(home):
    env, ports = up_env(home)
    up = Up(env)
    up.wait_for("Ctrl-C stops everything")
    kids = up.children()
    up.proc.kill()  # no handler runs: only the kernel can end the children
    up.finish()
    assert_all_gone(kids, ports, None)  # its pid files stay: the next start reads them


HOLDER = """
import socket, sys, time
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(sys.argv[1]))); s.listen(); print("listening", flush=True); time.sleep(600)
"""


def hold_port(port: int) -> subprocess.Popen:
    """A process of its own session listening on `port`, as a server a dead launcher left."""
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(port)], stdout=subprocess.PIPE, text=True,
                            start_new_session=True)
    assert proc.stdout.readline().strip() == "listening"
    return proc


def test_the_next_start_stops_a_leftover_of_an_earlier_run(home):
    env, ports = up_env(home)
    leftover = hold_port(ports["POSTGRES"])  # PostgreSQL's port: it once failed to bind on it
    try:
        (home / "run").mkdir()
        (home / "run/postgres.pid").write_text(f"{leftover.pid} {psutil.Process(leftover.pid).create_time()}\n")
        up = Up(env)
        up.wait_for("Ctrl-C stops everything")
        assert leftover.wait(10) is not None  # stopped (by its pid file), not waited out
        assert f"stopped postgres (pid {leftover.pid})" in up.output, up.output
        kids = up.children()
        up.proc.send_signal(signal.SIGTERM)
        assert up.finish() == 0, up.output
        assert_all_gone(kids, ports, home)
    finally:
        leftover.kill()
        leftover.wait()


def test_a_port_held_by_a_stranger_is_named_not_taken(home):
    env, ports = up_env(home)
    stranger = hold_port(ports["REDIS"])  # no pid file: not ours to stop
    try:
        up = Up(env)
        code = up.finish(timeout=60)
        assert code == 1, up.output
        assert f"port {ports['REDIS']} (redis) is held by pid {stranger.pid}" in up.output, up.output
        assert stranger.poll() is None  # left alone
        assert "Traceback" not in up.output, up.output
    finally:
        stranger.kill()
        stranger.wait()
