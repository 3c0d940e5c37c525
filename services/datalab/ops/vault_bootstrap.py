"""`datalab vault bootstrap`: everything DataLab needs from Vault (or OpenBao), idempotent.

1. KV v2 at `kv/`: `datalab/shared` {jwt_public_key}, `datalab/gateway`
   {jwt_private_key, admin_password}, `datalab/platform` {service_api_key},
   `datalab/postgres` {superuser_password} (for the postgres job), `datalab/redis/<user>`
   {username, password}, one Redis ACL user per service (core/redis_users.py; each
   service's policy reads only its own) plus `admin` (operators; no policy reads it), and
   `datalab/redis-server` {acl}: the `user` lines the redis job puts in its config, with
   SHA-256 hashes only, rebuilt from those passwords and the rules on every run. Missing
   values are generated; existing ones are never overwritten.
2. PostgreSQL, as its superuser: a `vault` login role (CREATEROLE, not superuser), and per
   service with tables (gateway, data, ai) a NOLOGIN `<svc>_owner` role owning schema
   `<svc>`, granted to `vault` WITH ADMIN OPTION.
3. The database secrets engine at `database/`: connection `datalab` (when created or changed:
   verify, then rotate-root, so only Vault knows the vault role's password) and a role per
   service whose users are members of the owner role and act as it (`SET role`), so tables
   always belong to the owner and revoking a user never strands an object. Revocation ends
   the user's sessions, reassigns/drops what it owns and drops the role.
4. Policies from vault_policies/ beside this module, package data of the datalab wheel (each
   service reads only its own paths).
5. With a Nomad address: JWT auth at `jwt-nomad/` for Nomad workload identity, one role per
   job bound on `nomad_job_id` (compute's: per task, on `nomad_task` too: the API and the
   workers); without one the step is skipped, saying why.
6. The edge's certificate authority: a PKI engine at `pki-edge/` with its own root (the key
   is generated inside Vault and never leaves it) and one role, `traefik`, that issues
   short-lived server certificates for the `--edge-domain` names, localhost and IP SANs:
   the traefik job renders its HTTPS certificate from it (pkiCert), clients trust the CA
   at `pki-edge/ca/pem` (unauthenticated, as any CA certificate is public).

PostgreSQL 15 and >= 16 differ in what CREATEROLE gives the creator. Since 16 the creator is
no longer a member of the roles it creates, so `vault` gets `createrole_self_grant = 'set,
inherit'`; on 15 (no such setting) each creation statement grants the new user to `vault`
explicitly. Either way `vault` ends up a member of the users it creates, which is what
revocation needs (REASSIGN/DROP OWNED, pg_terminate_backend) - no pg_signal_backend.

Never prints or raises a secret value: the report names paths and outcomes only, the vault
role's initial password reaches PostgreSQL as a SCRAM verifier (never as text a server log
could keep), and PostgreSQL errors are re-raised without the statement.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import hmac
import json
import os
import re
import secrets
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg
import hvac
import hvac.exceptions
import requests

from datalab.core.auth import generate_keypair, new_api_key
from datalab.core.hashicorp_http import ClusterAccessError
from datalab.core.redis_users import SERVICE_USERS, acl_lines
from datalab.core.services import DATABASE_SERVICES, SERVICES

from .hashicorp_env import VaultEnv

POLICY_DIR = Path(__file__).resolve().parent / "vault_policies"  # package data
# Vault JWT role nomad-<key> (policy datalab-<key>) -> the workload-identity claims it is
# bound to. Vault requires every claim named to match, each against any value of its list.
# A service's job has the service's name.
ROLES = {
    **{service: {"nomad_job_id": [service]} for service in SERVICES},
    # compute's API task only: it queues jobs, so it reads neither the platform API key nor
    # the workers' Redis user.
    "compute": {"nomad_job_id": ["compute"], "nomad_task": ["compute"]},
    # The workers: compute's "worker" task and compute-batch's "job" task (dispatched
    # children carry the parent's job id).
    "compute-worker": {"nomad_job_id": ["compute", "compute-batch"], "nomad_task": ["worker", "job"]},
    "postgres": {"nomad_job_id": ["postgres"]},  # the infra jobs (clusters; `make e2e` runs host processes)
    "redis": {"nomad_job_id": ["redis"]},
    "traefik": {"nomad_job_id": ["traefik"]},  # issues its HTTPS certificate (pki-edge/issue/traefik)
}
KV_MOUNT = "kv"
REDIS_SERVER_PATH = "datalab/redis-server"  # the redis job's ACL (hashes only)
DB_MOUNT = "database"
JWT_MOUNT = "jwt-nomad"
EDGE_PKI_MOUNT = "pki-edge"
EDGE_PKI_ROLE = "traefik"
EDGE_CA_TTL = "87600h"  # the root's life (10 years); leaf certificates live hours
EDGE_CA_NAME = "DataLab edge CA"
CONNECTION = "datalab"
VAULT_ROLE = "vault"  # the PostgreSQL role Vault's database engine logs in as
DEFAULT_ROLE = "nomad-workloads"
DEFAULT_ROLE_POLICIES = ["default"]  # token self-lookup/renew only: a job without its own role gets nothing
PG16 = 160000


class BootstrapError(RuntimeError):
    """A step failed. The message names the step and the server's error, never a secret."""


