"""Where datasets live: a metadata row in PostgreSQL (tables.Dataset) and a Parquet file
(DatasetFiles). The row is the commit point: no file is kept without its row."""

from __future__ import annotations

import asyncio
import logging
import uuid
from pathlib import Path

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from starlette.requests import Request

from datalab.contracts.datasets import DatasetOut, DatasetPage, DatasetSummary
from datalab.core import db
from datalab.core.audit import audit
from datalab.core.auth import Principal
from datalab.core.errors import Problem
from datalab.core.settings import ensure_dir

from .ingest import MAX_NAME_CHARS, check_name, convert_isolated
from .scans import ScanSlots
from .settings import DataSettings
from .tables import Dataset
from .upload import client_basename, detect_format, fsync_replace, receive_file

Sessions = async_sessionmaker[AsyncSession]
log = logging.getLogger("datalab.data")


class DatasetFiles:
    """The Parquet files, `{id}.parquet` in one directory; uploads in progress in `.incoming`."""

    def __init__(self, directory: Path):
        self.directory = ensure_dir(directory)
        self.incoming = ensure_dir(directory / ".incoming")

    def path(self, dataset_id: str) -> Path:
        return self.directory / f"{dataset_id}.parquet"


def out(ds: Dataset) -> DatasetOut:
    return DatasetOut.model_validate(ds, from_attributes=True)


async def owned(request: Request, sessions: Sessions, dataset_id: str, principal: Principal) -> Dataset:
    """The dataset if the caller may see it; 404 otherwise (others' datasets do not exist)."""
    if not db.is_row_id(dataset_id):
        raise Problem(404, f"No dataset {dataset_id!r}.")
    ds = await db.read_with_retry(sessions, lambda session: session.get(Dataset, dataset_id))
    if ds is not None and ds.owner_id != principal.user_id and not principal.is_admin:
        audit("dataset.access", "denied", actor=principal.user_id, object=dataset_id, request=request)
        ds = None
    if ds is None:
        raise Problem(404, f"No dataset {dataset_id!r}.")
    return ds


async def page(sessions: Sessions, principal: Principal, limit: int, offset: int) -> DatasetPage:
    """The caller's datasets (an admin's: everyone's), newest first."""
    where = [] if principal.is_admin else [Dataset.owner_id == principal.user_id]
    # The schema stays in PostgreSQL: a page carries each dataset's column count only.
    summary = select(
        Dataset.id, Dataset.name, Dataset.source_format, Dataset.rows,
        func.json_array_length(Dataset.columns).label("column_count"), Dataset.size_bytes, Dataset.created_at,
    )
    async with sessions() as session:
        total = await session.scalar(select(func.count()).select_from(Dataset).where(*where))
        rows = await session.execute(
            summary.where(*where).order_by(Dataset.created_at.desc(), Dataset.id).limit(limit).offset(offset)
        )
        items = [DatasetSummary.model_validate(row, from_attributes=True) for row in rows]
    return DatasetPage(items=items, total=total or 0, limit=limit, offset=offset)


async def create_from_upload(request: Request, owner_id: str, settings: DataSettings, sessions: Sessions,
                             files: DatasetFiles, scans: ScanSlots) -> Dataset:
    """The request's upload, streamed to disk, checked and converted to Parquet, kept as a
    new dataset of `owner_id`."""
    dataset_id = str(uuid.uuid4())
    received_path = files.incoming / f"{dataset_id}.upload"
    parquet_tmp = files.incoming / f"{dataset_id}.parquet"
    final = files.path(dataset_id)
    try:
        received = await receive_file(request, received_path, settings.max_upload_bytes)
        fmt = detect_format(received.filename, received.content_type)
        if received.size == 0:
            raise Problem(422, "The file is empty.")
        name = received.fields.get("name") or client_basename(received.filename) or dataset_id
        name = check_name(name[:MAX_NAME_CHARS], "dataset name")
        rows, columns = await scans.run(
            convert_isolated, received_path, fmt, parquet_tmp, settings.dataset_limits(),
            settings.decode_memory_bytes, settings.decode_timeout_seconds,
        )
        await asyncio.to_thread(fsync_replace, parquet_tmp, final)
        ds = Dataset(
            id=dataset_id, owner_id=owner_id, name=name, source_format=fmt,
            rows=rows, columns=columns, size_bytes=final.stat().st_size,
        )
        async with sessions() as session, session.begin():
            session.add(ds)
    except BaseException:
        # Nothing half-written: no file without its row (the row is the commit point).
        final.unlink(missing_ok=True)
        raise
    finally:
        received_path.unlink(missing_ok=True)
        parquet_tmp.unlink(missing_ok=True)
    log.info("dataset created", extra={"dataset_id": dataset_id, "rows": rows, "format": fmt})
    return ds


async def delete(sessions: Sessions, files: DatasetFiles, ds: Dataset) -> None:
    """The row, then the file."""
    async with sessions() as session, session.begin():
        await session.delete(await session.merge(ds))
    files.path(ds.id).unlink(missing_ok=True)
