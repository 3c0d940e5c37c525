"""Compute's start-up, shutdown and readiness: RQ's synchronous Redis connection, the
dispatchers, and the reaper task."""

from __future__ import annotations

import asyncio
import contextlib

from fastapi import FastAPI

from datalab.core.cache import create_sync_redis

from .dispatch import Dispatchers, NomadDispatcher, RQDispatcher
from .reaper import reap_forever
from .settings import ComputeSettings


async def startup(app: FastAPI) -> None:
    settings: ComputeSettings = app.state.settings
    # RQ speaks synchronous redis-py; it runs in threads, off the event loop.
    app.state.rq_redis = create_sync_redis(settings, app.state.secrets, socket_timeout=10)
    app.state.dispatchers = Dispatchers(RQDispatcher())
    if settings.nomad_addr:
        nomad = NomadDispatcher(settings.nomad_addr, token=app.state.secrets.read("nomad_token"))
        app.state.dispatchers = Dispatchers(RQDispatcher(), nomad, frozenset(settings.nomad_dispatch_queues))
    app.state.reaper = asyncio.create_task(reap_forever(app.state.rq_redis, settings.reap_interval))


async def shutdown(app: FastAPI) -> None:
    app.state.reaper.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await app.state.reaper
    app.state.rq_redis.close()


async def rq_ready(app: FastAPI) -> None:
    await asyncio.to_thread(app.state.rq_redis.ping)