@dataclass
class Options:
    pg_admin_url: str  # superuser URL (postgresql://postgres:...@host:port/datalab)
    pg_host_for_vault: str | None = None  # host:port (or a socket dir) as Vault reaches PostgreSQL
    pg_sslmode: str = "disable"
    database: str = "datalab"
    nomad_addr: str | None = None
    vault_db_password: str | None = None  # the vault role's initial password (rotated away at once)
    admin_password: str | None = None
    default_ttl: str = "1h"
    max_ttl: str = "24h"
    # Names the edge certificate may carry (and their subdomains), besides localhost and IPs.
    edge_domains: tuple[str, ...] = ("service.consul",)


@dataclass
class Report:
    lines: list[tuple[str, str]] = field(default_factory=list)

    def add(self, what: str, outcome: str) -> None:
        self.lines.append((what, outcome))
        print(f"  {outcome:<10} {what}", flush=True)

    @property
    def changed(self) -> list[tuple[str, str]]:
        return [(what, outcome) for what, outcome in self.lines if outcome not in ("unchanged", "skipped")]


# ---- helpers ----------------------------------------------------------------------------------

def _q(identifier: str) -> str:
    return '"' + identifier.replace('"', '""') + '"'


def scram_sha256(password: str, iterations: int = 4096) -> str:
    """PostgreSQL's SCRAM-SHA-256 verifier for `password`: `ALTER ROLE ... PASSWORD '<this>'`
    sets the password without the plain text ever reaching the server (or its log). ASCII
    only: PostgreSQL's clients SASLprep other passwords, which this does not."""
    if not password.isascii():
        raise BootstrapError("the vault role's initial password must be ASCII")
    salt = os.urandom(16)
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    client_key = hmac.new(salted, b"Client Key", "sha256").digest()
    server_key = hmac.new(salted, b"Server Key", "sha256").digest()
    b64 = lambda raw: base64.b64encode(raw).decode()  # noqa: E731
    return f"SCRAM-SHA-256${iterations}:{b64(salt)}${b64(hashlib.sha256(client_key).digest())}:{b64(server_key)}"


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhd])")


def seconds(value: str | int) -> int:
    """'1h' / '1h30m' / '90s' / '3600' / 3600 -> seconds (Vault reads durations back as ints)."""
    if isinstance(value, int):
        return value
    value = value.strip()
    if value.isdigit():
        return int(value)
    parts = _DURATION.findall(value)
    if not parts or "".join(n + u for n, u in parts) != value:
        raise ValueError(f"not a duration: {value!r}")
    return int(sum(float(n) * _UNITS[u] for n, u in parts))


# ---- PostgreSQL ---------------------------------------------------------------------------------

