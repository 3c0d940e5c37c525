"""Agent configs: every HCL file parses (python-hcl2); Nomad and Consul validate them with
their own `config validate` when the binaries exist (tools/hashistack/build.sh)."""

import shutil
import subprocess
from pathlib import Path

import hcl2
import pytest
import yaml

from datalab.devstack.hashistack import find_binary
from hcl_plain import load_hcl
from traefik_config import assert_entrypoint_timeouts, go_seconds

CONFIG = Path(__file__).resolve().parents[2] / "config"


def test_every_hcl_config_parses():
    files = sorted(CONFIG.rglob("*.hcl"))
    assert {p.parent.name for p in files} >= {"nomad", "consul", "vault", "acl"}
    for path in files:
        assert hcl2.loads(path.read_text()) is not None, path


def test_traefik_configs_parse_and_declare_middlewares_once():
    static = yaml.safe_load((CONFIG / "traefik" / "traefik.yml").read_text())
    assert static["providers"]["consulCatalog"]["exposedByDefault"] is False
    dynamic = yaml.safe_load((CONFIG / "traefik" / "dynamic.yml").read_text())
    assert set(dynamic["http"]["middlewares"]) == {"auth", "retry"}


def _validate(argv):
    out = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.mark.skipif(find_binary("nomad") is None, reason="NO NOMAD BINARY: run tools/hashistack/build.sh nomad")
@pytest.mark.parametrize("files", [["server.hcl"], ["client.hcl", "client-gpu.hcl"], ["dev.hcl"]], ids=str)
def test_nomad_validates_its_configs(tmp_path, files):
    for name in files:  # a directory: Nomad merges the files, as an agent given -config DIR does
        shutil.copy(CONFIG / "nomad" / name, tmp_path / name)
    _validate([find_binary("nomad"), "config", "validate", str(tmp_path)])


@pytest.mark.skipif(find_binary("consul") is None, reason="NO CONSUL BINARY: run tools/hashistack/build.sh consul")
@pytest.mark.parametrize("name", ["server.hcl", "client.hcl"])
def test_consul_validates_its_configs(tmp_path, name):
    # The cluster configs bind to the VM's private NIC (eth1), which this machine lacks.
    text = (CONFIG / "consul" / name).read_text().replace('{{ GetInterfaceIP \\"eth1\\" }}', "127.0.0.1")
    (tmp_path / name).write_text(text)
    _validate([find_binary("consul"), "validate", str(tmp_path / name)])


def _hcl(*parts: str) -> dict:
    return load_hcl(CONFIG.joinpath(*parts).read_text())


def test_nomad_dev_config_carries_the_fingerprint_denylist_of_this_machine():
    reference = hcl2.loads((CONFIG.parent / "tools" / "hashistack" / "nomad-dev.hcl").read_text())
    expected = reference["client"][0]["options"]["\"fingerprint.denylist\""].strip('"')
    dev = _hcl("nomad", "dev.hcl")
    assert dev["client"][0]["options"]["fingerprint.denylist"] == expected


@pytest.mark.parametrize("name", ["dev.hcl", "client.hcl"])
def test_nomad_alloc_dir_is_outside_the_0700_data_dir(name):
    """Nomad creates data_dir 0700: raw_exec tasks running as `datalab` could not enter a
    task dir under it ("fork/exec ...: permission denied", seen on Nomad 1.10.5)."""
    config = _hcl("nomad", name)
    alloc_dir = Path(config["client"][0]["alloc_dir"])
    assert not alloc_dir.is_relative_to(Path(config["data_dir"]))


def test_nomad_workload_identity_for_vault_and_consul():
    server, client = _hcl("nomad", "server.hcl"), _hcl("nomad", "client.hcl")
    consul = server["consul"][0]
    for block in ("service_identity", "task_identity"):
        assert consul[block][0]["aud"] == ["consul.io"], block
    vault = server["vault"][0]
    assert vault["default_identity"][0]["aud"] == ["vault.io"] and vault["jwt_auth_backend_path"] == "jwt-nomad/"
    assert "token" not in vault and "create_from_role" not in vault  # the token integration is gone
    assert client["consul"][0]["service_auth_method"] == client["consul"][0]["task_auth_method"] == "nomad-workloads"
    assert {"docker", "raw_exec"} <= {k for p in client["plugin"] for k in p}
    volumes = {k for v in client["client"][0]["host_volume"] for k in v}
    assert volumes == {"datalab", "postgres", "redis"}
    gpu = _hcl("nomad", "client-gpu.hcl")
    assert gpu["plugin_dir"] and "nomad-device-nvidia" in {k for p in gpu["plugin"] for k in p}


@pytest.mark.parametrize("name", ["server.hcl", "client.hcl"])
def test_consul_acls_default_deny(name):
    acl = _hcl("consul", name)["acl"][0]
    assert acl["enabled"] is True and acl["default_policy"] == "deny"


def test_traefik_entrypoints_and_catalog():
    static = yaml.safe_load((CONFIG / "traefik" / "traefik.yml").read_text())
    entry = static["entryPoints"]
    # Plain HTTP only redirects to HTTPS; routes join websecure; forwardAuth has the loopback `auth`.
    redirect = {"to": "websecure", "scheme": "https", "permanent": True}
    assert entry["web"]["http"]["redirections"]["entryPoint"] == redirect
    assert not entry["web"].get("asDefault")
    assert entry["websecure"]["asDefault"] and "tls" in entry["websecure"]["http"]
    assert not entry["auth"].get("asDefault") and entry["auth"]["address"].startswith("127.0.0.1:")
    assert entry["auth"]["forwardedHeaders"]["trustedIPs"] == ["127.0.0.1/32"]
    assert not entry["ping"].get("asDefault") and static["ping"]["entryPoint"] == "ping"
    catalog = static["providers"]["consulCatalog"]
    assert catalog["strictChecks"] == ["passing"] and static["providers"]["file"]["filename"].endswith("dynamic.yml")
    auth = yaml.safe_load((CONFIG / "traefik" / "dynamic.yml").read_text())["http"]["middlewares"]["auth"]
    assert auth["forwardAuth"]["trustForwardHeader"] is False
    assert auth["forwardAuth"]["authResponseHeaders"] == ["X-User-Id", "X-User-Name", "Authorization"]
    # forwardAuth through Traefik, but not through the redirecting web entrypoint
    assert auth["forwardAuth"]["address"] == f"http://{entry['auth']['address']}/internal/auth/verify"


def test_traefik_entrypoints_all_have_timeouts():
    static = yaml.safe_load((CONFIG / "traefik" / "traefik.yml").read_text())
    assert_entrypoint_timeouts(static["entryPoints"])
    web = static["entryPoints"]["web"]["transport"]["respondingTimeouts"]
    assert go_seconds(web["readTimeout"]) >= 600  # a 512 MiB upload at ~7 Mbit/s still fits


def test_compute_dispatch_acl_policy():
    policy = _hcl("nomad", "acl", "compute-dispatch.policy.hcl")
    assert policy["namespace"][0]["default"]["capabilities"] == ["dispatch-job", "read-job", "list-jobs"]
