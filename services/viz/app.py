"""Viz service (port 8004): charts of dataset queries, as PNG or SVG.

The data service does the filtering and aggregation (through the core service client, with
the caller's token, so access is checked there); viz renders off the event loop and caches
the image in Redis under a hash of (spec, format, dataset version), which is also the ETag.
A dataset delete (event from data) drops that dataset's charts.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict

from fastapi import APIRouter, FastAPI, Request, Response
from prometheus_client import Counter, Histogram

from datalab.core import events
from datalab.core.app import ServiceSpec, create_app
from datalab.core.auth import CurrentUser, bearer_token
from datalab.core.client import ServiceUnavailable
from datalab.core.errors import Problem
from datalab.core.settings import BaseServiceSettings

from .charts import FORMATS, ChartSpec, check_columns, data_query, render

log = logging.getLogger("datalab.viz")
RENDERS = Histogram("datalab_viz_render_seconds", "Chart render time", ["kind", "format"])
CACHE = Counter("datalab_viz_cache_total", "Chart requests by cache outcome", ["outcome"])


class VizSettings(BaseServiceSettings):
    service_name: str = "viz"
    port: int = 8004
    chart_cache_ttl: int = 24 * 3600
    # How long a dataset's metadata (and the caller's right to see it) is reused before
    # data is asked again; delete events drop it at once.
    dataset_meta_ttl: float = 30.0


router = APIRouter(prefix="/api/v1/viz", tags=["viz"])


def negotiate(accept: str | None) -> str:
    """PNG unless the client asks for SVG; 406 for anything else."""
    if not accept or accept.strip() in ("*/*", "image/*"):
        return "png"
    for part in accept.split(","):
        media = part.split(";")[0].strip().lower()
        if media in ("image/png", "image/*", "*/*"):
            return "png"
        if media == "image/svg+xml":
            return "svg"
    raise Problem(406, f"Cannot produce {accept!r}: ask for image/png or image/svg+xml.")


async def _data(request: Request, method: str, path: str, json=None):
    try:
        resp = await request.app.state.services.request(
            "data", method, path, token=bearer_token(request), json=json
        )
    except ServiceUnavailable:
        raise Problem(503, "The data service is not answering; try again shortly.") from None
    if resp.status == 404:
        raise Problem(404, "No such dataset.")
    if resp.status == 422:
        raise Problem(422, resp.json().get("detail", "The data service refused the query."))
    if resp.status != 200:
        raise Problem(502, f"The data service answered {resp.status}.")
    return resp.json()


def _index(dataset_id: str) -> str:
    return f"dl:viz:{dataset_id}:keys"


class MetaCache:
    """Dataset metadata per (caller, dataset), for a short while: a cached chart then
    costs no call to data. Data's answer is what grants access, so entries are per caller."""

    def __init__(self, ttl: float, size: int = 10_000):
        self.ttl = ttl
        self.size = size
        self._entries: OrderedDict[tuple[str, str], tuple[float, dict]] = OrderedDict()

    def get(self, user_id: str, dataset_id: str) -> dict | None:
        entry = self._entries.get((user_id, dataset_id))
        if entry is None or entry[0] < time.monotonic():
            return None
        return entry[1]

    def put(self, user_id: str, dataset_id: str, meta: dict) -> None:
        self._entries[(user_id, dataset_id)] = (time.monotonic() + self.ttl, meta)
        self._entries.move_to_end((user_id, dataset_id))
        while len(self._entries) > self.size:
            self._entries.popitem(last=False)

    def drop_dataset(self, dataset_id: str) -> None:
        for key in [k for k in self._entries if k[1] == dataset_id]:
            del self._entries[key]


async def _dataset_meta(request: Request, user_id: str, dataset_id: str) -> dict:
    cache: MetaCache = request.app.state.meta_cache
    meta = cache.get(user_id, dataset_id)
    if meta is None:
        # data checks that the caller may see the dataset (404 otherwise).
        meta = await _data(request, "GET", f"/api/v1/data/datasets/{dataset_id}")
        cache.put(user_id, dataset_id, meta)
    return meta


@router.post("/charts")
async def chart(request: Request, spec: ChartSpec, principal: CurrentUser) -> Response:
    fmt = negotiate(request.headers.get("accept"))
    meta = await _dataset_meta(request, principal.user_id, spec.dataset_id)
    check_columns(spec, {c["name"]: c["type"] for c in meta["columns"]})
    key = spec.cache_key(fmt, f"{meta['id']}@{meta['created_at']}")
    etag = f'"{key}"'
    headers = {"ETag": etag, "Cache-Control": "private, max-age=0, must-revalidate"}
    redis = request.app.state.redis
    if etag in [t.strip() for t in request.headers.get("if-none-match", "").split(",")]:
        if await redis.exists(f"dl:viz:img:{key}"):
            CACHE.labels("not_modified").inc()
            return Response(status_code=304, headers=headers)
    cached = await redis.get(f"dl:viz:img:{key}")
    if cached is not None:
        CACHE.labels("hit").inc()
        return Response(cached, media_type=FORMATS[fmt], headers={**headers, "X-Cache": "hit"})

    CACHE.labels("miss").inc()
    result = await _data(request, "POST", f"/api/v1/data/datasets/{spec.dataset_id}/query", json=data_query(spec))
    with RENDERS.labels(spec.kind, fmt).time():
        image = await asyncio.to_thread(render, spec, result["rows"], fmt)
    ttl = request.app.state.settings.chart_cache_ttl
    async with redis.pipeline(transaction=True) as pipe:
        pipe.set(f"dl:viz:img:{key}", image, ex=ttl)
        pipe.sadd(_index(spec.dataset_id), f"dl:viz:img:{key}")
        pipe.expire(_index(spec.dataset_id), ttl)
        await pipe.execute()
    return Response(image, media_type=FORMATS[fmt], headers={**headers, "X-Cache": "miss"})


async def drop_dataset_charts(redis, dataset_id: str) -> int:
    keys = await redis.smembers(_index(dataset_id))
    if keys:
        await redis.unlink(*keys)
    await redis.unlink(_index(dataset_id))
    return len(keys)


async def _listen_for_deletes(app: FastAPI) -> None:
    """Drop a deleted dataset's charts. Resubscribes after a Redis hiccup."""
    while True:
        try:
            async with app.state.redis.pubsub() as pubsub:
                await pubsub.subscribe(events.DATASET_DELETED)
                async for message in pubsub.listen():
                    if message["type"] == "message":
                        dataset_id = message["data"].decode()
                        app.state.meta_cache.drop_dataset(dataset_id)
                        dropped = await drop_dataset_charts(app.state.redis, dataset_id)
                        log.info("charts dropped", extra={"dataset_id": dataset_id, "count": dropped})
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("dataset-deleted subscription failed; retrying")
            await asyncio.sleep(1)


async def _startup(app: FastAPI) -> None:
    app.state.meta_cache = MetaCache(app.state.settings.dataset_meta_ttl)
    app.state.delete_listener = asyncio.create_task(_listen_for_deletes(app))


async def _shutdown(app: FastAPI) -> None:
    app.state.delete_listener.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await app.state.delete_listener


SPEC = ServiceSpec(name="viz", routers=[router], on_startup=[_startup], on_shutdown=[_shutdown])


def build_app(settings: VizSettings | None = None) -> FastAPI:
    return create_app(SPEC, settings or VizSettings())
