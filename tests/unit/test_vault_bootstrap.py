"""`datalab vault bootstrap` without servers: the statements, roles and CLI it is built from.
(tests/integration/test_vault.py runs it against real OpenBao and PostgreSQL 15 and 18.)"""

import argparse
import base64
import hashlib
import hmac
import re

import pytest

from datalab.ops import vault_bootstrap as vault


@pytest.mark.parametrize("version", [150018, 160000, 180001])
def test_role_statements_follow_the_owner_role_pattern(version):
    creation, revocation = vault.role_statements("data", version)
    assert creation[0] == ("CREATE ROLE \"{{name}}\" WITH LOGIN PASSWORD '{{password}}' "
                           "VALID UNTIL '{{expiration}}' IN ROLE \"data_owner\";")
    assert creation[1] == "ALTER ROLE \"{{name}}\" SET role = 'data_owner';"
    # PG 15 has no createrole_self_grant: vault is made a member of each user explicitly.
    assert (creation[2:] == ['GRANT "{{name}}" TO "vault";']) is (version < 160000)
    assert revocation == [
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '{{name}}';",
        'REASSIGN OWNED BY "{{name}}" TO "data_owner";',
        'DROP OWNED BY "{{name}}";',
        'DROP ROLE IF EXISTS "{{name}}";',
    ]


def test_jwt_roles_follow_the_workload_identity_conventions():
    roles = vault.jwt_roles()
    assert set(roles) == {"nomad-workloads"} | {f"nomad-{s}" for s in vault.ROLES}
    for name, role in roles.items():
        assert role["role_type"] == "jwt" and role["bound_audiences"] == ["vault.io"]
        assert role["user_claim"] == "/nomad_job_id" and role["user_claim_json_pointer"] is True
        assert set(role["claim_mappings"]) == {"nomad_namespace", "nomad_job_id", "nomad_task"}
        assert role["token_type"] == "service" and role["token_period"] == "30m"
        assert role["token_explicit_max_ttl"] == 0
        if name != "nomad-workloads":
            key = name.removeprefix("nomad-")
            assert role["token_policies"] == [f"datalab-{key}"]
            assert role["bound_claims"] == vault.ROLES[key] and role["bound_claims_type"] == "string"
            assert role["bound_claims"]["nomad_job_id"], name  # never a role any job can take
    assert roles["nomad-workloads"]["token_policies"] == ["default"] and "bound_claims" not in roles["nomad-workloads"]
    assert {f"nomad-{s}" for s in ("gateway", "data", "ai", "compute", "viz")} <= set(roles)


def test_compute_api_and_workers_have_separate_roles():
    """The compute API task's identity cannot take the workers' role (the platform API key):
    both compute roles are bound on the task name as well as the job."""
    roles = vault.jwt_roles()
    api, workers = roles["nomad-compute"], roles["nomad-compute-worker"]
    assert api["bound_claims"] == {"nomad_job_id": ["compute"], "nomad_task": ["compute"]}
    assert api["token_policies"] == ["datalab-compute"]
    assert workers["bound_claims"] == {"nomad_job_id": ["compute", "compute-batch"], "nomad_task": ["worker", "job"]}
    assert workers["token_policies"] == ["datalab-compute-worker"]
    assert not set(api["bound_claims"]["nomad_task"]) & set(workers["bound_claims"]["nomad_task"])


def test_scram_verifier_is_what_postgres_computes():
    password = "correct horse battery staple"
    verifier = vault.scram_sha256(password)
    m = re.fullmatch(r"SCRAM-SHA-256\$4096:([A-Za-z0-9+/=]+)\$([A-Za-z0-9+/=]+):([A-Za-z0-9+/=]+)", verifier)
    assert m and password not in verifier
    salt, stored, server = (base64.b64decode(g) for g in m.groups())
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, 4096)
    assert stored == hashlib.sha256(hmac.new(salted, b"Client Key", "sha256").digest()).digest()
    assert server == hmac.new(salted, b"Server Key", "sha256").digest()
    assert vault.scram_sha256(password) != verifier  # a fresh salt each time


