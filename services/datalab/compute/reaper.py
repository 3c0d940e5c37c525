"""Never `started` forever: every reap_interval, jobs whose worker died move on (retried or
failed, dispatch.reap), and the queue lengths are exported to Prometheus."""

from __future__ import annotations

import asyncio
import logging

import redis
from prometheus_client import Counter, Gauge

from . import dispatch

log = logging.getLogger("datalab.compute")
QUEUE_LENGTH = Gauge("datalab_compute_queue_length", "Jobs waiting in a queue", ["queue"])
REAPED = Counter("datalab_compute_jobs_reaped_total", "Abandoned jobs moved out of `started`")


async def reap_forever(connection: redis.Redis, interval: float) -> None:
    while True:
        try:
            moved = await asyncio.to_thread(dispatch.reap, connection)
            if moved:
                REAPED.inc(moved)
                log.warning("abandoned jobs moved out of started", extra={"count": moved})
            for name, length in (await asyncio.to_thread(dispatch.queue_lengths, connection)).items():
                QUEUE_LENGTH.labels(name).set(length)
        except Exception:  # Redis hiccup: try again next round
            log.exception("reaper round failed")
        await asyncio.sleep(interval)