async def _connect(url: str, database: str) -> asyncpg.Connection:
    """The superuser's session in `database` (whichever database the URL names)."""
    try:
        parts = urlsplit(url)
        where = f"{parts.username}@{parts.hostname}:{parts.port or 5432}/{database}"
        return await asyncpg.connect(url, database=database, timeout=10)
    except (TimeoutError, OSError, asyncpg.PostgresError) as exc:
        raise BootstrapError(f"postgres: cannot connect as {where}: {exc}") from None
    except Exception as exc:  # a malformed URL: its text may hold the password, so not echoed
        raise BootstrapError(f"postgres: the admin URL is not usable ({type(exc).__name__})") from None


async def _exec(conn: asyncpg.Connection, sql: str, step: str, *, secret: bool = False):
    try:
        return await conn.execute(sql)
    except asyncpg.PostgresError as exc:
        detail = exc.sqlstate if secret else f"{exc} (SQLSTATE {exc.sqlstate})"
        raise BootstrapError(f"postgres: {step}: {detail}") from None


async def prepare_postgres(opts: Options, vault_password: str, report: Report) -> tuple[int, bool]:
    """Roles and schemas, as the superuser; returns (server_version_num, vault role created now)."""
    conn = await _connect(opts.pg_admin_url, opts.database)
    try:
        version = int(await conn.fetchval("SHOW server_version_num"))
        created = False
        if not await conn.fetchval("SELECT 1 FROM pg_roles WHERE rolname = $1", VAULT_ROLE):
            verifier = scram_sha256(vault_password)
            await _exec(conn, f"CREATE ROLE {_q(VAULT_ROLE)} LOGIN CREATEROLE PASSWORD '{verifier}'",
                        "create role vault", secret=True)
            created = True
            report.add("postgres role vault (LOGIN CREATEROLE, not superuser)", "created")
        else:
            report.add("postgres role vault", "unchanged")
        if version >= PG16:
            # Since PG 16 CREATEROLE no longer makes the creator a member of the roles it
            # creates; without this, revoking a lease cannot REASSIGN OWNED (42501).
            current = await conn.fetchval(
                "SELECT s.setconfig FROM pg_db_role_setting s JOIN pg_roles r ON r.oid = s.setrole "
                "WHERE r.rolname = $1 AND s.setdatabase = 0", VAULT_ROLE)
            if "createrole_self_grant=set, inherit" not in (current or []):
                await _exec(conn, f"ALTER ROLE {_q(VAULT_ROLE)} SET createrole_self_grant = 'set, inherit'",
                            "set createrole_self_grant")
                report.add("postgres vault: createrole_self_grant = 'set, inherit' (PG >= 16)", "created")
        # An earlier bootstrap granted pg_signal_backend (to end revoked users' sessions);
        # membership in the users it creates is enough, so take the wider right back.
        if await conn.fetchval("SELECT pg_has_role($1, 'pg_signal_backend', 'MEMBER')", VAULT_ROLE):
            await _exec(conn, f"REVOKE pg_signal_backend FROM {_q(VAULT_ROLE)}", "revoke pg_signal_backend")
            report.add("postgres vault: pg_signal_backend (not needed)", "revoked")
        await _exec(conn, f"GRANT CONNECT ON DATABASE {_q(opts.database)} TO {_q(VAULT_ROLE)}", "grant connect")
        for svc in DATABASE_SERVICES:
            owner = f"{svc}_owner"
            fresh = not await conn.fetchval("SELECT 1 FROM pg_roles WHERE rolname = $1", owner)
            if fresh:
                await _exec(conn, f"CREATE ROLE {_q(owner)} NOLOGIN", f"create role {owner}")
            fresh |= not await conn.fetchval(
                "SELECT 1 FROM pg_namespace n JOIN pg_roles r ON r.oid = n.nspowner "
                "WHERE n.nspname = $1 AND r.rolname = $2", svc, owner)
            await _exec(conn, f"GRANT {_q(owner)} TO {_q(VAULT_ROLE)} WITH ADMIN OPTION", f"grant {owner} to vault")
            await _exec(conn, f"GRANT CONNECT ON DATABASE {_q(opts.database)} TO {_q(owner)}",
                        f"grant connect to {owner}")
            await _exec(conn, f"CREATE SCHEMA IF NOT EXISTS {_q(svc)} AUTHORIZATION {_q(owner)}", f"schema {svc}")
            await _exec(conn, f"ALTER SCHEMA {_q(svc)} OWNER TO {_q(owner)}", f"schema {svc} owner")
            report.add(f"postgres role {owner} (NOLOGIN) owning schema {svc}", "created" if fresh else "unchanged")
        return version, created
    finally:
        await conn.close()


