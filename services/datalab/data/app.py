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

from fastapi import APIRouter, FastAPI, Query as QueryParam, Request, Response
from fastapi.responses import FileResponse
from pydantic import BaseModel
from redis.exceptions import RedisError
from sqlalchemy import func, select

from datalab.core import db, events
from datalab.core.app import ServiceSpec, create_app
from datalab.core.audit import audit
from datalab.core.auth import CurrentUser, Principal
from datalab.core.errors import Problem
from datalab.core.openapi import problems
from datalab.core.settings import BaseServiceSettings, ensure_dir

from . import query as q
from .ingest import MAX_NAME_CHARS, Limits, check_name, convert_isolated
from .models import Base, Dataset
from .upload import fsync_replace, receive_file

log = logging.getLogger("datalab.data")


class DataSettings(BaseServiceSettings):
    service_name: str = "data"
    port: int = 8001
    max_upload_bytes: int = 512 * 1024 * 1024
    # Caps on what an upload decodes to, checked before decoding (a compressed Parquet of
    # constant values is tiny on the wire). They bound conversion, describe and queries: a
    # sort over every cell peaks near 20 bytes a cell (measured: +380 MB at 20 M cells), so
    # 10 M cells stay inside the job's 512 MB. Raise them with the job's memory.
    max_dataset_rows: int = 5_000_000
    max_dataset_columns: int = 1_000
    max_dataset_cells: int = 10_000_000  # rows x columns
    max_dataset_bytes: int = 256 * 2**20  # decoded (strings measured): what a query may hold
    # The conversion runs in a child process limited to this much memory and time: values
    # that decode far beyond their file (a repeated 10 MB string) are refused, not held.
    decode_memory_bytes: int = 2**30
    decode_timeout_seconds: float = 300.0
    # Conversions, describes and queries decoding data at once; more wait their turn. Each
    # may peak near the caps' memory, so this multiplies it.
    max_parallel_scans: int = 2
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


class DatasetSummary(BaseModel):
    """A dataset in a list page: its column count, not its schema (GET one for that)."""

    id: str
    name: str
    source_format: str
    rows: int
    column_count: int
    size_bytes: int
    created_at: datetime


class DatasetPage(BaseModel):
    items: list[DatasetSummary]
    total: int
    limit: int
    offset: int


router = APIRouter(prefix="/api/v1/data", tags=["data"])
JSON = "application/json"
PARQUET = "application/vnd.apache.parquet"

# The upload is parsed from the stream (upload.receive_file), not by FastAPI: its body is
# documented here. The name is stored as printable text (ingest.check_name: no control
# characters) and is a small form field (upload.MAX_FIELD_BYTES).
UPLOAD_BODY = {
    "required": True,
    "content": {
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "required": ["file"],
                "properties": {
                    "file": {"type": "string", "format": "binary",
                             "description": "The dataset: CSV (UTF-8, a header row) or Parquet."},
                    "name": {"type": "string", "maxLength": 1024, "pattern": r"^[^\u0000-\u001f\u007f-\u009f]*$",
                             "description": "The dataset's name (cut to 255 characters); the file's name if none."},
                },
            },
            "encoding": {"file": {"contentType": f"text/csv, {PARQUET}"}},
        }
    },
}


async def scan(app: FastAPI, fn, *args):
    """Run polars work `fn(*args)` off the event loop, at most max_parallel_scans at once."""
    async with app.state.scan_slots:
        return await asyncio.to_thread(fn, *args)


def _datasets_dir(request: Request) -> Path:
    return request.app.state.datasets_dir


def _file(request: Request, dataset_id: str) -> Path:
    return _datasets_dir(request) / f"{dataset_id}.parquet"


def _out(ds: Dataset) -> DatasetOut:
    return DatasetOut.model_validate(ds, from_attributes=True)


async def _owned(request: Request, dataset_id: str, principal: Principal) -> Dataset:
    """The dataset if the caller may see it; 404 otherwise (others' datasets do not exist)."""
    if not db.is_row_id(dataset_id):
        raise Problem(404, f"No dataset {dataset_id!r}.")
    ds = await db.read_with_retry(request.app.state.sessions, lambda session: session.get(Dataset, dataset_id))
    if ds is not None and ds.owner_id != principal.user_id and not principal.is_admin:
        audit("dataset.access", "denied", actor=principal.user_id, object=dataset_id, request=request)
        ds = None
    if ds is None:
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
        f"Unsupported file type (name {filename[:100]!r}, content type {ctype[:100] or 'none'}): "
        "send CSV or Parquet.",
    )


