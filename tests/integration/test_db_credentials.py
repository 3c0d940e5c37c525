"""The engine re-reads its credential for each new connection: a rotation drops nothing."""

import json
import secrets

import pytest
from sqlalchemy import text

from datalab.core.db import create_engine
from datalab.core.secrets import SecretStore, write_secret
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
    engine = create_engine(settings, SecretStore(tmp_path))

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