async def _reset_vault_password(opts: Options, password: str) -> None:
    conn = await _connect(opts.pg_admin_url, opts.database)
    try:
        await _exec(conn, f"ALTER ROLE {_q(VAULT_ROLE)} PASSWORD '{scram_sha256(password)}'",
                    "reset the vault role's password", secret=True)
    finally:
        await conn.close()


def role_statements(svc: str, pg_version: int) -> tuple[list[str], list[str]]:
    """Creation and revocation statements of database role `svc` (Vault's templates)."""
    owner = _q(f"{svc}_owner")
    creation = [
        "CREATE ROLE \"{{name}}\" WITH LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}' "
        f"IN ROLE {owner};",
        f"ALTER ROLE \"{{{{name}}}}\" SET role = '{svc}_owner';",
    ]
    if pg_version < PG16:
        # PG 15: CREATEROLE does not make vault a member of the user; revocation needs it.
        creation.append(f'GRANT "{{{{name}}}}" TO {_q(VAULT_ROLE)};')
    revocation = [
        # A revoked credential stops working now, open sessions included.
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '{{name}}';",
        f'REASSIGN OWNED BY "{{{{name}}}}" TO {owner};',
        'DROP OWNED BY "{{name}}";',
        'DROP ROLE IF EXISTS "{{name}}";',
    ]
    return creation, revocation


def connection_url(opts: Options) -> str:
    if opts.pg_host_for_vault and opts.pg_host_for_vault.startswith("/"):  # a unix socket dir
        return (f"postgresql://{{{{username}}}}:{{{{password}}}}@/{opts.database}"
                f"?host={opts.pg_host_for_vault}&sslmode=disable")
    admin = urlsplit(opts.pg_admin_url)
    host = opts.pg_host_for_vault or f"{admin.hostname}:{admin.port or 5432}"
    return f"postgresql://{{{{username}}}}:{{{{password}}}}@{host}/{opts.database}?sslmode={opts.pg_sslmode}"


# ---- Vault --------------------------------------------------------------------------------------

def _mounts(client: hvac.Client) -> dict:
    return client.sys.list_mounted_secrets_engines()["data"]


def _kv_read(client: hvac.Client, path: str) -> dict:
    try:
        return client.secrets.kv.v2.read_secret_version(path=path, mount_point=KV_MOUNT, raise_on_deleted_version=True)[
            "data"
        ]["data"]
    except hvac.exceptions.InvalidPath:
        return {}


