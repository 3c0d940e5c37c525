"""`datalab vault bootstrap`: everything DataLab needs from Vault (or OpenBao), idempotent.

1. KV v2 at `kv/`: `datalab/shared` {jwt_public_key, redis_password}, `datalab/gateway`
   {jwt_private_key, admin_password}, `datalab/platform` {service_api_key},
   `datalab/postgres` {superuser_password} (for the postgres job). Missing values are
   generated; existing ones are never overwritten.
2. PostgreSQL, as its superuser: a `vault` login role (CREATEROLE, not superuser), and per
   service (gateway, data, ai) a NOLOGIN `<svc>_owner` role owning schema `<svc>`.
3. The database secrets engine at `database/`: connection `datalab` (then rotate-root, so
   only Vault knows the vault role's password) and a role per service whose users are
   members of the owner role and act as it (`SET role`), so tables always belong to the
   owner and revoking a user never strands an object.
4. Policies from config/vault/policies/ (each service reads only its own paths).
5. With a Nomad address: JWT auth at `jwt-nomad/` for Nomad workload identity, one role per
   job bound on `nomad_job_id`.

Never prints or raises a secret value.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets as pysecrets
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg
import hvac

from datalab.core.auth import generate_keypair, new_api_key

POLICY_DIR = Path(__file__).resolve().parents[2] / "config" / "vault" / "policies"
DB_SERVICES = ("gateway", "data", "ai")  # the services with tables
JOBS = {  # Vault JWT role -> the Nomad jobs allowed to use it
    "gateway": ["gateway"],
    "data": ["data"],
    "ai": ["ai"],
    "compute": ["compute", "compute-batch"],
    "viz": ["viz"],
    "postgres": ["postgres"],  # the infra jobs (clusters; `make e2e` runs host processes)
    "redis": ["redis"],
}
KV_MOUNT = "kv"
DB_MOUNT = "database"
JWT_MOUNT = "jwt-nomad"
CONNECTION = "datalab"


@dataclass
class Options:
    pg_admin_url: str  # superuser DSN (postgresql://postgres:...@host:port/datalab)
    pg_host_for_vault: str | None = None  # host:port as Vault reaches PostgreSQL
    database: str = "datalab"
    nomad_addr: str | None = None
    redis_password: str | None = None
    admin_password: str | None = None
    default_ttl: str = "1h"
    max_ttl: str = "24h"


@dataclass
class Report:
    lines: list[tuple[str, str]] = field(default_factory=list)

    def add(self, what: str, outcome: str) -> None:
        self.lines.append((what, outcome))
        print(f"  {outcome:<10} {what}", flush=True)


# ---- PostgreSQL ---------------------------------------------------------------------------

def _q(identifier: str) -> str:
    return '"' + identifier.replace('"', '""') + '"'


async def prepare_postgres(opts: Options, vault_password: str | None, report: Report) -> tuple[int, bool]:
    """Roles and schemas; returns (server_version_num, vault role created now)."""
    conn = await asyncpg.connect(opts.pg_admin_url, timeout=10)
    try:
        version = int(await conn.fetchval("SHOW server_version_num"))
        created = False
        if not await conn.fetchval("SELECT 1 FROM pg_roles WHERE rolname = 'vault'"):
            await conn.execute(f"CREATE ROLE vault LOGIN CREATEROLE PASSWORD '{vault_password}'")
            created = True
            report.add("postgres role vault (CREATEROLE, not superuser)", "created")
        else:
            report.add("postgres role vault", "unchanged")
        if version >= 160000:
            # Since PG 16 CREATEROLE no longer makes the creator a member of the roles it
            # creates; without this, revoking a lease cannot REASSIGN OWNED (42501).
            await conn.execute("ALTER ROLE vault SET createrole_self_grant = 'set, inherit'")
        # Revocation also ends the revoked user's open sessions.
        await conn.execute("GRANT pg_signal_backend TO vault")
        await conn.execute(f"GRANT CONNECT ON DATABASE {_q(opts.database)} TO vault")
        for svc in DB_SERVICES:
            owner = f"{svc}_owner"
            if not await conn.fetchval("SELECT 1 FROM pg_roles WHERE rolname = $1", owner):
                await conn.execute(f"CREATE ROLE {_q(owner)} NOLOGIN")
                report.add(f"postgres role {owner} + schema {svc}", "created")
            await conn.execute(f"GRANT {_q(owner)} TO vault WITH ADMIN OPTION")
            await conn.execute(f"GRANT CONNECT ON DATABASE {_q(opts.database)} TO {_q(owner)}")
            await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {_q(svc)} AUTHORIZATION {_q(owner)}")
            await conn.execute(f"ALTER SCHEMA {_q(svc)} OWNER TO {_q(owner)}")
        return version, created
    finally:
        await conn.close()


def role_statements(svc: str, pg_version: int) -> tuple[list[str], list[str]]:
    owner = _q(f"{svc}_owner")
    creation = [
        f"CREATE ROLE \"{{{{name}}}}\" WITH LOGIN PASSWORD '{{{{password}}}}' VALID UNTIL '{{{{expiration}}}}' IN ROLE {owner};",
        f"ALTER ROLE \"{{{{name}}}}\" SET role = '{svc}_owner';",
    ]
    revocation = [
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '{{name}}';",
    ]
    if pg_version >= 160000:
        revocation += [f'REASSIGN OWNED BY "{{{{name}}}}" TO {owner};', 'DROP OWNED BY "{{name}}";']
    # PG 15: the user acts as the owner role (SET role), so it owns nothing to reassign;
    # and a CREATEROLE role there may drop it without being its member.
    revocation.append('DROP ROLE IF EXISTS "{{name}}";')
    return creation, revocation


# ---- Vault ----------------------------------------------------------------------------------

def _mounts(client: hvac.Client) -> dict:
    return client.sys.list_mounted_secrets_engines()["data"]


def ensure_kv(client: hvac.Client, opts: Options, report: Report) -> None:
    if f"{KV_MOUNT}/" not in _mounts(client):
        client.sys.enable_secrets_engine("kv", path=KV_MOUNT, options={"version": "2"})
        report.add("kv v2 engine at kv/", "enabled")
    private, public = generate_keypair()
    wanted = {
        "datalab/shared": {"jwt_public_key": public, "redis_password": opts.redis_password or pysecrets.token_urlsafe(24)},
        "datalab/gateway": {"jwt_private_key": private,
                            "admin_password": opts.admin_password or pysecrets.token_urlsafe(18)},
        "datalab/platform": {"service_api_key": new_api_key()[0]},
        # The postgres job's superuser; an operator's tool, never a service's credential.
        "datalab/postgres": {"superuser_password": pysecrets.token_urlsafe(24)},
    }
    existing_shared = _kv_read(client, "datalab/shared")
    existing_gateway = _kv_read(client, "datalab/gateway")
    if existing_shared.get("jwt_public_key") and existing_gateway.get("jwt_private_key"):
        # A key pair is kept or replaced whole, never half.
        wanted["datalab/shared"]["jwt_public_key"] = existing_shared["jwt_public_key"]
        wanted["datalab/gateway"]["jwt_private_key"] = existing_gateway["jwt_private_key"]
    for path, values in wanted.items():
        current = _kv_read(client, path)
        merged = {**values, **current}  # existing values win
        if opts.redis_password and path == "datalab/shared":
            merged["redis_password"] = opts.redis_password  # the running Redis's, when given
        if merged != current:
            client.secrets.kv.v2.create_or_update_secret(path=path, secret=merged, mount_point=KV_MOUNT)
            report.add(f"kv/{path} ({', '.join(sorted(set(merged) - set(current))) or 'updated'})", "written")
        else:
            report.add(f"kv/{path}", "unchanged")


def _kv_read(client: hvac.Client, path: str) -> dict:
    try:
        return client.secrets.kv.v2.read_secret_version(path=path, mount_point=KV_MOUNT, raise_on_deleted_version=True)[
            "data"
        ]["data"]
    except hvac.exceptions.InvalidPath:
        return {}


def ensure_database(client: hvac.Client, opts: Options, report: Report) -> None:
    if f"{DB_MOUNT}/" not in _mounts(client):
        client.sys.enable_secrets_engine("database", path=DB_MOUNT)
        report.add("database secrets engine at database/", "enabled")
    try:
        client.secrets.database.read_connection(CONNECTION, mount_point=DB_MOUNT)
        configured = True
    except hvac.exceptions.InvalidPath:
        configured = False
    vault_password = pysecrets.token_urlsafe(24)
    pg_version, created = asyncio.run(prepare_postgres(opts, vault_password, report))
    if not configured:
        if not created:
            # The role exists but Vault has no connection (a wiped Vault): reset it, once.
            asyncio.run(_set_vault_password(opts, vault_password))
        admin = urlsplit(opts.pg_admin_url)
        host = opts.pg_host_for_vault or f"{admin.hostname}:{admin.port or 5432}"
        client.secrets.database.configure(
            name=CONNECTION,
            plugin_name="postgresql-database-plugin",
            connection_url=f"postgresql://{{{{username}}}}:{{{{password}}}}@{host}/{opts.database}?sslmode=disable",
            username="vault",
            password=vault_password,
            allowed_roles=list(DB_SERVICES),
            verify_connection=True,
            mount_point=DB_MOUNT,
        )
        client.secrets.database.rotate_root_credentials(CONNECTION, mount_point=DB_MOUNT)
        report.add(f"database connection {CONNECTION} (root rotated: only Vault knows it)", "configured")
    else:
        report.add(f"database connection {CONNECTION}", "unchanged")
    for svc in DB_SERVICES:
        creation, revocation = role_statements(svc, pg_version)
        wanted = {"db_name": CONNECTION, "creation_statements": creation, "revocation_statements": revocation,
                  "default_ttl": opts.default_ttl, "max_ttl": opts.max_ttl}
        try:
            current = client.secrets.database.read_role(svc, mount_point=DB_MOUNT)["data"]
            same = current.get("creation_statements") == creation and current.get("revocation_statements") == revocation
        except hvac.exceptions.InvalidPath:
            same = False
        client.secrets.database.create_role(
            name=svc, db_name=CONNECTION, creation_statements=creation, revocation_statements=revocation,
            default_ttl=wanted["default_ttl"], max_ttl=wanted["max_ttl"], mount_point=DB_MOUNT,
        )
        report.add(f"database role {svc}", "unchanged" if same else "written")


async def _set_vault_password(opts: Options, password: str) -> None:
    conn = await asyncpg.connect(opts.pg_admin_url, timeout=10)
    try:
        await conn.execute(f"ALTER ROLE vault PASSWORD '{password}'")
    finally:
        await conn.close()


def ensure_policies(client: hvac.Client, report: Report) -> list[str]:
    names = []
    for path in sorted(POLICY_DIR.glob("*.hcl")):
        name = path.stem
        text = path.read_text()
        try:
            current = client.sys.read_acl_policy(name)["data"]["policy"]
        except hvac.exceptions.InvalidPath:
            current = None
        if current != text:
            client.sys.create_or_update_acl_policy(name, text)
        report.add(f"policy {name}", "unchanged" if current == text else "written")
        names.append(name)
    return names


def ensure_jwt_auth(client: hvac.Client, nomad_addr: str, report: Report) -> None:
    if f"{JWT_MOUNT}/" not in client.sys.list_auth_methods()["data"]:
        client.sys.enable_auth_method("jwt", path=JWT_MOUNT)
        report.add(f"jwt auth at {JWT_MOUNT}/", "enabled")
    client.write_data(
        f"auth/{JWT_MOUNT}/config",
        data={"jwks_url": f"{nomad_addr.rstrip('/')}/.well-known/jwks.json",
              "jwt_supported_algs": ["RS256", "EdDSA"], "default_role": "nomad-workloads"},
    )
    base = {
        "role_type": "jwt",
        "bound_audiences": ["vault.io"],
        "user_claim": "/nomad_job_id",
        "user_claim_json_pointer": True,
        "claim_mappings": {"nomad_namespace": "nomad_namespace", "nomad_job_id": "nomad_job_id",
                           "nomad_task": "nomad_task"},
        "token_type": "service",
        "token_period": "30m",
        "token_explicit_max_ttl": 0,  # Nomad renews; a max TTL would cut running tasks off
    }
    client.write_data(f"auth/{JWT_MOUNT}/role/nomad-workloads", data={**base, "token_policies": ["default"]})
    for svc, jobs in JOBS.items():
        client.write_data(
            f"auth/{JWT_MOUNT}/role/nomad-{svc}",
            data={**base, "bound_claims": {"nomad_job_id": jobs}, "token_policies": [f"datalab-{svc}"]},
        )
    report.add(f"jwt roles nomad-{{{','.join(JOBS)}}} (jwks from {nomad_addr})", "written")


def bootstrap(client: hvac.Client, opts: Options) -> Report:
    report = Report()
    ensure_kv(client, opts, report)
    ensure_database(client, opts, report)
    ensure_policies(client, report)
    if opts.nomad_addr:
        ensure_jwt_auth(client, opts.nomad_addr, report)
    else:
        report.add("jwt auth for Nomad workload identity: no --nomad-addr given (needs Nomad's JWKS)", "skipped")
    return report


# ---- CLI --------------------------------------------------------------------------------------

def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--vault-addr", default=os.environ.get("VAULT_ADDR", "http://127.0.0.1:8200"))
    p.add_argument("--vault-token-file", help="file holding a Vault token (default: $VAULT_TOKEN)")
    p.add_argument("--pg-admin-url-file", help="file holding the PostgreSQL superuser URL "
                   "(default: $DATALAB_PG_ADMIN_URL)")
    p.add_argument("--pg-host-for-vault", help="host:port where Vault reaches PostgreSQL (default: the admin URL's)")
    p.add_argument("--database", default="datalab")
    p.add_argument("--nomad-addr", default=os.environ.get("NOMAD_ADDR"), help="enables the JWT auth step")
    p.add_argument("--redis-password-file", help="the running Redis's password, stored in kv/datalab/shared")
    p.add_argument("--admin-password-file", help="the first admin's password (default: generated)")
    p.add_argument("--default-ttl", default="1h")
    p.add_argument("--max-ttl", default="24h")


def _read(path: str | None, env: str | None = None) -> str | None:
    if path:
        return Path(path).read_text().strip()
    return os.environ.get(env) if env else None


def run(args: argparse.Namespace) -> int:
    token = _read(args.vault_token_file, "VAULT_TOKEN")
    pg_admin_url = _read(args.pg_admin_url_file, "DATALAB_PG_ADMIN_URL")
    if not token or not pg_admin_url:
        print("vault bootstrap: a Vault token and the PostgreSQL admin URL are required "
              "(--vault-token-file / VAULT_TOKEN, --pg-admin-url-file / DATALAB_PG_ADMIN_URL)")
        return 2
    client = hvac.Client(url=args.vault_addr, token=token)
    opts = Options(
        pg_admin_url=pg_admin_url, pg_host_for_vault=args.pg_host_for_vault, database=args.database,
        nomad_addr=args.nomad_addr, redis_password=_read(args.redis_password_file),
        admin_password=_read(args.admin_password_file), default_ttl=args.default_ttl, max_ttl=args.max_ttl,
    )
    print(f"vault bootstrap against {args.vault_addr}:")
    bootstrap(client, opts)
    print("done.")
    return 0


def kv_json(client: hvac.Client, path: str) -> str:
    """A KV secret as JSON (for tests and the e2e runner)."""
    return json.dumps(_kv_read(client, path))
