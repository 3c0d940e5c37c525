"""Data service (port 8001): datasets in, queries out.

Uploads (CSV or Parquet) stream to disk under a size limit, are converted to Parquet, and
get a metadata row in PostgreSQL; queries run lazily with polars off the event loop and
their results are cached in Redis until the dataset is deleted.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import uuid
from datetime import datetime
from pathlib import Path
from typing import Annotated

import polars as pl
from fastapi import APIRouter, FastAPI, Query as QueryParam, Request, Response
from fastapi.responses import FileResponse
from pydantic import BaseModel
from redis.exceptions import RedisError
from sqlalchemy import func, select

from datalab.core import db, events
from datalab.core.app import ServiceSpec, create_app
from datalab.core.auth import CurrentUser, Principal
from datalab.core.errors import Problem
from datalab.core.settings import BaseServiceSettings, ensure_dir

from . import query as q
from .models import Base, Dataset
from .upload import fsync_replace, receive_file

log = logging.getLogger("datalab.data")


class DataSettings(BaseServiceSettings):
    service_name: str = "data"
    port: int = 8001
    max_upload_bytes: int = 512 * 1024 * 1024
    query_cache_ttl: int = 300


class ColumnOut(BaseModel):
    name: str
    type: str
    dtype: str


class DatasetOut(BaseModel):
    id: str
    name: str
    source_format: str
    rows: int
    columns: list[ColumnOut]
    size_bytes: int
    created_at: datetime


class DatasetPage(BaseModel):
    items: list[DatasetOut]
    total: int
    limit: int
    offset: int


router = APIRouter(prefix="/api/v1/data", tags=["data"])
JSON = "application/json"


def _datasets_dir(request: Request) -> Path:
    return request.app.state.datasets_dir


def _file(request: Request, dataset_id: str) -> Path:
    return _datasets_dir(request) / f"{dataset_id}.parquet"


def _out(ds: Dataset) -> DatasetOut:
    return DatasetOut.model_validate(ds, from_attributes=True)


async def _owned(request: Request, dataset_id: str, principal: Principal) -> Dataset:
    """The dataset if the caller may see it; 404 otherwise (others' datasets do not exist)."""
    try:
        uuid.UUID(dataset_id)
    except ValueError:
        raise Problem(404, f"No dataset {dataset_id!r}.") from None
    ds = await db.read(request.app.state.sessions, lambda session: session.get(Dataset, dataset_id))
    if ds is None or (ds.owner_id != principal.user_id and not principal.is_admin):
        raise Problem(404, f"No dataset {dataset_id!r}.")
    return ds


def _detect_format(filename: str, content_type: str) -> str:
    name = filename.lower()
    ctype = content_type.split(";")[0].strip().lower()
    if name.endswith((".parquet", ".pq")) or ctype in ("application/vnd.apache.parquet", "application/x-parquet"):
        return "parquet"
    if name.endswith((".csv", ".txt")) or ctype in ("text/csv", "application/csv"):
        return "csv"
    raise Problem(
        415,
        f"Unsupported file type (name {filename!r}, content type {ctype or 'none'}): send CSV or Parquet.",
    )


def _convert(received: Path, fmt: str, target: Path) -> tuple[int, list[dict]]:
    """Validate the upload and write it as Parquet to `target`; (rows, columns)."""
    try:
        if fmt == "csv":
            pl.scan_csv(received, infer_schema_length=10_000, try_parse_dates=True).sink_parquet(target)
        else:
            pl.scan_parquet(received).sink_parquet(target)
        lazy = pl.scan_parquet(target)
        schema = lazy.collect_schema()
        rows = int(lazy.select(pl.len()).collect().item())
    except (pl.exceptions.PolarsError, OSError, ValueError) as exc:
        target.unlink(missing_ok=True)
        first_line = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
        raise Problem(422, f"The {fmt.upper()} file could not be read: {first_line}") from None
    if not schema:
        target.unlink(missing_ok=True)
        raise Problem(422, f"The {fmt.upper()} file has no columns.")
    if len(set(schema)) != len(schema):
        target.unlink(missing_ok=True)
        raise Problem(422, "Column names must be unique.")
    return rows, q.describe_schema(schema)


@router.post("/datasets", status_code=201, response_model=DatasetOut)
async def upload(request: Request, principal: CurrentUser) -> DatasetOut:
    settings: DataSettings = request.app.state.settings
    dataset_id = str(uuid.uuid4())
    incoming = _datasets_dir(request) / ".incoming"
    received_path = incoming / f"{dataset_id}.upload"
    parquet_tmp = incoming / f"{dataset_id}.parquet"
    final = _file(request, dataset_id)
    try:
        received = await receive_file(request, received_path, settings.max_upload_bytes)
        fmt = _detect_format(received.filename, received.content_type)
        if received.size == 0:
            raise Problem(422, "The file is empty.")
        rows, columns = await asyncio.to_thread(_convert, received_path, fmt, parquet_tmp)
        await asyncio.to_thread(fsync_replace, parquet_tmp, final)
        name = (received.fields.get("name") or received.filename or dataset_id)[:255]
        ds = Dataset(
            id=dataset_id, owner_id=principal.user_id, name=name, source_format=fmt,
            rows=rows, columns=columns, size_bytes=final.stat().st_size,
        )
        async with request.app.state.sessions() as session, session.begin():
            session.add(ds)
    except BaseException:
        # Nothing half-written: no file without its row (the row is the commit point).
        final.unlink(missing_ok=True)
        raise
    finally:
        received_path.unlink(missing_ok=True)
        parquet_tmp.unlink(missing_ok=True)
    log.info("dataset created", extra={"dataset_id": dataset_id, "rows": rows, "format": fmt})
    return _out(ds)


@router.get("/datasets", response_model=DatasetPage)
async def list_datasets(
    request: Request,
    principal: CurrentUser,
    limit: Annotated[int, QueryParam(ge=1, le=500)] = 50,
    offset: Annotated[int, QueryParam(ge=0)] = 0,
) -> DatasetPage:
    where = [] if principal.is_admin else [Dataset.owner_id == principal.user_id]
    async with request.app.state.sessions() as session:
        total = await session.scalar(select(func.count()).select_from(Dataset).where(*where))
        rows = await session.scalars(
            select(Dataset).where(*where).order_by(Dataset.created_at.desc(), Dataset.id).limit(limit).offset(offset)
        )
        items = [_out(ds) for ds in rows]
    return DatasetPage(items=items, total=total or 0, limit=limit, offset=offset)


@router.get("/datasets/{dataset_id}", response_model=DatasetOut)
async def get_dataset(request: Request, dataset_id: str, principal: CurrentUser) -> DatasetOut:
    return _out(await _owned(request, dataset_id, principal))


@router.delete("/datasets/{dataset_id}", status_code=204)
async def delete_dataset(request: Request, dataset_id: str, principal: CurrentUser) -> Response:
    ds = await _owned(request, dataset_id, principal)
    async with request.app.state.sessions() as session, session.begin():
        await session.delete(await session.merge(ds))
    _file(request, dataset_id).unlink(missing_ok=True)
    await _invalidate(request, dataset_id)
    # Services that cache derived results (viz charts) drop theirs on this event.
    await request.app.state.redis.publish(events.DATASET_DELETED, dataset_id)
    log.info("dataset deleted", extra={"dataset_id": dataset_id})
    return Response(status_code=204)


def _cache_index(dataset_id: str) -> str:
    return f"dl:q:{dataset_id}:keys"


async def _invalidate(request: Request, dataset_id: str) -> None:
    redis = request.app.state.redis
    index = _cache_index(dataset_id)
    keys = await redis.smembers(index)
    if keys:
        await redis.unlink(*keys)
    await redis.unlink(index)


@router.post("/datasets/{dataset_id}/query")
async def query_dataset(request: Request, dataset_id: str, body: q.Query, principal: CurrentUser) -> Response:
    await _owned(request, dataset_id, principal)
    settings: DataSettings = request.app.state.settings
    redis = request.app.state.redis
    key = f"dl:q:{dataset_id}:{hashlib.sha256(body.cache_key().encode()).hexdigest()}"
    # The cache is an optimisation: unreadable is a miss, unwritable (Redis full: maxmemory
    # with noeviction, or down) is "not cached", never an error for the caller.
    try:
        cached = await redis.get(key)
    except RedisError as exc:
        log.warning("query cache unreadable", extra={"error": str(exc)})
        cached = None
    if cached is not None:
        return Response(cached, media_type=JSON, headers={"X-Cache": "hit"})
    result = await asyncio.to_thread(q.run, body, _file(request, dataset_id))
    try:
        async with redis.pipeline(transaction=True) as pipe:
            pipe.set(key, result, ex=settings.query_cache_ttl)
            pipe.sadd(_cache_index(dataset_id), key)
            pipe.expire(_cache_index(dataset_id), settings.query_cache_ttl * 2)
            await pipe.execute()
    except RedisError as exc:
        log.warning("query result not cached", extra={"error": str(exc)})
    return Response(result, media_type=JSON, headers={"X-Cache": "miss"})


@router.get("/datasets/{dataset_id}/content")
async def dataset_content(request: Request, dataset_id: str, principal: CurrentUser) -> FileResponse:
    """The dataset as Parquet: how ai, compute and workers read whole datasets."""
    ds = await _owned(request, dataset_id, principal)
    return FileResponse(
        _file(request, dataset_id),
        media_type="application/vnd.apache.parquet",
        filename=f"{ds.id}.parquet",
        headers={"X-Dataset-Rows": str(ds.rows)},
    )


@router.get("/datasets/{dataset_id}/describe")
async def describe_dataset(request: Request, dataset_id: str, principal: CurrentUser) -> Response:
    await _owned(request, dataset_id, principal)
    body = await asyncio.to_thread(q.describe, _file(request, dataset_id))
    return Response(body, media_type=JSON)


async def _startup(app: FastAPI) -> None:
    settings: DataSettings = app.state.settings
    app.state.datasets_dir = ensure_dir(settings.home / "datasets")
    ensure_dir(app.state.datasets_dir / ".incoming")


SPEC = ServiceSpec(name="data", routers=[router], metadata=Base.metadata, on_startup=[_startup])


def build_app(settings: DataSettings | None = None) -> FastAPI:
    return create_app(SPEC, settings or DataSettings())
