"""Query results cached in Redis until their dataset is deleted (or the TTL passes).

A result is `dl:q:{dataset_id}:{sha256 of the query}`, named in the dataset's index
`dl:q:{dataset_id}:keys` (contracts.CacheIndex); the data service's Redis ACL user may touch
`dl:q:*` only (core.redis_users). The cache is an optimisation: unreadable is a miss,
unwritable (Redis full: maxmemory with noeviction, or down) is "not cached", never an error
for the caller.
"""

from __future__ import annotations

import hashlib
import logging

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from datalab.contracts.cache_index import CacheIndex

from .query import Query

log = logging.getLogger("datalab.data")
INDEX = CacheIndex("dl:q")


class QueryCache:
    def __init__(self, redis: aioredis.Redis, ttl_seconds: int):
        self.redis = redis
        self.ttl = ttl_seconds

    @staticmethod
    def key(dataset_id: str, query: Query) -> str:
        return f"{INDEX.prefix}:{dataset_id}:{hashlib.sha256(query.cache_key().encode()).hexdigest()}"

    async def get(self, dataset_id: str, query: Query) -> bytes | str | None:
        try:
            return await self.redis.get(self.key(dataset_id, query))
        except RedisError as exc:
            log.warning("query cache unreadable", extra={"error": str(exc)})
            return None

    async def put(self, dataset_id: str, query: Query, result: bytes) -> None:
        key = self.key(dataset_id, query)
        try:
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.set(key, result, ex=self.ttl)
                INDEX.add(pipe, dataset_id, key, self.ttl * 2)  # outlives every key it names
                await pipe.execute()
        except RedisError as exc:
            log.warning("query result not cached", extra={"error": str(exc)})

    async def drop(self, dataset_id: str) -> None:
        """Forget every cached result of the dataset (it is being deleted)."""
        await INDEX.drop(self.redis, dataset_id)
