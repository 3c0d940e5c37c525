"""Redis (redis.asyncio): one pooled client per service process, as the service's own ACL user.

The credential is `redis.json` ({"username", "password"}) in the secrets dir (Nomad renders
it from kv/datalab/redis/<service>; `datalab up` writes one per user), read again
for every new connection, so a rotated password is picked up without a restart. Which keys
and commands each user may touch: redis_users.py. No file: no AUTH (a bare local Redis).
"""

from __future__ import annotations

import json

import redis
import redis.asyncio as aioredis
from redis.credentials import CredentialProvider

from .secret_files import SecretMissing, SecretStore
from .settings import BaseServiceSettings


class RedisCredential(CredentialProvider):
    """redis-py asks for this on every new connection (never logged: no password in repr)."""

    def __init__(self, secrets: SecretStore, name: str):
        self.secrets = secrets
        self.name = name

    def get_credentials(self) -> tuple[str] | tuple[str, str]:
        raw = self.secrets.read(self.name)
        if not raw:
            raise SecretMissing(f"secret {self.name!r} not found in {self.secrets.directory}")
        try:
            data = json.loads(raw)
            return data["username"], data["password"]
        except (ValueError, KeyError, TypeError):
            raise SecretMissing(f"secret {self.name!r} is not {{username, password}} JSON") from None

    async def get_credentials_async(self) -> tuple[str] | tuple[str, str]:
        return self.get_credentials()  # a tiny local file: no need to leave the loop

    def __repr__(self) -> str:
        return f"RedisCredential({self.name!r})"


def _credential(settings: BaseServiceSettings, secrets: SecretStore) -> RedisCredential | None:
    # The password lives in the secrets dir, never in the URL the environment carries.
    path = secrets.path(settings.redis_secret)
    return RedisCredential(secrets, settings.redis_secret) if path is not None and path.exists() else None


def create_redis(settings: BaseServiceSettings, secrets: SecretStore) -> aioredis.Redis:
    return aioredis.Redis.from_url(
        settings.redis_url,
        credential_provider=_credential(settings, secrets),
        socket_timeout=5,
        socket_connect_timeout=5,
        health_check_interval=30,
    )


def create_sync_redis(settings: BaseServiceSettings, secrets: SecretStore, **options) -> redis.Redis:
    """The synchronous client RQ needs (the compute API, in threads, and the workers)."""
    return redis.Redis.from_url(settings.redis_url, credential_provider=_credential(settings, secrets), **options)
