"""Agent configs: every HCL file parses (python-hcl2); Nomad and Consul validate them with
their own `config validate` when the binaries exist (tools/hashistack/build.sh)."""

import shutil
import subprocess
from pathlib import Path

import hcl2
import pytest
import yaml

from datalab.devstack.hashistack import find_binary

CONFIG = Path(__file__).resolve().parents[2] / "config"


def test_every_hcl_config_parses():
    files = sorted(CONFIG.rglob("*.hcl"))
    assert {p.parent.name for p in files} >= {"nomad", "consul", "vault", "policies"}
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