def _wait_for_kv_upgrade(client: hvac.Client, timeout: float = 60.0) -> None:
    """A new KV v2 mount answers "Upgrading from non-versioned to versioned data" for a moment
    on a real (non -dev) server: wait until it serves reads."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            _kv_read(client, "datalab/shared")
            return
        except hvac.exceptions.VaultError as exc:
            if "upgrading" not in str(exc).lower() or time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def ensure_kv(client: hvac.Client, opts: Options, report: Report) -> None:
    if f"{KV_MOUNT}/" not in _mounts(client):
        client.sys.enable_secrets_engine("kv", path=KV_MOUNT, options={"version": "2"})
        _wait_for_kv_upgrade(client)
        report.add("kv v2 engine at kv/", "created")
    else:
        report.add("kv v2 engine at kv/", "unchanged")
    private, public = generate_keypair()
    wanted = {
        "datalab/shared": {"jwt_public_key": public},
        "datalab/gateway": {"jwt_private_key": private,
                            "admin_password": opts.admin_password or secrets.token_urlsafe(18)},
        "datalab/platform": {"service_api_key": new_api_key()[0]},
        # The postgres job's superuser; an operator's tool, never a service's credential.
        "datalab/postgres": {"superuser_password": secrets.token_urlsafe(24)},
    }
    # The JWT key pair is kept or replaced whole, never half (one side lost: both are new).
    pair_kept = bool(_kv_read(client, "datalab/shared").get("jwt_public_key")
                     and _kv_read(client, "datalab/gateway").get("jwt_private_key"))
    for path, values in wanted.items():
        current = _kv_read(client, path)
        merged = {**values, **current}  # existing values win
        if not pair_kept:
            merged.update({k: v for k, v in values.items() if k in ("jwt_public_key", "jwt_private_key")})
        if path == "datalab/shared":
            # Before per-service Redis users, one password every service could read; the
            # redis job no longer accepts it, so it goes rather than lingering.
            merged.pop("redis_password", None)
        if merged != current:
            client.secrets.kv.v2.create_or_update_secret(path=path, secret=merged, mount_point=KV_MOUNT)
            added, removed = sorted(set(merged) - set(current)), sorted(set(current) - set(merged))
            what = ", ".join(added + [f"-{k}" for k in removed]) or "values replaced"
            report.add(f"kv/{path} ({what})", "created" if not current else "updated")
        else:
            report.add(f"kv/{path}", "unchanged")
    ensure_redis_users(client, report)


def ensure_redis_users(client: hvac.Client, report: Report) -> None:
    """kv/datalab/redis/<user> for every ACL user, and the redis job's ACL built from them."""
    passwords = {}
    for user in (*SERVICE_USERS, "admin"):
        path = f"datalab/redis/{user}"
        current = _kv_read(client, path)
        if current.get("username") == user and current.get("password"):
            report.add(f"kv/{path}", "unchanged")
        else:
            current = {"username": user, "password": secrets.token_urlsafe(24)}
            client.secrets.kv.v2.create_or_update_secret(path=path, secret=current, mount_point=KV_MOUNT)
            report.add(f"kv/{path} (username, password)", "created")
        passwords[user] = current["password"]
    wanted = {"acl": acl_lines(passwords)}
    current = _kv_read(client, REDIS_SERVER_PATH)
    if current != wanted:
        client.secrets.kv.v2.create_or_update_secret(path=REDIS_SERVER_PATH, secret=wanted, mount_point=KV_MOUNT)
        report.add(f"kv/{REDIS_SERVER_PATH} (acl: {len(passwords)} users, default off)",
                   "created" if not current else "updated")
    else:
        report.add(f"kv/{REDIS_SERVER_PATH}", "unchanged")


