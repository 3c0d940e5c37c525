"""What a server forks lives in its process group; when the server dies first (the kernel's
death signal after a SIGKILLed launcher), its children are reparented to init and are no
descendants any more. viz's render forkserver was seen to outlive its service this way. Real
processes, no doubles."""

from __future__ import annotations

import os
import signal
import sys
import time

import psutil

from datalab.devstack.servers import Process, stop_leftovers

# A "server" that forks a grandchild (same process group) and prints its pid.
FORKER = (
    "import subprocess, sys, time\n"
    "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(300)'])\n"
    "print(child.pid, flush=True)\n"
    "time.sleep(300)\n"
)


def _start(tmp_path, name: str) -> tuple[Process, int]:
    proc = Process(name, [sys.executable, "-c", FORKER], tmp_path / f"{name}.log",
                   pid_file=tmp_path / "run" / f"{name}.pid")
    proc.start()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        text = (tmp_path / f"{name}.log").read_text().strip()
        if text:
            return proc, int(text)
        time.sleep(0.05)
    raise AssertionError("the forker never printed its child's pid")


def _gone(pid: int, timeout: float = 10) -> bool:
    try:
        psutil.Process(pid).wait(timeout)
    except psutil.NoSuchProcess:
        return True
    except psutil.TimeoutExpired:
        return False
    return True


def test_stop_ends_what_a_dead_server_left_in_its_group(tmp_path):
    proc, grandchild = _start(tmp_path, "forker")
    try:
        os.kill(proc.pid, signal.SIGKILL)  # the server dies first; its child is reparented
        proc.popen.wait(10)
        assert psutil.Process(grandchild).is_running() and psutil.Process(grandchild).ppid() != proc.pid
        proc.stop()
        assert _gone(grandchild), "a dead server's child outlived stop()"
    finally:
        if psutil.pid_exists(grandchild):
            os.kill(grandchild, signal.SIGKILL)


def test_the_next_start_ends_what_a_killed_run_left_in_a_servers_group(tmp_path):
    proc, grandchild = _start(tmp_path, "forker")
    try:
        os.kill(proc.pid, signal.SIGKILL)  # as if the launcher and then the server died
        proc.popen.wait(10)
        stopped = stop_leftovers(tmp_path / "run")
        assert _gone(grandchild), "an earlier run's grandchild survived stop_leftovers"
        assert stopped and "forker" in stopped[0], stopped
        assert not list((tmp_path / "run").glob("*.pid"))
    finally:
        if psutil.pid_exists(grandchild):
            os.kill(grandchild, signal.SIGKILL)
