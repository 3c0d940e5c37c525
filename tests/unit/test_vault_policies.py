"""Vault policies: every file parses as HCL, and each service reads only its own paths."""

import hcl2

from datalab.hashicorp.vault import DB_SERVICES, JOBS, POLICY_DIR


def paths(service: str) -> set[str]:
    doc = hcl2.loads((POLICY_DIR / f"datalab-{service}.hcl").read_text())
    return {key.strip('"') for block in doc["path"] for key in block if not key.startswith("__")}


def test_one_policy_per_job_role():
    assert {p.stem for p in POLICY_DIR.glob("*.hcl")} == {f"datalab-{s}" for s in JOBS}


def test_each_service_reads_only_its_own_paths():
    token = {"auth/token/renew-self", "auth/token/lookup-self"}
    shared = {"kv/data/datalab/shared"}
    expected = {
        "gateway": shared | {"kv/data/datalab/gateway", "kv/data/datalab/platform", "database/creds/gateway"},
        "data": shared | {"database/creds/data"},
        "ai": shared | {"database/creds/ai"},
        "compute": shared | {"kv/data/datalab/platform"},
        "viz": shared,
        "postgres": {"kv/data/datalab/postgres"},
        "redis": shared,
    }
    for service, wanted in expected.items():
        assert paths(service) == wanted | token, service
    assert set(DB_SERVICES) == {"gateway", "data", "ai"}


def test_no_policy_grants_more_than_read():
    for path in POLICY_DIR.glob("*.hcl"):
        for block in hcl2.loads(path.read_text())["path"]:
            for name, rules in block.items():
                if name.startswith("__"):  # python-hcl2's own markers
                    continue
                caps = {c.strip('"') for c in rules["capabilities"]}
                assert caps <= {"read", "update"} and ("update" not in caps or name.strip('"') == "auth/token/renew-self"), (path, name)
