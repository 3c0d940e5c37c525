"""Model deletions on Redis pub/sub: every ai instance drops a deleted model from its cache,
whichever instance deleted it (predict trusts the cache: a cached model answers without a
database round trip)."""

from __future__ import annotations

import redis.asyncio as aioredis

from datalab.core import events

from .serving import ModelCache


async def announce(redis: aioredis.Redis, model_id: str) -> None:
    await redis.publish(events.MODEL_DELETED, model_id)


async def follow(redis: aioredis.Redis, cache: ModelCache) -> None:
    """Drop every announced model from `cache`, until cancelled. Deletions announced while
    not subscribed go unheard, so each (re)subscription clears the whole cache."""

    async def drop(model_id: str) -> None:
        cache.drop(model_id)

    await events.follow(redis, events.MODEL_DELETED, drop, on_subscribed=cache.clear)
