"""Following dataset deletes: data publishes a deleted dataset's id (core.events), viz drops
that dataset's charts."""

from __future__ import annotations

import logging

import redis.asyncio as aioredis

from datalab.core import events

from .chart_cache import ChartCache

log = logging.getLogger("datalab.viz")


async def follow_deletions(redis: aioredis.Redis, cache: ChartCache) -> None:
    """Drop a deleted dataset's charts, until cancelled. Only housekeeping: a missed event
    leaves images that expire with their TTL, and are never served (the metadata check
    answers 404)."""

    async def drop(dataset_id: str) -> None:
        dropped = await cache.drop_dataset(dataset_id)
        log.info("charts dropped", extra={"dataset_id": dataset_id, "count": dropped})

    await events.follow(redis, events.DATASET_DELETED, drop)
