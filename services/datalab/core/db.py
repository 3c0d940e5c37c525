"""Async SQLAlchemy 2 + asyncpg, with the credential re-read for every new connection.

The URL holds no user or password. The pool opens each connection with the credential the
secrets dir holds at that moment, so when Vault issues a new user (Nomad re-renders
`secrets/db.json`) the next connection simply uses it. `pool_pre_ping` drops connections
whose user was revoked; `pool_recycle` bounds how long an old one lives.

When PostgreSQL rejects the credential (Vault revoked the lease: the user is gone), the
connection waits, bounded, for db.json to name a new one. Nomad's template notices the
revocation at its next lease renewal (about 2/3 of the lease TTL) and renders a fresh user;
a request in that gap is slower, not failed.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable
from typing import TypeVar

import asyncpg
from sqlalchemy import MetaData, make_url, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine

from .errors import Problem
from .secret_files import DbCredential, SecretStore
from .settings import BaseServiceSettings

log = logging.getLogger("datalab.db")
DB_UNAVAILABLE = "The database is not answering or refuses this service's credential; try again shortly."
T = TypeVar("T")


def is_row_id(value: str) -> bool:
    """Row ids are uuids: anything else names no row, and must not reach PostgreSQL (a uuid
    column refuses it with an error, a NUL byte breaks the protocol)."""
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True


def create_db_engine(settings: BaseServiceSettings, secrets: SecretStore) -> AsyncEngine:
    url = make_url(settings.database_url)
    connect_args = {"host": url.host, "port": url.port, "database": url.database, "timeout": 5,
                    "command_timeout": 60, **url.query}
    wait = settings.db_credential_wait_seconds
    last_user: list[str | None] = [None]

    def read() -> DbCredential:
        return secrets.db_credential(settings.db_user, settings.db_password)

    def current() -> DbCredential:
        cred = read()
        if cred.username != last_user[0]:
            log.info("database credential in use", extra={"db_user": cred.username})
            last_user[0] = cred.username
        return cred

    async def connect() -> asyncpg.Connection:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        while True:
            cred = current()
            try:
                return await asyncpg.connect(user=cred.username, password=cred.password, **connect_args)
            except (asyncpg.InvalidPasswordError, asyncpg.InvalidAuthorizationSpecificationError) as exc:
                if loop.time() >= deadline:
                    # No new credential in time (Vault away longer than the wait): the
                    # request can be retried, so a 503 problem, not an internal error.
                    log.error("database credential still rejected after %.0fs; answering 503", wait,
                              extra={"db_user": cred.username})
                    raise Problem(503, DB_UNAVAILABLE, headers={"Retry-After": "5"}) from exc
                log.warning("database credential rejected (revoked?); waiting for a new one",
                            extra={"db_user": cred.username})
                # Polls the file Nomad rewrites: there is no event to wait on.
                while loop.time() < deadline and read() == cred:  # noqa: ASYNC110
                    await asyncio.sleep(0.25)
            except (OSError, TimeoutError, asyncpg.CannotConnectNowError, asyncpg.TooManyConnectionsError) as exc:
                # PostgreSQL down, restarting or full: as for Redis, retry-able.
                log.warning("database not answering", extra={"error": type(exc).__name__})
                raise Problem(503, DB_UNAVAILABLE, headers={"Retry-After": "5"}) from exc

    return create_async_engine(
        url,
        async_creator=connect,
        pool_size=settings.db_pool_size,
        max_overflow=settings.db_pool_size,
        pool_pre_ping=True,
        pool_recycle=300,
        pool_timeout=10,
    )


def session_factory(engine: AsyncEngine) -> async_sessionmaker:
    return async_sessionmaker(engine, expire_on_commit=False)


async def create_schema(engine: AsyncEngine, metadata: MetaData) -> None:
    """Create the service's schema and tables if missing (idempotent).

    With Vault-issued users, connections run `SET ROLE <service>_owner` (the role's
    default), so what this creates is owned by the long-lived owner role.
    """
    async with engine.begin() as conn:
        if metadata.schema:
            # Under Vault the bootstrap made the schema (owned by <service>_owner) and the
            # service's user may not CREATE in the database: only create what is missing.
            exists = await conn.scalar(
                text("SELECT 1 FROM pg_namespace WHERE nspname = :name"), {"name": metadata.schema}
            )
            if not exists:
                await conn.execute(text(f'CREATE SCHEMA "{metadata.schema}"'))
        await conn.run_sync(metadata.create_all)


# A session ended under us: Vault revoked the credential (its revocation ends the user's
# sessions), PostgreSQL restarted, or a proxy dropped the connection.
_DISCONNECT_SQLSTATES = {"57P01", "57P02", "57P03", "08000", "08003", "08006"}


def is_disconnect(exc: BaseException) -> bool:
    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        return True
    orig = getattr(exc, "orig", None)
    cause = getattr(orig, "__cause__", None) or orig
    return getattr(cause, "sqlstate", None) in _DISCONNECT_SQLSTATES or type(cause).__name__ in (
        "ConnectionDoesNotExistError",
        "InterfaceError",
    )


async def read_with_retry(
    sessions: async_sessionmaker, fn: Callable[[AsyncSession], Awaitable[T]], attempts: int = 3
) -> T:
    """Run a read-only unit of work, again on a fresh connection if the first one was cut
    mid-query: a credential rotation then costs a retry, not a failed request."""
    for attempt in range(attempts):
        try:
            async with sessions() as session:
                return await fn(session)
        except DBAPIError as exc:
            if attempt + 1 == attempts or not is_disconnect(exc):
                raise
            log.info("connection lost during a read; retrying on a new one")
    raise AssertionError("unreachable")


async def ping(engine: AsyncEngine) -> None:
    async with engine.connect() as conn:
        await conn.execute(text("SELECT 1"))
