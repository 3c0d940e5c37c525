"""First start: the accounts the platform needs before anyone can log in, from its secrets.

- the admin user, with the `admin_password` secret (if given; never changed afterwards)
- the service account, the platform's own identity (workers act with it, on nobody's
  behalf): an admin user that cannot log in, holding the API key from the
  `service_api_key` secret (re-stored at every start, so a rotated key lands)
"""

from __future__ import annotations

import logging

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert

from datalab.core.auth import api_key_hash, api_key_prefix
from datalab.core.secret_files import SecretStore

from .accounts import Sessions, hash_password, unusable_password_hash
from .key_cache import KeyCache
from .settings import GatewaySettings
from .tables import ApiKey, User, new_id

log = logging.getLogger("datalab.gateway")


async def ensure_admin(sessions: Sessions, secrets: SecretStore, settings: GatewaySettings) -> None:
    password = secrets.read("admin_password")
    if not password:
        return
    async with sessions() as session, session.begin():
        exists = await session.scalar(select(User.id).where(User.username == settings.admin_user))
        if exists:
            return
        password_hash = await hash_password(password)
        await session.execute(
            insert(User)
            .values(id=new_id(), username=settings.admin_user,
                    password_hash=password_hash, is_admin=True)
            .on_conflict_do_nothing(index_elements=[User.username])
        )
    log.info("admin user created", extra={"username": settings.admin_user})


async def ensure_service_account(sessions: Sessions, secrets: SecretStore, settings: GatewaySettings,
                                 cache: KeyCache) -> None:
    key = secrets.read("service_api_key")
    prefix = api_key_prefix(key) if key else None
    if key is None or prefix is None:
        return
    async with sessions() as session, session.begin():
        user_id = await session.scalar(select(User.id).where(User.username == settings.service_account))
        if user_id is None:
            await session.execute(
                insert(User)
                .values(id=new_id(), username=settings.service_account, password_hash=unusable_password_hash(),
                        is_admin=True)
                .on_conflict_do_nothing(index_elements=[User.username])
            )
            user_id = await session.scalar(select(User.id).where(User.username == settings.service_account))
        key_hash = api_key_hash(key)
        await session.execute(
            insert(ApiKey)
            .values(id=new_id(), user_id=user_id, name="platform service key", prefix=prefix, key_hash=key_hash)
            .on_conflict_do_update(index_elements=[ApiKey.prefix], set_={"key_hash": key_hash, "revoked_at": None})
        )
    await cache.forget(prefix)  # the row may have changed (un-revoked)