@router.post("/datasets", status_code=201, response_model=DatasetOut,
             openapi_extra={"requestBody": UPLOAD_BODY}, responses=problems(400, 408, 413, 415, 422))
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
        name = received.fields.get("name") or _basename(received.filename) or dataset_id
        name = check_name(name[:MAX_NAME_CHARS], "dataset name")
        limits = Limits(
            settings.max_dataset_rows, settings.max_dataset_columns, settings.max_dataset_cells,
            settings.max_dataset_bytes,
        )
        rows, columns = await scan(
            request.app, convert_isolated, received_path, fmt, parquet_tmp, limits,
            settings.decode_memory_bytes, settings.decode_timeout_seconds,
        )
        await asyncio.to_thread(fsync_replace, parquet_tmp, final)
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


def _basename(filename: str) -> str:
    """The client's file name without any directories it sent (`../../x.csv` -> `x.csv`)."""
    return filename.replace("\\", "/").rsplit("/", 1)[-1]


@router.get("/datasets", response_model=DatasetPage)
async def list_datasets(
    request: Request,
    principal: CurrentUser,
    limit: Annotated[int, QueryParam(ge=1, le=500)] = 50,
    offset: Annotated[int, QueryParam(ge=0, le=q.MAX_OFFSET)] = 0,
) -> DatasetPage:
    where = [] if principal.is_admin else [Dataset.owner_id == principal.user_id]
    # The schema stays in PostgreSQL: a page carries each dataset's column count only.
    summary = select(
        Dataset.id, Dataset.name, Dataset.source_format, Dataset.rows,
        func.json_array_length(Dataset.columns).label("column_count"), Dataset.size_bytes, Dataset.created_at,
    )
    async with request.app.state.sessions() as session:
        total = await session.scalar(select(func.count()).select_from(Dataset).where(*where))
        rows = await session.execute(
            summary.where(*where).order_by(Dataset.created_at.desc(), Dataset.id).limit(limit).offset(offset)
        )
        items = [DatasetSummary.model_validate(row, from_attributes=True) for row in rows]
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
    audit("dataset.delete", "success", actor=principal.user_id, object=dataset_id, request=request)
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
    result = await scan(request.app, q.run, body, _file(request, dataset_id))
    try:
        async with redis.pipeline(transaction=True) as pipe:
            pipe.set(key, result, ex=settings.query_cache_ttl)
            pipe.sadd(_cache_index(dataset_id), key)
            pipe.expire(_cache_index(dataset_id), settings.query_cache_ttl * 2)
            await pipe.execute()
    except RedisError as exc:
        log.warning("query result not cached", extra={"error": str(exc)})
    return Response(result, media_type=JSON, headers={"X-Cache": "miss"})


@router.get("/datasets/{dataset_id}/content", response_class=FileResponse, responses={
    200: {"description": "The dataset as Parquet.",
          "content": {PARQUET: {"schema": {"type": "string", "format": "binary"}}}},
})
async def dataset_content(request: Request, dataset_id: str, principal: CurrentUser) -> FileResponse:
    """The dataset as Parquet: how ai, compute and workers read whole datasets."""
    ds = await _owned(request, dataset_id, principal)
    return FileResponse(
        _file(request, dataset_id),
        media_type=PARQUET,
        filename=f"{ds.id}.parquet",
        headers={"X-Dataset-Rows": str(ds.rows)},
    )


@router.get("/datasets/{dataset_id}/describe")
async def describe_dataset(request: Request, dataset_id: str, principal: CurrentUser) -> Response:
    await _owned(request, dataset_id, principal)
    body = await scan(request.app, q.describe, _file(request, dataset_id))
    return Response(body, media_type=JSON)


async def _startup(app: FastAPI) -> None:
    settings: DataSettings = app.state.settings
    app.state.datasets_dir = ensure_dir(settings.home / "datasets")
    app.state.scan_slots = asyncio.Semaphore(settings.max_parallel_scans)
    ensure_dir(app.state.datasets_dir / ".incoming")


SPEC = ServiceSpec(name="data", routers=[router], metadata=Base.metadata, on_startup=[_startup])


def build_app(settings: DataSettings | None = None) -> FastAPI:
    return create_app(SPEC, settings or DataSettings())
