"""Viz service (port 8004): charts of dataset queries, as PNG or SVG.

Every request first asks data for the dataset's metadata with the caller's token: that is
the access check (404 for a dataset the caller may not see) and gives the column types and
the dataset version. Data then does the filtering and grouping; viz draws in worker
processes and caches the image in Redis under a hash of (normalized spec, format, dataset
id and version, renderer), which is also the strong ETag. A dataset delete (an event from
data) drops that dataset's charts.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
from collections.abc import Awaitable, Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any

import redis.asyncio as aioredis
from fastapi import APIRouter, FastAPI, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import Counter, Histogram

from datalab.core import events
from datalab.core.audit import audit
from datalab.core.app import ServiceSpec, create_app
from datalab.core.auth import CurrentUser, bearer_token
from datalab.core.service_client import ServiceResponse, ServiceUnavailable
from datalab.core.errors import Problem, problem_response
from datalab.core.openapi import problem, problems
from datalab.core.settings import BaseServiceSettings

from . import render
from .spec import ChartError, ChartSpec, Format, build_query, cache_key, check_columns

log = logging.getLogger("datalab.viz")
RENDERS = Histogram(
    "datalab_viz_render_seconds", "Chart render time in a worker", ["kind", "format"],
    buckets=(0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
CACHE = Counter("datalab_viz_cache_total", "Chart requests by cache outcome", ["outcome"])
MEDIA_TYPES: dict[Format, str] = {"png": "image/png", "svg": "image/svg+xml"}


class VizSettings(BaseServiceSettings):
    service_name: str = "viz"
    port: int = 8004
    chart_cache_ttl: int = 24 * 3600
    # Worker processes that draw: matplotlib holds the GIL, so threads would draw one at a
    # time and stall the event loop (bench/viz_cache.py measures both).
    render_processes: int = 2


router = APIRouter(prefix="/api/v1/viz", tags=["viz"])


# ---- HTTP: content negotiation and conditional requests --------------------------------

def negotiate(accept: str | None) -> Format:
    """PNG or SVG from the Accept header: the format with the highest q (taken from the
    most specific range naming it) wins, PNG on a tie; no header means PNG. 406 when
    neither is acceptable."""
    scores: dict[Format, tuple[int, float]] = {}  # format -> (specificity, q)
    for part in (accept or "*/*").split(","):
        media, *params = (p.strip().lower() for p in part.split(";"))
        q = 1.0
        for param in params:
            name, _, value = param.partition("=")
            if name.strip() == "q":
                try:
                    q = min(max(float(value), 0.0), 1.0)
                except ValueError:
                    q = 0.0
        for fmt, media_type in MEDIA_TYPES.items():
            specificity = {media_type: 2, "image/*": 1, "*/*": 0}.get(media, -1)
            if specificity > scores.get(fmt, (-1, 0.0))[0]:
                scores[fmt] = (specificity, q)
    choices = [(q, fmt == "png", fmt) for fmt, (_, q) in scores.items() if q > 0]
    if not choices:
        raise Problem(406, f"Cannot answer {accept!r}: ask for image/png or image/svg+xml.")
    return max(choices)[2]


def etag_matches(if_none_match: str | None, etag: str) -> bool:
    """If-None-Match uses the weak comparison (RFC 9110 §13.1.2): W/ does not matter."""
    if not if_none_match:
        return False
    tags = [t.strip().removeprefix("W/") for t in if_none_match.split(",")]
    return "*" in tags or etag in tags


# ---- calls to data ---------------------------------------------------------------------

async def _data(app: FastAPI, token: str | None, method: str, path: str, json: Any = None) -> ServiceResponse:
    """A call to data with the caller's token; its refusals become ours."""
    try:
        resp = await app.state.services.request("data", method, path, token=token, json=json)
    except ServiceUnavailable:
        raise Problem(503, "The data service is not answering; try again shortly.",
                      headers={"Retry-After": "5"}) from None
    if resp.status == 200:
        return resp
    if resp.status in (401, 403, 404, 422):
        try:
            detail = resp.json().get("detail")
        except ValueError:
            detail = None
        raise Problem(resp.status, detail or "The data service refused the request.")
    raise Problem(502, f"The data service answered {resp.status}.")


# ---- the image cache -------------------------------------------------------------------

def _image_key(key: str) -> str:
    return f"dl:viz:img:{key}"


def _index_key(dataset_id: str) -> str:
    """A Redis set of the dataset's image keys, so a delete finds them."""
    return f"dl:viz:{dataset_id}:keys"


async def _cached(redis: aioredis.Redis, key: str) -> bytes | None:
    try:
        return await redis.get(_image_key(key))
    except aioredis.RedisError as exc:  # the cache is an optimisation: render instead
        log.warning("chart cache unreadable", extra={"error": str(exc)})
        return None


async def _store(app: FastAPI, dataset_id: str, key: str, image: bytes) -> None:
    ttl = app.state.settings.chart_cache_ttl
    try:
        async with app.state.redis.pipeline(transaction=True) as pipe:
            pipe.set(_image_key(key), image, ex=ttl)
            pipe.sadd(_index_key(dataset_id), _image_key(key))
            pipe.expire(_index_key(dataset_id), ttl)
            await pipe.execute()
    except aioredis.RedisError as exc:
        log.warning("chart not cached", extra={"error": str(exc)})