@pytest.mark.parametrize("value, expected", [("1h", 3600), ("24h", 86400), ("30m", 1800), ("90s", 90),
                                             ("600", 600), (0, 0), ("1h30m", 5400)])
def test_seconds(value, expected):
    assert vault.seconds(value) == expected


def test_bad_duration_is_refused():
    with pytest.raises(ValueError):
        vault.seconds("1 hour")


def test_connection_url_is_templated_and_holds_no_secret():
    opts = vault.Options(pg_admin_url="postgresql://postgres:s3cret@10.0.0.5:5433/datalab")
    url = vault.connection_url(opts)
    assert url == "postgresql://{{username}}:{{password}}@10.0.0.5:5433/datalab?sslmode=disable"
    opts.pg_host_for_vault, opts.pg_sslmode = "pg.service.consul:5432", "verify-full"
    assert vault.connection_url(opts) == ("postgresql://{{username}}:{{password}}@pg.service.consul:5432/datalab"
                                          "?sslmode=verify-full")
    opts.pg_host_for_vault = "/run/postgresql"
    assert vault.connection_url(opts).endswith("@/datalab?host=/run/postgresql&sslmode=disable")


def _parse(argv, monkeypatch, **env):
    for name in ("VAULT_ADDR", "VAULT_TOKEN", "VAULT_CACERT", "NOMAD_ADDR", "DATALAB_PG_ADMIN_URL",
                 "DATALAB_VAULT_DB_PASSWORD"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    parser = argparse.ArgumentParser()
    vault.add_arguments(parser)
    return parser.parse_args(argv)


def test_cli_flags_and_env_fallbacks(monkeypatch):
    args = _parse([], monkeypatch, VAULT_ADDR="https://vault:8200", NOMAD_ADDR="http://nomad:4646")
    assert (args.vault_addr, args.nomad_addr, args.default_ttl, args.max_ttl) == (
        "https://vault:8200", "http://nomad:4646", "1h", "24h")
    args = _parse(["--vault-addr", "http://a:1", "--vault-token-file", "/t", "--pg-admin-url", "postgresql://x",
                   "--pg-host-for-vault", "db:5432", "--nomad-addr", "http://n:4646", "--vault-db-password-file",
                   "/p", "--default-ttl", "2h", "--max-ttl", "48h"], monkeypatch)
    assert (args.vault_token_file, args.pg_admin_url, args.pg_host_for_vault, args.vault_db_password_file) == (
        "/t", "postgresql://x", "db:5432", "/p")


def test_cli_without_credentials_says_what_is_missing(monkeypatch, capsys):
    args = _parse([], monkeypatch)
    assert vault.run(args) == 2
    assert "VAULT_TOKEN" in capsys.readouterr().err


def test_cli_failure_prints_no_secret(monkeypatch, capsys, tmp_path):
    from datalab.devstack.servers import free_port

    token = "hvs.not-a-real-token-but-secret"
    (tmp_path / "token").write_text(token)
    args = _parse(["--vault-addr", f"http://127.0.0.1:{free_port()}", "--vault-token-file", str(tmp_path / "token")],
                  monkeypatch, DATALAB_PG_ADMIN_URL="postgresql://postgres:pg-secret-pw@127.0.0.1:1/datalab",
                  DATALAB_VAULT_DB_PASSWORD="vault-initial-secret")
    assert vault.run(args) == 1  # nothing listens there
    out = capsys.readouterr()
    assert "cannot reach Vault" in out.err
    for secret in (token, "pg-secret-pw", "vault-initial-secret"):
        assert secret not in out.out + out.err


def test_postgres_errors_carry_no_statement():
    import asyncio

    async def connect_badly():
        await vault._connect("postgresql://postgres:pg-secret-pw@127.0.0.1:1/postgres", "datalab")

    with pytest.raises(vault.BootstrapError) as caught:
        asyncio.run(connect_badly())
    assert "pg-secret-pw" not in str(caught.value) and "127.0.0.1:1" in str(caught.value)
    with pytest.raises(vault.BootstrapError) as caught:
        asyncio.run(vault._connect("postgresql://postgres:pg-secret-pw@host:notaport/db", "datalab"))
    assert "pg-secret-pw" not in str(caught.value)
