"""Polars work (conversions, describes, queries) runs off the event loop, a few at once: each
may peak near the dataset caps' memory, so N at once need N times it."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


class ScanSlots:
    def __init__(self, size: int):
        self._slots = asyncio.Semaphore(size)

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """`fn(*args)` in a thread, once a slot is free (more wait their turn)."""
        async with self._slots:
            return await asyncio.to_thread(fn, *args)
