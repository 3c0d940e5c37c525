"""API keys as forwardAuth sees them, cached in Redis (shared by every gateway instance).

A warm cache answers without PostgreSQL. Revocation overwrites the entry with a revoked
one at once (`revoke`), so every instance refuses the key from the next request on; a
fill never overwrites (SET NX), so a lookup that read the row just before the revocation
cannot put the live key back. The entry holds the key's SHA-256, never the key.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

import redis.asyncio as redis


@dataclass(frozen=True)
class KeyEntry:
    key_id: str
    key_hash: str
    user_id: str
    username: str
    is_admin: bool
    usable: bool  # False: revoked, or its user disabled


class KeyCache:
    def __init__(self, client: redis.Redis, ttl_seconds: int):
        self.redis = client
        self.ttl = ttl_seconds

    @staticmethod
    def _name(prefix: str) -> str:
        return f"dl:apikey:{prefix}"

    async def get(self, prefix: str) -> KeyEntry | None:
        raw = await self.redis.get(self._name(prefix))
        return KeyEntry(**json.loads(raw)) if raw else None

    async def fill(self, prefix: str, entry: KeyEntry) -> None:
        await self.redis.set(self._name(prefix), json.dumps(asdict(entry)), ex=self.ttl, nx=True)

    async def revoke(self, prefix: str, entry: KeyEntry) -> None:
        revoked = KeyEntry(**{**asdict(entry), "usable": False})
        await self.redis.set(self._name(prefix), json.dumps(asdict(revoked)), ex=self.ttl)

    async def forget(self, prefix: str) -> None:
        await self.redis.delete(self._name(prefix))

    async def first_use(self, key_id: str) -> bool:
        """True once per key, ever (the audit trail's "used for the first time")."""
        return bool(await self.redis.set(f"dl:apikey-used:{key_id}", 1, nx=True))