def ensure_database(client: hvac.Client, opts: Options, report: Report) -> int:
    """The engine, its connection and one role per service; returns PostgreSQL's version."""
    if f"{DB_MOUNT}/" not in _mounts(client):
        client.sys.enable_secrets_engine("database", path=DB_MOUNT)
        report.add("database secrets engine at database/", "created")
    else:
        report.add("database secrets engine at database/", "unchanged")
    try:
        current = client.secrets.database.read_connection(CONNECTION, mount_point=DB_MOUNT)["data"]
    except hvac.exceptions.InvalidPath:
        current = None
    vault_password = opts.vault_db_password or secrets.token_urlsafe(24)
    pg_version, role_created = asyncio.run(prepare_postgres(opts, vault_password, report))
    wanted = {
        "plugin_name": "postgresql-database-plugin",
        "connection_url": connection_url(opts),
        "username": VAULT_ROLE,
        "allowed_roles": list(DATABASE_SERVICES),
    }
    have = None if current is None else {
        "plugin_name": current.get("plugin_name"),
        "connection_url": current.get("connection_details", {}).get("connection_url"),
        "username": current.get("connection_details", {}).get("username"),
        "allowed_roles": current.get("allowed_roles"),
    }
    if have == wanted and not role_created:
        outcome = "unchanged"
    else:
        # A new connection (a new or wiped Vault), a changed one (another address, maybe
        # another server), or a new vault role (a wiped database): Vault's password for the
        # role is unknown or unusable. Set the initial one (as the superuser), give it to
        # Vault, and rotate it away below.
        if not role_created:
            asyncio.run(_reset_vault_password(opts, vault_password))
        client.secrets.database.configure(name=CONNECTION, password=vault_password, verify_connection=True,
                                          mount_point=DB_MOUNT, **wanted)
        outcome = "created" if current is None else "updated"
    if outcome == "unchanged":
        report.add(f"database connection {CONNECTION}", "unchanged")
    else:
        client.secrets.database.rotate_root_credentials(CONNECTION, mount_point=DB_MOUNT)
        report.add(f"database connection {CONNECTION} (root rotated: only Vault knows vault's password)", outcome)
    for svc in DATABASE_SERVICES:
        creation, revocation = role_statements(svc, pg_version)
        try:
            have = client.secrets.database.read_role(svc, mount_point=DB_MOUNT)["data"]
        except hvac.exceptions.InvalidPath:
            have = None
        same = have is not None and (
            have.get("db_name") == CONNECTION
            and have.get("creation_statements") == creation
            and have.get("revocation_statements") == revocation
            and have.get("default_ttl") == seconds(opts.default_ttl)
            and have.get("max_ttl") == seconds(opts.max_ttl)
        )
        if not same:
            client.secrets.database.create_role(
                name=svc, db_name=CONNECTION, creation_statements=creation, revocation_statements=revocation,
                default_ttl=opts.default_ttl, max_ttl=opts.max_ttl, mount_point=DB_MOUNT,
            )
        report.add(f"database role {svc} (ttl {opts.default_ttl}, max {opts.max_ttl})",
                   "unchanged" if same else ("created" if have is None else "updated"))
    return pg_version


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
        report.add(f"policy {name}", "unchanged" if current == text else ("created" if current is None else "updated"))
        names.append(name)
    return names


def jwt_roles() -> dict[str, dict]:
    """Every JWT role bootstrap writes at auth/jwt-nomad/role/<name>."""
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
    roles = {DEFAULT_ROLE: {**base, "token_policies": DEFAULT_ROLE_POLICIES}}
    for key, claims in ROLES.items():
        roles[f"nomad-{key}"] = {**base, "bound_claims_type": "string", "bound_claims": claims,
                                 "token_policies": [f"datalab-{key}"]}
    return roles


def _matches(wanted: dict, have: dict | None) -> bool:
    if have is None:
        return False
    for key, value in wanted.items():
        got = have.get(key)
        if key in ("token_period", "token_explicit_max_ttl", "ttl", "max_ttl"):
            value, got = seconds(value), seconds(got if got is not None else 0)
        elif isinstance(value, list):
            got = list(got or [])
        if got != value:
            return False
    return True


def _read(client: hvac.Client, path: str) -> dict | None:
    answer = client.read(path)
    return answer["data"] if answer else None


def ensure_jwt_auth(client: hvac.Client, nomad_addr: str, report: Report) -> None:
    if f"{JWT_MOUNT}/" not in client.sys.list_auth_methods()["data"]:
        client.sys.enable_auth_method("jwt", path=JWT_MOUNT)
        report.add(f"jwt auth at {JWT_MOUNT}/", "created")
    else:
        report.add(f"jwt auth at {JWT_MOUNT}/", "unchanged")
    config = {"jwks_url": f"{nomad_addr.rstrip('/')}/.well-known/jwks.json",
              "jwt_supported_algs": ["RS256", "EdDSA"], "default_role": DEFAULT_ROLE}
    have = _read(client, f"auth/{JWT_MOUNT}/config")
    if not _matches(config, have):
        client.write_data(f"auth/{JWT_MOUNT}/config", data=config)  # Vault fetches the JWKS to check it
    report.add(f"jwt config (jwks {config['jwks_url']})", "unchanged" if _matches(config, have) else
               ("created" if have is None else "updated"))
    for name, role in jwt_roles().items():
        have = _read(client, f"auth/{JWT_MOUNT}/role/{name}")
        same = _matches(role, have)
        if not same:
            client.write_data(f"auth/{JWT_MOUNT}/role/{name}", data=role)
        report.add(f"jwt role {name} -> {', '.join(role['token_policies'])}",
                   "unchanged" if same else ("created" if have is None else "updated"))


