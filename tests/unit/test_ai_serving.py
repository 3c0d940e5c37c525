"""The micro-batcher and the model cache, on a real event loop (no server needed)."""

import asyncio
import threading

import numpy as np

from datalab.ai.serving import Batcher, ModelCache


class Recorder:
    """A predict function: doubles column 0, remembers the batch sizes it was called with."""

    def __init__(self, fail: bool = False):
        self.sizes: list[int] = []
        self.fail = fail

    def __call__(self, X: np.ndarray) -> list[float]:
        self.sizes.append(len(X))
        if self.fail:
            raise ValueError("boom")
        return (X[:, 0] * 2).tolist()


def rows(*values: float) -> np.ndarray:
    return np.array([[v] for v in values], dtype=float)


async def test_concurrent_requests_share_one_call():
    fn = Recorder()
    batcher = Batcher(fn, max_rows=256, max_wait=1.0)
    results = await asyncio.gather(*(batcher.submit(rows(i)) for i in range(50)))
    assert results == [[2.0 * i] for i in range(50)]
    assert fn.sizes == [50]  # all queued before the drain ran: one call, no waiting on a full window


async def test_batches_hold_at_most_max_rows_and_never_split_a_request():
    fn = Recorder()
    batcher = Batcher(fn, max_rows=8, max_wait=1.0)
    results = await asyncio.gather(*(batcher.submit(rows(i, i, i)) for i in range(6)))
    assert results == [[2.0 * i] * 3 for i in range(6)]
    assert fn.sizes == [6, 6, 6]
    big = await batcher.submit(rows(*range(20)))  # larger than a batch: runs whole
    assert big == [2.0 * i for i in range(20)] and fn.sizes[-1] == 20


async def test_a_lone_request_leaves_when_the_window_closes():
    fn = Recorder()
    assert await Batcher(fn, max_rows=256, max_wait=0.001).submit(rows(4)) == [8.0]
    assert fn.sizes == [1]


async def test_unbatched_mode_calls_once_per_request():
    fn = Recorder()
    batcher = Batcher(fn, max_rows=1, max_wait=1.0)
    results = await asyncio.gather(*(batcher.submit(rows(i)) for i in range(5)))
    assert results == [[2.0 * i] for i in range(5)] and fn.sizes == [1] * 5


async def test_a_failing_call_fails_every_waiter():
    batcher = Batcher(Recorder(fail=True), max_rows=256, max_wait=1.0)
    results = await asyncio.gather(*(batcher.submit(rows(i)) for i in range(3)), return_exceptions=True)
    assert all(isinstance(r, ValueError) for r in results)


async def test_a_caller_that_goes_away_does_not_break_the_batch():
    fn = Recorder()
    batcher = Batcher(fn, max_rows=256, max_wait=1.0)
    gone = asyncio.ensure_future(batcher.submit(rows(1)))
    stays = asyncio.ensure_future(batcher.submit(rows(2)))
    await asyncio.sleep(0)  # both queued
    gone.cancel()
    assert await stays == [4.0] and fn.sizes == [1]


class Model:
    def __init__(self, name: str):
        self.name = name

    def predict(self, X):
        return [self.name] * len(X)


def loader(counter: list[str], gate: threading.Event | None = None):
    def load(path):
        if gate is not None:
            gate.wait(5)
        counter.append(path.name)
        return Model(path.name)

    return load


async def test_cache_is_lru(tmp_path):
    loads: list[str] = []
    cache = ModelCache(2, 256, 0.001, load=loader(loads))
    for name in ("a", "b", "a", "c"):  # "a" used again, so "b" is the least recently used
        served = await cache.get(name, tmp_path / name, "owner")
        assert served.model.name == name
    assert "a" in cache and "c" in cache and "b" not in cache
    assert loads == ["a", "b", "c"]
    cache.drop("a")
    assert "a" not in cache
    await cache.get("a", tmp_path / "a", "owner")
    assert loads == ["a", "b", "c", "a"]


async def test_concurrent_misses_load_once(tmp_path):
    loads: list[str] = []
    gate = threading.Event()
    cache = ModelCache(4, 256, 0.001, load=loader(loads, gate))
    waiters = [asyncio.ensure_future(cache.get("m", tmp_path / "m", "owner")) for _ in range(10)]
    await asyncio.sleep(0.01)
    gate.set()
    served = await asyncio.gather(*waiters)
    assert loads == ["m"] and all(s is served[0] for s in served)


async def test_a_model_dropped_while_loading_is_not_cached(tmp_path):
    gate = threading.Event()
    cache = ModelCache(4, 256, 0.001, load=loader([], gate))
    waiter = asyncio.ensure_future(cache.get("m", tmp_path / "m", "owner"))
    await asyncio.sleep(0.01)
    cache.drop("m")
    gate.set()
    assert (await waiter).model.name == "m"
    assert "m" not in cache
