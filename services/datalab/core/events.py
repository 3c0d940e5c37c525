"""Redis pub/sub channels services use to tell each other what changed, and the one loop
that follows a channel."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

import redis.asyncio as aioredis

# Published by data with the dataset id after a delete; viz drops that dataset's charts.
DATASET_DELETED = "dl:events:dataset-deleted"

# Published by ai with the model id after a delete; every ai instance drops it from its cache.
MODEL_DELETED = "dl:events:model-deleted"

log = logging.getLogger("datalab.events")


async def follow(
    redis: aioredis.Redis,
    channel: str,
    on_message: Callable[[str], Awaitable[None]],
    *,
    on_subscribed: Callable[[], None] | None = None,
) -> None:
    """Call `on_message` with each message's text, until cancelled. While not subscribed
    (Redis away) messages go unheard: `on_subscribed` runs after each (re)subscription, for
    a follower that must make up for what it missed."""
    while True:
        try:
            async with redis.pubsub() as pubsub:
                await pubsub.subscribe(channel)
                if on_subscribed is not None:
                    on_subscribed()
                async for message in pubsub.listen():
                    if message["type"] == "message":
                        await on_message(message["data"].decode())
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # Redis restarted, a timeout: subscribe again
            log.warning("subscription lost; resubscribing",
                        extra={"channel": channel, "error": f"{type(exc).__name__}: {exc}"})
            await asyncio.sleep(1)