def edge_role(opts: Options) -> dict:
    """pki-edge/roles/traefik: server certificates only, for the edge's names, short-lived,
    not stored (Nomad re-issues before expiry; nothing to revoke or tidy)."""
    return {
        "allowed_domains": list(opts.edge_domains), "allow_subdomains": True, "allow_bare_domains": True,
        "allow_localhost": True, "allow_ip_sans": True, "allow_wildcard_certificates": False,
        "server_flag": True, "client_flag": False, "key_type": "ec", "key_bits": 256,
        "ttl": "24h", "max_ttl": "72h", "no_store": True,
    }


def ensure_edge_pki(client: hvac.Client, opts: Options, report: Report) -> None:
    mount = EDGE_PKI_MOUNT
    if f"{mount}/" not in _mounts(client):
        client.sys.enable_secrets_engine("pki", path=mount, max_lease_ttl=EDGE_CA_TTL)
        report.add(f"pki engine at {mount}/", "created")
    else:
        report.add(f"pki engine at {mount}/", "unchanged")
    if client.list(f"{mount}/issuers"):
        report.add(f"root CA {EDGE_CA_NAME!r} ({mount}/ca/pem)", "unchanged")
    else:
        client.write_data(f"{mount}/root/generate/internal",
                          data={"common_name": EDGE_CA_NAME, "ttl": EDGE_CA_TTL, "key_type": "ec", "key_bits": 256})
        report.add(f"root CA {EDGE_CA_NAME!r} ({mount}/ca/pem)", "created")
    wanted = edge_role(opts)
    have = _read(client, f"{mount}/roles/{EDGE_PKI_ROLE}")
    same = _matches(wanted, have)
    if not same:
        client.write_data(f"{mount}/roles/{EDGE_PKI_ROLE}", data=wanted)
    report.add(f"pki role {EDGE_PKI_ROLE} ({', '.join(opts.edge_domains)}, localhost, IPs)",
               "unchanged" if same else ("created" if have is None else "updated"))


def bootstrap(client: hvac.Client, opts: Options) -> Report:
    """Idempotent: a second run changes nothing and reports every step `unchanged`/`skipped`."""
    report = Report()
    if not client.is_authenticated():
        raise BootstrapError(f"vault: the token is not valid at {client.url}: set VAULT_TOKEN (or "
                             "--vault-token-file) to a token of that server with the datalab bootstrap rights")
    ensure_kv(client, opts, report)
    ensure_database(client, opts, report)
    ensure_policies(client, report)
    ensure_edge_pki(client, opts, report)
    if opts.nomad_addr:
        ensure_jwt_auth(client, opts.nomad_addr, report)
    else:
        report.add("jwt auth for Nomad workload identity: no --nomad-addr / NOMAD_ADDR given "
                   "(Vault needs Nomad's JWKS URL)", "skipped")
    return report


def kv_json(client: hvac.Client, path: str) -> str:
    """A KV secret as JSON (for tests and the e2e runner)."""
    return json.dumps(_kv_read(client, path))


# ---- CLI ----------------------------------------------------------------------------------------

