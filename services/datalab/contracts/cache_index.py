"""A per-dataset Redis set naming the keys derived from that dataset (query results, chart
images), so deleting the dataset finds and drops them all.

Each service keeps its own index under its own key prefix (its Redis ACL user may touch
only that prefix: core.redis_users)."""

from __future__ import annotations

import redis.asyncio as aioredis


class CacheIndex:
    def __init__(self, prefix: str):
        self.prefix = prefix  # e.g. "dl:q" -> dl:q:{dataset_id}:keys

    def key(self, dataset_id: str) -> str:
        return f"{self.prefix}:{dataset_id}:keys"

    def add(self, pipe: aioredis.client.Pipeline, dataset_id: str, key: str, ttl: int) -> None:
        """Queue, on the caller's pipeline, the entry for `key` (kept at least `ttl` seconds)."""
        pipe.sadd(self.key(dataset_id), key)
        pipe.expire(self.key(dataset_id), ttl)

    async def drop(self, redis: aioredis.Redis, dataset_id: str) -> int:
        """Delete every indexed key and the index; how many keys it named."""
        keys = await redis.smembers(self.key(dataset_id))
        await redis.unlink(self.key(dataset_id), *keys)
        return len(keys)
