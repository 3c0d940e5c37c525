"""The ai service's start-up and shutdown hooks (ServiceSpec.on_startup/on_shutdown)."""

from __future__ import annotations

import asyncio
import logging
from contextlib import suppress

from fastapi import FastAPI

from datalab.core.settings import ensure_dir

from . import deletion_feed
from .records import ModelRecords
from .serving import ModelCache
from .settings import AiSettings
from .trainer import Trainer

log = logging.getLogger("datalab.ai")


async def start(app: FastAPI) -> None:
    """The model cache, the records, the trainer (read by deps.py) and the deletion feed."""
    state = app.state
    settings: AiSettings = state.settings
    cache = ModelCache(settings.model_cache_size, settings.batch_max_size, settings.batch_max_wait_ms / 1000)
    records = ModelRecords(state.sessions)
    state.trainer = Trainer(settings, records, cache, ensure_dir(settings.home / "models"), state.device)
    state.model_cache, state.model_records = cache, records
    state.deletion_feed = asyncio.create_task(deletion_feed.follow(state.redis, cache))
    log.info("ai ready", extra={"device": state.device, "batch_max_size": settings.batch_max_size})


async def stop(app: FastAPI) -> None:
    state = app.state
    if (task := getattr(state, "deletion_feed", None)) is not None:
        task.cancel()
        with suppress(asyncio.CancelledError):
            await task
    if (cache := getattr(state, "model_cache", None)) is not None:
        cache.close()
    if (trainer := getattr(state, "trainer", None)) is not None:
        trainer.close()