def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--vault-addr", default=os.environ.get("VAULT_ADDR", "http://127.0.0.1:8200"),
                   help="Vault/OpenBao address (default: $VAULT_ADDR, else http://127.0.0.1:8200); TLS from "
                   "VAULT_CACERT/VAULT_CAPATH, VAULT_CLIENT_CERT/KEY, VAULT_SKIP_VERIFY, VAULT_TLS_SERVER_NAME")
    p.add_argument("--vault-token-file", help="file holding a Vault token (default: $VAULT_TOKEN)")
    p.add_argument("--vault-cacert", default=os.environ.get("VAULT_CACERT"),
                   help="CA bundle for a TLS Vault (default: $VAULT_CACERT)")
    p.add_argument("--pg-admin-url", help="PostgreSQL superuser URL, postgresql://user:pw@host:port/db "
                   "(default: $DATALAB_PG_ADMIN_URL; prefer the env or --pg-admin-url-file: argv is public)")
    p.add_argument("--pg-admin-url-file", help="file holding the PostgreSQL superuser URL")
    p.add_argument("--pg-host-for-vault", help="host:port (or a unix socket dir) where Vault reaches "
                   "PostgreSQL (default: the admin URL's)")
    p.add_argument("--pg-sslmode", default="disable", help="sslmode of Vault's connection (default: disable)")
    p.add_argument("--database", default="datalab")
    p.add_argument("--nomad-addr", default=os.environ.get("NOMAD_ADDR"),
                   help="Nomad's address: enables JWT auth for workload identity (default: $NOMAD_ADDR)")
    p.add_argument("--vault-db-password-file", help="the vault role's initial password, set when bootstrap creates "
                   "the role or (re)configures Vault's connection, then rotated away at once "
                   "(default: $DATALAB_VAULT_DB_PASSWORD, else generated)")
    p.add_argument("--admin-password-file", help="the first admin's password (default: generated)")
    p.add_argument("--default-ttl", default="1h", help="database credentials' default TTL (default: 1h)")
    p.add_argument("--max-ttl", default="24h", help="database credentials' max TTL (default: 24h)")
    p.add_argument("--edge-domain", action="append", dest="edge_domains",
                   help="a domain the edge (Traefik) certificate may name, with its subdomains (repeatable; "
                   "default: service.consul); localhost and IP addresses are always allowed")


def _secret_arg(value: str | None, path: str | None, env: str | None) -> str | None:
    if value:
        return value
    if path:
        try:
            return Path(path).read_text().strip() or None
        except OSError as exc:
            raise BootstrapError(f"cannot read {path}: {exc.strerror}") from None
    return os.environ.get(env) if env else None


def run(args: argparse.Namespace) -> int:
    try:
        token = _secret_arg(None, args.vault_token_file, "VAULT_TOKEN")
        pg_admin_url = _secret_arg(args.pg_admin_url, args.pg_admin_url_file, "DATALAB_PG_ADMIN_URL")
        if not token or not pg_admin_url:
            print("vault bootstrap: a Vault token and the PostgreSQL admin URL are required "
                  "(--vault-token-file / VAULT_TOKEN, --pg-admin-url[-file] / DATALAB_PG_ADMIN_URL)", file=sys.stderr)
            return 2
        opts = Options(
            pg_admin_url=pg_admin_url, pg_host_for_vault=args.pg_host_for_vault, pg_sslmode=args.pg_sslmode,
            database=args.database, nomad_addr=args.nomad_addr,
            vault_db_password=_secret_arg(None, args.vault_db_password_file, "DATALAB_VAULT_DB_PASSWORD"),
            admin_password=_secret_arg(None, args.admin_password_file, None),
            default_ttl=args.default_ttl, max_ttl=args.max_ttl,
            edge_domains=tuple(args.edge_domains or Options.edge_domains),
        )
        env = VaultEnv.from_env(args.vault_addr, token, args.vault_cacert)
        print(f"vault bootstrap against {env.url}:", flush=True)
        report = bootstrap(env.client(), opts)
    except BootstrapError as exc:
        print(f"vault bootstrap failed: {exc}", file=sys.stderr)
        return 1
    except (hvac.exceptions.VaultError, requests.exceptions.RequestException) as exc:
        # Unreachable ("cannot reach Vault at ..."), TLS or a refused token: the one line.
        denied = env.access_error(exc)
        if denied is None and not isinstance(exc, hvac.exceptions.VaultError):
            denied = ClusterAccessError(f"cannot reach Vault at {env.url} ({type(exc).__name__})")
        print(f"vault bootstrap failed: {denied or exc}", file=sys.stderr)
        return 1
    changed = len(report.changed)
    print(f"done: {changed} change(s)." if changed else "done: everything was already in place.")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="datalab vault bootstrap", description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
