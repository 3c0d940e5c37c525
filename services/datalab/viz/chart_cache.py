"""The chart image cache in Redis: each image under `dl:viz:img:{key}`, and per dataset a
set `dl:viz:{dataset_id}:keys` naming its images, so a dataset delete drops them all.
viz's Redis ACL user may touch only these keys (core.redis_users)."""

from __future__ import annotations

import logging

import redis.asyncio as aioredis

from datalab.contracts.cache_index import CacheIndex

log = logging.getLogger("datalab.viz")
DATASET_INDEX = CacheIndex("dl:viz")  # dl:viz:{dataset_id}:keys


def image_key(key: str) -> str:
    return f"dl:viz:img:{key}"


class ChartCache:
    """Images by cache key (spec.cache_key). Only an optimisation: when Redis fails, a
    chart is drawn instead of read, and drawn but not kept."""

    def __init__(self, redis: aioredis.Redis, ttl: int):
        self.redis = redis
        self.ttl = ttl

    async def get(self, key: str) -> bytes | None:
        try:
            image = await self.redis.get(image_key(key))
        except aioredis.RedisError as exc:
            log.warning("chart cache unreadable", extra={"error": str(exc)})
            return None
        return image if isinstance(image, bytes) else None  # bytes: the client does not decode

    async def put(self, dataset_id: str, key: str, image: bytes) -> None:
        try:
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.set(image_key(key), image, ex=self.ttl)
                DATASET_INDEX.add(pipe, dataset_id, image_key(key), self.ttl)
                await pipe.execute()
        except aioredis.RedisError as exc:
            log.warning("chart not cached", extra={"error": str(exc)})

    async def drop_dataset(self, dataset_id: str) -> int:
        """Delete the dataset's images; how many there were."""
        return await DATASET_INDEX.drop(self.redis, dataset_id)
