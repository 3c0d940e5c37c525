"""Start-up and shutdown of the viz service: the render pool (warmed before /ready says
yes) and the task following dataset deletes."""

from __future__ import annotations

import asyncio
import contextlib

from fastapi import FastAPI

from .chart_cache import ChartCache
from .charts import Charts
from .deletions import follow_deletions
from .render_pool import RenderPool
from .settings import VizSettings


async def start(app: FastAPI) -> None:
    settings: VizSettings = app.state.settings
    cache = ChartCache(app.state.redis, settings.chart_cache_ttl)
    app.state.charts = charts = Charts(cache, RenderPool(settings.render_processes))
    app.state.viz_tasks = [
        asyncio.create_task(follow_deletions(app.state.redis, cache), name="viz-delete-listener"),
        asyncio.create_task(charts.pool.warm(), name="viz-warm-renderers"),
    ]


async def stop(app: FastAPI) -> None:
    for task in app.state.viz_tasks:
        task.cancel()
    for task in app.state.viz_tasks:
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
    await app.state.charts.close()


async def renderer_ready(app: FastAPI) -> None:
    # Not ready (no traffic) until the workers are up: the first chart is not the slow one.
    if not app.state.charts.pool.warmed:
        raise RuntimeError("render workers are starting")
