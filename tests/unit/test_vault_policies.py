"""Vault policies: every file parses as HCL, and each service reads only its own paths."""

from pathlib import Path

import hcl2

from datalab.ops.vault_bootstrap import DATABASE_SERVICES, POLICY_DIR, ROLES


def paths(service: str) -> set[str]:
    doc = hcl2.loads((POLICY_DIR / f"datalab-{service}.hcl").read_text())
    return {key.strip('"') for block in doc["path"] for key in block if not key.startswith("__")}


def test_one_policy_per_job_role():
    assert {p.stem for p in POLICY_DIR.glob("*.hcl")} == {f"datalab-{s}" for s in ROLES}


def test_each_service_reads_only_its_own_paths():
    token = {"auth/token/renew-self", "auth/token/lookup-self"}
    shared = {"kv/data/datalab/shared"}
    redis = "kv/data/datalab/redis/{}".format  # each service's own Redis ACL user, no other's
    expected = {
        "gateway": shared | {"kv/data/datalab/gateway", "kv/data/datalab/platform", "database/creds/gateway",
                             redis("gateway")},
        "data": shared | {"database/creds/data", redis("data")},
        "ai": shared | {"database/creds/ai", redis("ai")},
        # The API queues jobs: no platform API key, no worker's Redis user. The workers do.
        "compute": shared | {redis("compute")},
        "compute-worker": shared | {"kv/data/datalab/platform", redis("worker")},
        "viz": shared | {redis("viz")},
        "postgres": {"kv/data/datalab/postgres"},
        "redis": {"kv/data/datalab/redis-server"},  # the ACL (hashes), no service's password
        "traefik": {"pki-edge/issue/traefik"},  # its HTTPS certificate, nothing of the services'
    }
    assert set(expected) == set(ROLES)
    for service, wanted in expected.items():
        assert paths(service) == wanted | token, service
    assert set(DATABASE_SERVICES) == {"gateway", "data", "ai"}


def test_no_policy_grants_more_than_read():
    for path in POLICY_DIR.glob("*.hcl"):
        for block in hcl2.loads(path.read_text())["path"]:
            for name, rules in block.items():
                if name.startswith("__"):  # python-hcl2's own markers
                    continue
                caps = {c.strip('"') for c in rules["capabilities"]}
                assert caps <= {"read", "update"}, (path, name)
                # update: renewing its own token; the edge issuing its certificate (a write to
                # the PKI role, which names what it may hold).
                allowed = {"auth/token/renew-self"} | ({"pki-edge/issue/traefik"} if path.stem == "datalab-traefik"
                                                       else set())
                assert "update" not in caps or name.strip('"') in allowed, (path, name)


def _block(doc: dict, kind: str) -> tuple[str, dict]:
    (label, body), = ((k, v) for k, v in doc[kind][0].items() if not k.startswith("__"))
    return label.strip('"'), body


def test_server_configs_parse_and_have_the_production_shape():
    config = Path(__file__).resolve().parents[2] / "config" / "vault"
    server = hcl2.loads((config / "server.hcl").read_text())
    assert server["ui"] is True
    storage, raft = _block(server, "storage")
    assert storage == "raft" and raft["path"].strip('"') and raft["node_id"].strip('"')
    listener, tcp = _block(server, "listener")
    assert listener == "tcp" and "tls_disable" not in tcp  # TLS on
    assert tcp["tls_cert_file"].strip('"').endswith(".pem") and tcp["tls_key_file"].strip('"').endswith(".pem")
    assert server["api_addr"].strip('"').startswith("https://")

    dev = hcl2.loads((config / "dev.hcl").read_text())
    assert _block(dev, "storage")[0] == "raft"  # OpenBao has no "file" backend
    listener, tcp = _block(dev, "listener")
    assert tcp["address"].strip('"').startswith("127.0.0.1:")  # loopback only: it has no TLS
