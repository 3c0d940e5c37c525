"""Serving: an LRU cache of loaded models, each with a micro-batcher for its predictions.

A 1-row predict of a 300-tree forest costs about what a 64-row one does (the per-call work
is walking every tree, validating input, dispatching), so concurrent requests for one
model are coalesced into one call: bench/predict_batching.py measures the gain.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from prometheus_client import Counter, Histogram

from datalab.ml import training
from datalab.ml.training import TrainedModel

from .problems import unprocessable

PREDICTIONS = Counter("datalab_ai_predictions_total", "Rows predicted", ["kind"])
BATCH_ROWS = Histogram(
    "datalab_ai_predict_batch_rows",
    "Rows per model predict call (after micro-batching)",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096),
)
CACHE = Counter("datalab_ai_model_cache_total", "Model cache lookups", ["result"])

PredictFn = Callable[[np.ndarray], Sequence[Any]]  # one result per row of its input


@dataclass
class _Waiting:
    X: np.ndarray
    future: asyncio.Future[Sequence[Any]]
    arrived: float


class Batcher:
    """Coalesces concurrent predict calls for one model into one call off the event loop.

    The oldest waiting request opens a window of `max_wait` seconds; the batch leaves when it
    holds `max_rows` rows (or the next request would not fit) or the window closes. While a
    batch runs the next one gathers, so under load batches fill without waiting. A request
    is never split. `max_rows=1` turns batching off: one request per call, one call at a
    time, never waiting (the bench's baseline).
    """

    def __init__(self, fn: PredictFn, max_rows: int, max_wait: float):
        self.fn = fn
        self.max_rows = max_rows
        self.max_wait = max_wait
        self._waiting: deque[_Waiting] = deque()
        self._arrival = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def submit(self, X: np.ndarray) -> Sequence[Any]:
        loop = asyncio.get_running_loop()
        item = _Waiting(X, loop.create_future(), loop.time())
        self._waiting.append(item)
        self._arrival.set()
        # The drain task ends when the queue is empty; the next request starts another.
        if self._task is None or self._task.done():
            self._task = loop.create_task(self._drain())
        return await item.future

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        while self._waiting:
            batch: list[_Waiting] = []
            deadline = self._waiting[0].arrived + self.max_wait
            rows, full = self._take(batch, 0)
            while not full and (remaining := deadline - loop.time()) > 0:
                self._arrival.clear()
                try:
                    await asyncio.wait_for(self._arrival.wait(), remaining)
                except TimeoutError:
                    break
                rows, full = self._take(batch, rows)
            if batch:
                await self._run(batch, rows)

    def _take(self, batch: list[_Waiting], rows: int) -> tuple[int, bool]:
        """Move waiting requests into `batch` while they fit: (rows, whether it is full)."""
        while self._waiting:
            item = self._waiting[0]
            if item.future.done():  # its caller went away
                self._waiting.popleft()
                continue
            if rows and rows + len(item.X) > self.max_rows:
                return rows, True
            batch.append(self._waiting.popleft())
            rows += len(item.X)
        return rows, rows >= self.max_rows

    async def _run(self, batch: list[_Waiting], rows: int) -> None:
        BATCH_ROWS.observe(rows)
        X = batch[0].X if len(batch) == 1 else np.concatenate([item.X for item in batch])
        try:
            results = await asyncio.to_thread(self.fn, X)
        except Exception as exc:
            for item in batch:
                if not item.future.done():
                    item.future.set_exception(exc)
            return
        start = 0
        for item in batch:
            end = start + len(item.X)
            if not item.future.done():
                item.future.set_result(results[start:end])
            start = end

    def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
        while self._waiting:
            item = self._waiting.popleft()
            if not item.future.done():
                item.future.set_exception(RuntimeError("the model was unloaded"))


@dataclass
class Served:
    model: TrainedModel
    owner_id: str  # models are immutable once ready: a cached entry can answer "whose?"
    batcher: Batcher

    async def predict(self, model_id: str, rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        """The answer to a predict call: a prediction per row (and, for a classifier, the
        classes and each row's probabilities); a 422 naming the rows that do not fit."""
        with unprocessable():
            X = self.model.matrix(rows)
        results = await self.batcher.submit(X)
        PREDICTIONS.labels(self.model.kind).inc(len(results))
        out: dict[str, Any] = {"model_id": model_id, "predictions": [value for value, _ in results]}
        if self.model.task == "classification":
            out["classes"] = self.model.classes
            out["probabilities"] = [proba for _, proba in results]
        return out


class ModelCache:
    """The `size` most recently used ready models, loaded; concurrent misses load once."""

    def __init__(self, size: int, max_rows: int, max_wait: float,
                 load: Callable[[Path], TrainedModel] = training.load):
        self.size = size
        self.max_rows = max_rows
        self.max_wait = max_wait
        self._load = load
        self._items: OrderedDict[str, Served] = OrderedDict()
        self._loading: dict[str, asyncio.Task[Served]] = {}

    def __contains__(self, model_id: str) -> bool:
        return model_id in self._items

    def _entry(self, model: TrainedModel, owner_id: str) -> Served:
        return Served(model, owner_id, Batcher(model.predict, self.max_rows, self.max_wait))

    def put(self, model_id: str, model: TrainedModel, owner_id: str) -> Served:
        served = self._items[model_id] = self._entry(model, owner_id)
        self._items.move_to_end(model_id)
        while len(self._items) > self.size:
            self._items.popitem(last=False)  # in-flight requests finish with their entry
        return served

    def peek(self, model_id: str) -> Served | None:
        served = self._items.get(model_id)
        if served is not None:
            CACHE.labels("hit").inc()
            self._items.move_to_end(model_id)
        return served

    async def get(self, model_id: str, path: Path, owner_id: str) -> Served:
        if (served := self.peek(model_id)) is not None:
            return served
        CACHE.labels("miss").inc()
        task = self._loading.get(model_id)
        if task is None:
            task = self._loading[model_id] = asyncio.create_task(self._load_into(model_id, path, owner_id))
        # Shielded: one caller giving up must not cancel the load the others wait for.
        return await asyncio.shield(task)

    async def _load_into(self, model_id: str, path: Path, owner_id: str) -> Served:
        me = asyncio.current_task()
        try:
            model = await asyncio.to_thread(self._load, path)
        finally:
            current = self._loading.get(model_id)
            if current is me:
                del self._loading[model_id]
        if current is not me:  # dropped while loading: serve these callers, cache nothing
            return self._entry(model, owner_id)
        return self.put(model_id, model, owner_id)

    def drop(self, model_id: str) -> None:
        # Requests already holding the entry finish with it; new ones look the model up.
        self._loading.pop(model_id, None)
        self._items.pop(model_id, None)

    def clear(self) -> None:
        self._loading.clear()
        self._items.clear()

    def close(self) -> None:
        for served in self._items.values():
            served.batcher.close()
        self.clear()
