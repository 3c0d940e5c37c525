"""`datalab up` (what `make up` runs) as a user sees it: first start prints the generated
admin password; state survives a restart; Ctrl-C or SIGTERM leaves no process behind."""

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import psutil
import pytest

from datalab.devstack.servers import free_port

pytestmark = pytest.mark.integration


class Up:
    def __init__(self, home: Path, env: dict):
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "datalab.cli", "up"],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        self.lines: list[str] = []
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                raise AssertionError("datalab up exited:\n" + "".join(self.lines))
            self.lines.append(line)
            if line.startswith("Ctrl-C stops everything"):
                return
        raise AssertionError("datalab up did not come up:\n" + "".join(self.lines))

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def stop(self, sig) -> tuple[int, list[psutil.Process]]:
        children = psutil.Process(self.proc.pid).children(recursive=True)
        assert len(children) >= 5  # postgres (+ its workers), redis, 2 services, traefik
        self.proc.send_signal(sig)
        rest, _ = self.proc.communicate(timeout=90)
        self.lines.append(rest)
        _, alive = psutil.wait_procs(children, timeout=10)
        return self.proc.returncode, alive


@pytest.fixture()
def up_env():
    home = Path(tempfile.mkdtemp(prefix="datalab-up-"))
    os.chmod(home, 0o755)
    ports = {k: free_port() for k in ("HTTP", "TRAEFIK_PING", "POSTGRES", "REDIS")}
    env = {k: v for k, v in os.environ.items() if not k.startswith("DATALAB_")}
    env.update({f"DATALAB_{k}_PORT": str(v) for k, v in ports.items()})
    env["DATALAB_HOME"] = str(home)
    # Service ports are the defaults (8000-8004): skip if something else holds them.
    for port in (8000, 8001):
        with __import__("socket").socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                pytest.skip(f"port {port} is taken by another process; `datalab up` needs it")
    yield home, env, f"http://127.0.0.1:{ports['HTTP']}"
    shutil.rmtree(home, ignore_errors=True)


def test_first_start_restart_and_clean_stop(up_env):
    home, env, base = up_env
    first = Up(home, env)
    password = (home / "admin-password").read_text().strip()
    assert password in first.output and "generated" in first.output
    assert oct((home / "admin-password").stat().st_mode & 0o777) == "0o600"

    token = httpx.post(f"{base}/api/v1/auth/token",
                       data={"username": "admin", "password": password}).json()["access_token"]
    auth = {"Authorization": f"Bearer {token}"}
    created = httpx.post(f"{base}/api/v1/data/datasets", headers=auth,
                         files={"file": ("a.csv", b"x,y\n1,2\n", "text/csv")})
    assert created.status_code == 201

    code, alive = first.stop(signal.SIGINT)  # Ctrl-C
    assert code == 0 and alive == [], f"left running: {alive}"

    second = Up(home, env)
    assert password not in second.output  # printed once, when generated
    token = httpx.post(f"{base}/api/v1/auth/token",
                       data={"username": "admin", "password": password}).json()["access_token"]
    listed = httpx.get(f"{base}/api/v1/data/datasets", headers={"Authorization": f"Bearer {token}"}).json()
    assert [d["id"] for d in listed["items"]] == [created.json()["id"]]  # state survived

    code, alive = second.stop(signal.SIGTERM)
    assert code == 0 and alive == [], f"left running: {alive}"
    assert re.search(r"DataLab: stopped\.", second.output)
