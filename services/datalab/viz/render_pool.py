"""Where charts are drawn: a pool of worker processes, and one render shared by concurrent
requests for the same image."""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
from collections.abc import Awaitable, Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from . import render

log = logging.getLogger("datalab.viz")


class RenderPool:
    """Draws in worker processes: matplotlib holds the GIL while it draws, so threads would
    draw one chart at a time and make the event loop lag (bench/viz_cache.py). forkserver,
    not fork: a fork of this threaded process could inherit a held lock. A pool whose worker
    died is replaced and the render tried once more."""

    def __init__(self, workers: int):
        self.workers = workers
        self.context = multiprocessing.get_context("forkserver")
        # The fork server imports matplotlib once; every worker forked from it starts warm.
        self.context.set_forkserver_preload(["datalab.viz.render"])
        self.pool = self._new()
        self.warmed = False

    def _new(self) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(self.workers, mp_context=self.context)

    async def draw(self, *args: Any) -> tuple[bytes, float]:
        """render.draw(*args) in a worker: (image, seconds it took)."""
        loop = asyncio.get_running_loop()
        pool = self.pool
        try:
            return await loop.run_in_executor(pool, render.draw, *args)
        except BrokenProcessPool:
            log.warning("render worker died; starting a new pool")
            if self.pool is pool:  # the first caller to notice replaces it
                pool.shutdown(wait=False, cancel_futures=True)
                self.pool = self._new()
            return await loop.run_in_executor(self.pool, render.draw, *args)

    async def warm(self) -> None:
        """Start every worker (and its matplotlib import) now, not on the first request."""
        loop = asyncio.get_running_loop()
        await asyncio.gather(*(loop.run_in_executor(self.pool, render.warm_up) for _ in range(self.workers)))
        self.warmed = True

    async def close(self) -> None:
        await asyncio.to_thread(self.pool.shutdown, wait=True, cancel_futures=True)


class SingleFlight:
    """Concurrent requests for one image share one render (a dashboard opening at once)."""

    def __init__(self) -> None:
        self.tasks: dict[str, asyncio.Task[bytes]] = {}

    async def run(self, key: str, make: Callable[[], Awaitable[bytes]]) -> bytes:
        task = self.tasks.get(key)
        if task is None:
            task = asyncio.ensure_future(make())
            self.tasks[key] = task
            task.add_done_callback(lambda t: self._done(key, t))
        # Shielded: one caller going away does not cancel the others' render.
        return await asyncio.shield(task)

    def _done(self, key: str, task: asyncio.Task[bytes]) -> None:
        if self.tasks.get(key) is task:
            del self.tasks[key]
        if not task.cancelled():
            task.exception()  # retrieved here, so an error nobody awaits is not logged twice
