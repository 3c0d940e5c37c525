"""Following dataset deletes: data publishes a deleted dataset's id (core.events), viz drops
that dataset's charts."""

from __future__ import annotations

import asyncio
import logging

import redis.asyncio as aioredis

from datalab.core import events

from .chart_cache import ChartCache

log = logging.getLogger("datalab.viz")


async def follow_deletions(redis: aioredis.Redis, cache: ChartCache) -> None:
    """Drop a deleted dataset's charts, until cancelled. Only housekeeping: a missed event
    leaves images that expire with their TTL, and are never served (the metadata check
    answers 404)."""
    while True:
        try:
            async with redis.pubsub() as pubsub:
                await pubsub.subscribe(events.DATASET_DELETED)
                async for message in pubsub.listen():
                    if message["type"] == "message":
                        dataset_id = message["data"].decode()
                        dropped = await cache.drop_dataset(dataset_id)
                        log.info("charts dropped", extra={"dataset_id": dataset_id, "count": dropped})
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # Redis restarted, a timeout: subscribe again
            log.warning("dataset-deleted subscription lost; resubscribing", extra={"error": str(exc)})
            await asyncio.sleep(1)
