"""Model deletions on Redis pub/sub: every ai instance drops a deleted model from its cache,
whichever instance deleted it (predict trusts the cache: a cached model answers without a
database round trip)."""

from __future__ import annotations

import asyncio
import logging

import redis.asyncio as aioredis

from datalab.core import events

from .serving import ModelCache

log = logging.getLogger("datalab.ai")


async def announce(redis: aioredis.Redis, model_id: str) -> None:
    await redis.publish(events.MODEL_DELETED, model_id)


async def follow(redis: aioredis.Redis, cache: ModelCache) -> None:
    """Drop every announced model from `cache`, until cancelled. While not subscribed (Redis
    away) deletions go unheard, so each (re)subscription clears the whole cache."""
    while True:
        pubsub = redis.pubsub()
        try:
            await pubsub.subscribe(events.MODEL_DELETED)
            cache.clear()  # whatever was deleted while we were not listening
            while True:
                message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=None)
                if message is not None:
                    cache.drop(message["data"].decode())
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # Redis went away: resubscribe (and clear) when it is back
            log.warning("model deletion feed lost", extra={"error": f"{type(exc).__name__}: {exc}"})
            await asyncio.sleep(1)
        finally:
            await pubsub.aclose()
