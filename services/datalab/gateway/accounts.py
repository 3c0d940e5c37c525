"""Users and their API keys in PostgreSQL (schema `gateway`), and how each proves who it is:
a user by password (argon2), an API key by its SHA-256 (looked up through `KeyCache`)."""

from __future__ import annotations

import asyncio
import hmac
import secrets
from datetime import UTC, datetime

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerifyMismatchError
from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from starlette.requests import Request

from datalab.core import db
from datalab.core.audit import audit
from datalab.core.auth import Principal, api_key_hash, api_key_prefix, new_api_key
from datalab.core.errors import Problem

from .key_cache import KeyCache, KeyEntry
from .tables import ApiKey, User, new_id

Sessions = async_sessionmaker[AsyncSession]

hasher = PasswordHasher()
# Verified against when the user does not exist, so a wrong name costs what a wrong password does.
_DUMMY_HASH = hasher.hash(secrets.token_urlsafe(16))


def principal_of(user: User) -> Principal:
    return Principal(user_id=user.id, username=user.username, is_admin=user.is_admin)


async def hash_password(password: str) -> str:
    return await asyncio.to_thread(hasher.hash, password)


def unusable_password_hash() -> str:
    """The hash of a password nobody knows: an account that cannot log in."""
    return hasher.hash(secrets.token_urlsafe(32))


async def _password_ok(password_hash: str, password: str) -> bool:
    def verify() -> bool:
        try:
            return hasher.verify(password_hash, password)
        except (VerifyMismatchError, InvalidHashError):
            return False

    return await asyncio.to_thread(verify)


# ---- users ----------------------------------------------------------------------------------


async def check_password(sessions: Sessions, username: str, password: str) -> User | None:
    """The user if the name and password match and the user is enabled; None otherwise
    (an unknown name takes as long as a wrong password)."""
    user = await db.read_with_retry(
        sessions, lambda session: session.scalar(select(User).where(User.username == username)))
    ok = await _password_ok(user.password_hash if user else _DUMMY_HASH, password)
    return user if user is not None and ok and not user.disabled else None


async def get_user(sessions: Sessions, user_id: str) -> User | None:
    return await db.read_with_retry(sessions, lambda session: session.get(User, user_id))


async def create_user(sessions: Sessions, username: str, password_hash: str, is_admin: bool) -> str | None:
    """The new user's id; None when the name is taken."""
    async with sessions() as session, session.begin():
        return await session.scalar(
            insert(User)
            .values(id=new_id(), username=username, password_hash=password_hash, is_admin=is_admin)
            .on_conflict_do_nothing(index_elements=[User.username])
            .returning(User.id)
        )


# ---- API keys -------------------------------------------------------------------------------


async def create_api_key(sessions: Sessions, user_id: str, name: str) -> tuple[ApiKey, str]:
    """A new key for the user: its row, and the key itself (shown once, stored as a hash)."""
    key, prefix, digest = new_api_key()
    row = ApiKey(user_id=user_id, name=name, prefix=prefix, key_hash=digest)
    async with sessions() as session, session.begin():
        session.add(row)
    return row, key


async def list_api_keys(sessions: Sessions, user_id: str) -> list[ApiKey]:
    async with sessions() as session:
        rows = await session.scalars(select(ApiKey).where(ApiKey.user_id == user_id).order_by(ApiKey.created_at))
        return list(rows)


async def revoke_api_key(sessions: Sessions, cache: KeyCache, key_id: str, owner_id: str) -> ApiKey | None:
    """Revoke the owner's key (None: no such key of theirs). Every gateway instance refuses
    it from the next request on."""
    async with sessions() as session, session.begin():
        row = await session.get(ApiKey, key_id) if db.is_row_id(key_id) else None
        if row is None or row.user_id != owner_id:
            return None
        row.revoked_at = row.revoked_at or datetime.now(UTC)
        user = await session.get(User, row.user_id)
    await cache.revoke(row.prefix, _entry(row, user))  # after the commit
    return row


async def api_key_principal(request: Request, sessions: Sessions, cache: KeyCache, key: str) -> Principal:
    """Who the API key belongs to, or a 401. A warm cache answers without PostgreSQL."""
    prefix = api_key_prefix(key)
    if prefix is None:
        raise Problem(401, "The API key is not valid.")
    entry = await cache.get(prefix)
    cold = entry is None
    if cold:
        entry = await _key_entry(sessions, prefix)
    if entry is None or not hmac.compare_digest(entry.key_hash, api_key_hash(key)) or not entry.usable:
        raise Problem(401, "The API key is not valid.")
    if cold:  # filled only for the right key, so a wrong secret cannot skip the audit below
        if await cache.first_use(entry.key_id):
            audit("api_key.first_use", "success", actor=entry.username, object=f"api_key:{entry.key_id}",
                  request=request)
        await cache.fill(prefix, entry)
    return Principal(user_id=entry.user_id, username=entry.username, is_admin=entry.is_admin, via="api_key")


def _entry(api_key: ApiKey, user: User | None) -> KeyEntry:
    # The user row goes with its keys (ON DELETE CASCADE): a key's user is there.
    assert user is not None, f"api key {api_key.id} without its user"
    return KeyEntry(key_id=api_key.id, key_hash=api_key.key_hash, user_id=user.id, username=user.username,
                    is_admin=user.is_admin, usable=api_key.revoked_at is None and not user.disabled)


async def _key_entry(sessions: Sessions, prefix: str) -> KeyEntry | None:
    async def lookup(session: AsyncSession) -> tuple[ApiKey, User] | None:
        query = select(ApiKey, User).join(User, User.id == ApiKey.user_id).where(ApiKey.prefix == prefix)
        found = (await session.execute(query)).first()
        return None if found is None else (found[0], found[1])

    # Every cold API-key request through the edge comes here (forwardAuth): a session cut
    # by a credential rotation costs a retry, not a refused request.
    row = await db.read_with_retry(sessions, lookup)
    return _entry(*row) if row is not None else None
