"""The data service's routes, under /api/v1/data: datasets in (upload), listed, read (as
metadata, Parquet content, a description, query results) and deleted."""

from __future__ import annotations

import logging
from typing import Annotated

from fastapi import APIRouter, Request, Response
from fastapi import Query as QueryParam
from fastapi.responses import FileResponse

from datalab.contracts.datasets import DatasetOut, DatasetPage
from datalab.contracts.routes import DATA
from datalab.core import events
from datalab.core.audit import audit
from datalab.core.auth import CurrentUser
from datalab.core.deps import RedisDep, SessionsDep
from datalab.core.openapi import problems

from . import datasets
from . import query as q
from .deps import DatasetFilesDep, QueryCacheDep, ScanSlotsDep, SettingsDep
from .schemas import CONTENT_RESPONSES, JSON, PARQUET, UPLOAD_BODY

log = logging.getLogger("datalab.data")
router = APIRouter(prefix=DATA, tags=["data"])


@router.post("/datasets", status_code=201, response_model=DatasetOut,
             openapi_extra={"requestBody": UPLOAD_BODY}, responses=problems(400, 408, 413, 415, 422))
async def upload(request: Request, principal: CurrentUser, settings: SettingsDep, sessions: SessionsDep,
                 files: DatasetFilesDep, scans: ScanSlotsDep) -> DatasetOut:
    ds = await datasets.create_from_upload(request, principal.user_id, settings, sessions, files, scans)
    return datasets.out(ds)


@router.get("/datasets", response_model=DatasetPage)
async def list_datasets(
    principal: CurrentUser,
    sessions: SessionsDep,
    limit: Annotated[int, QueryParam(ge=1, le=500)] = 50,
    offset: Annotated[int, QueryParam(ge=0, le=q.MAX_OFFSET)] = 0,
) -> DatasetPage:
    return await datasets.page(sessions, principal, limit, offset)


@router.get("/datasets/{dataset_id}", response_model=DatasetOut)
async def get_dataset(request: Request, dataset_id: str, principal: CurrentUser, sessions: SessionsDep) -> DatasetOut:
    return datasets.out(await datasets.owned(request, sessions, dataset_id, principal))


@router.delete("/datasets/{dataset_id}", status_code=204)
async def delete_dataset(request: Request, dataset_id: str, principal: CurrentUser, sessions: SessionsDep,
                         files: DatasetFilesDep, cache: QueryCacheDep, redis: RedisDep) -> Response:
    ds = await datasets.owned(request, sessions, dataset_id, principal)
    await datasets.delete(sessions, files, ds)
    await cache.drop(dataset_id)
    # Services that cache derived results (viz charts) drop theirs on this event.
    await redis.publish(events.DATASET_DELETED, dataset_id)
    log.info("dataset deleted", extra={"dataset_id": dataset_id})
    audit("dataset.delete", "success", actor=principal.user_id, object=dataset_id, request=request)
    return Response(status_code=204)


@router.post("/datasets/{dataset_id}/query")
async def query_dataset(request: Request, dataset_id: str, body: q.Query, principal: CurrentUser,
                        sessions: SessionsDep, files: DatasetFilesDep, scans: ScanSlotsDep,
                        cache: QueryCacheDep) -> Response:
    await datasets.owned(request, sessions, dataset_id, principal)
    cached = await cache.get(dataset_id, body)
    if cached is not None:
        return Response(cached, media_type=JSON, headers={"X-Cache": "hit"})
    result = await scans.run(q.run, body, files.path(dataset_id))
    await cache.put(dataset_id, body, result)
    return Response(result, media_type=JSON, headers={"X-Cache": "miss"})


@router.get("/datasets/{dataset_id}/content", response_class=FileResponse, responses=CONTENT_RESPONSES)
async def dataset_content(request: Request, dataset_id: str, principal: CurrentUser, sessions: SessionsDep,
                          files: DatasetFilesDep) -> FileResponse:
    """The dataset as Parquet: how ai, compute and workers read whole datasets."""
    ds = await datasets.owned(request, sessions, dataset_id, principal)
    return FileResponse(
        files.path(dataset_id),
        media_type=PARQUET,
        filename=f"{ds.id}.parquet",
        headers={"X-Dataset-Rows": str(ds.rows)},
    )


@router.get("/datasets/{dataset_id}/describe")
async def describe_dataset(request: Request, dataset_id: str, principal: CurrentUser, sessions: SessionsDep,
                           files: DatasetFilesDep, scans: ScanSlotsDep) -> Response:
    await datasets.owned(request, sessions, dataset_id, principal)
    body = await scans.run(q.describe, files.path(dataset_id))
    return Response(body, media_type=JSON)