async def drop_dataset_charts(redis: aioredis.Redis, dataset_id: str) -> int:
    keys = await redis.smembers(_index_key(dataset_id))
    await redis.unlink(_index_key(dataset_id), *keys)
    return len(keys)


# ---- rendering -------------------------------------------------------------------------

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


async def _image(app: FastAPI, token: str | None, spec: ChartSpec, types: dict[str, str],
                 fmt: Format, key: str) -> tuple[bytes, str]:
    """The image and where it came from: the cache ("hit") or a render ("miss")."""
    if (image := await _cached(app.state.redis, key)) is not None:
        return image, "hit"
    return await app.state.single_flight.run(key, lambda: _render(app, token, spec, types, fmt, key)), "miss"


async def _render(app: FastAPI, token: str | None, spec: ChartSpec, types: dict[str, str],
                  fmt: Format, key: str) -> bytes:
    # Looked up again: a render of this key may have ended since the caller's cache miss.
    if (image := await _cached(app.state.redis, key)) is not None:
        return image
    query = build_query(spec, types)
    result = await _data(app, token, "POST", f"/api/v1/data/datasets/{spec.dataset_id}/query", json=query)
    image, seconds = await app.state.renderer.draw(spec, types, result.body, fmt)
    RENDERS.labels(spec.kind, fmt).observe(seconds)
    await _store(app, str(spec.dataset_id), key, image)
    return image


# ---- the endpoint ----------------------------------------------------------------------

@router.post(
    "/charts",
    response_class=Response,
    responses={
        200: {"content": {"image/png": {}, "image/svg+xml": {}}, "description": "The chart."},
        304: {"description": "If-None-Match matched: the client's copy is current."},
        406: problem(406, "Accept allows neither image/png nor image/svg+xml."),
        **problems(404, 502),
    },
)
async def chart(request: Request, spec: ChartSpec, user: CurrentUser) -> Response:
    app = request.app
    fmt = negotiate(request.headers.get("accept"))
    token = bearer_token(request)
    # Always asked, also before a 304: data decides that the caller may see the dataset.
    try:
        meta = (await _data(app, token, "GET", f"/api/v1/data/datasets/{spec.dataset_id}")).json()
    except Problem as exc:
        if exc.status in (403, 404):  # data's 404 covers others' datasets: they "do not exist"
            audit("chart.render", "denied", actor=user.username, object=f"dataset:{spec.dataset_id}",
                  request=request, reason=f"data answered {exc.status}")
        raise
    types = {c["name"]: c["type"] for c in meta["columns"]}
    check_columns(spec, types)
    key = cache_key(spec, fmt, meta["created_at"], render.RENDERER)
    headers = {
        "ETag": f'"{key}"',
        "Cache-Control": "private, max-age=0, must-revalidate",
        "Vary": "Accept",
    }
    if etag_matches(request.headers.get("if-none-match"), headers["ETag"]):
        CACHE.labels("not_modified").inc()
        return Response(status_code=304, headers=headers)
    image, outcome = await _image(app, token, spec, types, fmt, key)
    CACHE.labels(outcome).inc()
    return Response(image, media_type=MEDIA_TYPES[fmt], headers={**headers, "X-Cache": outcome})


async def _on_chart_error(_: Request, exc: ChartError) -> JSONResponse:
    extra = {"column": exc.column} if exc.column else {}
    return problem_response(422, exc.detail, type_="https://datalab.dev/problems/invalid-chart", **extra)


# ---- lifecycle: render pool, delete events ---------------------------------------------

async def _listen_for_deletes(app: FastAPI) -> None:
    """Drop a deleted dataset's charts. Only housekeeping: a missed event leaves images
    that expire with their TTL, and are never served (the metadata check answers 404)."""
    while True:
        try:
            async with app.state.redis.pubsub() as pubsub:
                await pubsub.subscribe(events.DATASET_DELETED)
                async for message in pubsub.listen():
                    if message["type"] == "message":
                        dataset_id = message["data"].decode()
                        dropped = await drop_dataset_charts(app.state.redis, dataset_id)
                        log.info("charts dropped", extra={"dataset_id": dataset_id, "count": dropped})
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # Redis restarted, a timeout: subscribe again
            log.warning("dataset-deleted subscription lost; resubscribing", extra={"error": str(exc)})
            await asyncio.sleep(1)


async def _startup(app: FastAPI) -> None:
    settings: VizSettings = app.state.settings
    app.state.renderer = RenderPool(settings.render_processes)
    app.state.single_flight = SingleFlight()
    app.state.viz_tasks = [
        asyncio.create_task(_listen_for_deletes(app), name="viz-delete-listener"),
        asyncio.create_task(app.state.renderer.warm(), name="viz-warm-renderers"),
    ]


async def _shutdown(app: FastAPI) -> None:
    for task in app.state.viz_tasks:
        task.cancel()
    for task in app.state.viz_tasks:
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
    await app.state.renderer.close()


async def _renderer_ready(app: FastAPI) -> None:
    # Not ready (no traffic) until the workers are up: the first chart is not the slow one.
    if not app.state.renderer.warmed:
        raise RuntimeError("render workers are starting")


SPEC = ServiceSpec(
    name="viz", routers=[router], on_startup=[_startup], on_shutdown=[_shutdown],
    ready_checks={"renderer": _renderer_ready},
)


def build_app(settings: VizSettings | None = None) -> FastAPI:
    app = create_app(SPEC, settings or VizSettings())
    app.add_exception_handler(ChartError, _on_chart_error)
    return app
