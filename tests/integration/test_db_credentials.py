"""The engine re-reads its credential for each new connection: a rotation drops nothing."""

import json
import secrets

import pytest
from sqlalchemy import text

from datalab.core.db import create_db_engine
from datalab.core.secret_files import SecretStore, write_secret
from datalab.core.settings import BaseServiceSettings

pytestmark = pytest.mark.integration


def make_role(platform, name: str) -> str:
    password = secrets.token_urlsafe(16)
    platform.postgres.execute(f"CREATE ROLE \"{name}\" LOGIN PASSWORD '{password}'")
    return password


async def test_rotated_credential_is_used_by_the_next_connection(platform, tmp_path):
    suffix = secrets.token_hex(4)
    old, new = f"rot_old_{suffix}", f"rot_new_{suffix}"
    write_secret(tmp_path / "db.json", json.dumps({"username": old, "password": make_role(platform, old)}))
    new_password = make_role(platform, new)
    settings = BaseServiceSettings(
        database_url=f"postgresql+asyncpg://127.0.0.1:{platform.config.postgres_port}/datalab", db_pool_size=2
    )
    engine = create_db_engine(settings, SecretStore(tmp_path))

    async def whoami() -> str:
        async with engine.connect() as conn:
            return await conn.scalar(text("SELECT current_user"))

    try:
        assert await whoami() == old
        # Vault issues a new user and revokes the old one: Nomad re-renders db.json, the
        # old sessions are killed and the role dropped.
        write_secret(tmp_path / "db.json", json.dumps({"username": new, "password": new_password}))
        platform.postgres.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = $1", old)
        platform.postgres.execute(f'DROP ROLE "{old}"')
        # pool_pre_ping finds the dead connection and reconnects with the new credential.
        assert [await whoami() for _ in range(3)] == [new] * 3
    finally:
        await engine.dispose()
        platform.postgres.execute(f'DROP ROLE IF EXISTS "{new}"')


async def test_revoked_credential_waits_for_the_next_one(platform, tmp_path):
    """Vault revoked the user and Nomad has not re-rendered db.json yet: a new connection
    waits for the fresh credential instead of failing the request."""
    import asyncio

    suffix = secrets.token_hex(4)
    old, new = f"rev_old_{suffix}", f"rev_new_{suffix}"
    write_secret(tmp_path / "db.json", json.dumps({"username": old, "password": make_role(platform, old)}))
    settings = BaseServiceSettings(
        database_url=f"postgresql+asyncpg://127.0.0.1:{platform.config.postgres_port}/datalab", db_pool_size=2,
        db_credential_wait_seconds=20,
    )
    engine = create_db_engine(settings, SecretStore(tmp_path))

    async def whoami() -> str:
        async with engine.connect() as conn:
            return await conn.scalar(text("SELECT current_user"))

    async def render_later() -> None:
        await asyncio.sleep(1.5)  # the template notices at its next renewal
        password = make_role(platform, new)
        write_secret(tmp_path / "db.json", json.dumps({"username": new, "password": password}))

    try:
        assert await whoami() == old
        platform.postgres.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = $1", old)
        platform.postgres.execute(f'DROP ROLE "{old}"')
        renderer = asyncio.create_task(render_later())
        assert await whoami() == new  # waited for the render, did not fail
        await renderer
    finally:
        await engine.dispose()
        platform.postgres.execute(f'DROP ROLE IF EXISTS "{new}"')


async def test_rejected_credential_fails_after_the_wait_without_the_password(platform, tmp_path):
    """Still refused when the wait is over (Vault away longer than it): a 503 problem the
    client may retry (Retry-After), never an internal error, and no password in it."""
    from datalab.core.errors import Problem

    password = secrets.token_urlsafe(16)
    write_secret(tmp_path / "db.json", json.dumps({"username": f"nobody_{secrets.token_hex(4)}", "password": password}))
    settings = BaseServiceSettings(
        database_url=f"postgresql+asyncpg://127.0.0.1:{platform.config.postgres_port}/datalab",
        db_credential_wait_seconds=0.5,
    )
    engine = create_db_engine(settings, SecretStore(tmp_path))
    try:
        with pytest.raises(Problem) as err:
            async with engine.connect():
                pass
        assert err.value.status == 503 and err.value.headers == {"Retry-After": "5"}
        assert "password authentication failed" in str(err.value.__cause__)
        assert password not in str(err.value) and password not in str(err.value.__cause__)
    finally:
        await engine.dispose()


async def test_a_database_that_does_not_answer_is_a_503_problem(tmp_path):
    from datalab.core.errors import Problem
    from datalab.devstack.servers import free_port

    write_secret(tmp_path / "db.json", json.dumps({"username": "u", "password": secrets.token_urlsafe(16)}))
    settings = BaseServiceSettings(database_url=f"postgresql+asyncpg://127.0.0.1:{free_port()}/datalab")
    engine = create_db_engine(settings, SecretStore(tmp_path))
    try:
        with pytest.raises(Problem) as err:
            async with engine.connect():
                pass
        assert err.value.status == 503 and isinstance(err.value.__cause__, OSError)
    finally:
        await engine.dispose()
