"""Redis (redis.asyncio): one pooled client per service process."""

from __future__ import annotations

import redis.asyncio as redis

from .secrets import SecretStore
from .settings import BaseServiceSettings


def create_redis(settings: BaseServiceSettings, secrets: SecretStore) -> redis.Redis:
    # The password lives in the secrets dir, never in the URL the environment carries.
    return redis.Redis.from_url(
        settings.redis_url,
        password=secrets.read("redis_password") or None,
        socket_timeout=5,
        socket_connect_timeout=5,
        health_check_interval=30,
    )
