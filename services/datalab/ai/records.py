"""The ai service's table (schema `ai`): one record per model, its metadata and status.
The fitted models themselves live in joblib files (`datalab.ml.training.save`)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, DateTime, Integer, MetaData, String, Text, delete, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from datalab.core import db
from datalab.ml.training import Kind


def _now() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(schema="ai")


class ModelRecord(Base):
    """A row of ai.models: what a model is (kind, target, features) and where it stands."""

    __tablename__ = "models"
    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    owner_id: Mapped[str] = mapped_column(String(36), index=True)
    dataset_id: Mapped[str] = mapped_column(String(36), index=True)
    name: Mapped[str | None] = mapped_column(String(255))
    kind: Mapped[Kind] = mapped_column(String(32))
    task: Mapped[str | None] = mapped_column(String(16))  # unknown until fitted (random_forest, ...)
    target: Mapped[str] = mapped_column(String(255))
    features: Mapped[list[str]] = mapped_column(JSON)
    params: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    metrics: Mapped[dict[str, float | None] | None] = mapped_column(JSON)
    n_train: Mapped[int | None] = mapped_column(Integer)
    n_test: Mapped[int | None] = mapped_column(Integer)
    classes: Mapped[list[Any] | None] = mapped_column(JSON)
    status: Mapped[str] = mapped_column(String(16))  # training | ready | failed
    error: Mapped[str | None] = mapped_column(Text)
    job_id: Mapped[str | None] = mapped_column(String(64))
    artifact: Mapped[str | None] = mapped_column(String(255))  # relative to DATALAB_HOME
    device: Mapped[str | None] = mapped_column(String(8))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now, onupdate=_now)


class ModelRecords:
    """Reads and writes of ai.models, each in a session of its own."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession]):
        self.sessions = sessions

    async def get(self, model_id: str) -> ModelRecord | None:
        if not db.is_row_id(model_id):
            return None
        return await db.read_with_retry(self.sessions, lambda session: session.get(ModelRecord, model_id))

    async def page(self, owner_id: str | None, limit: int, offset: int) -> tuple[list[ModelRecord], int]:
        """One page, newest first, and the total; `owner_id=None` for everyone's."""
        where = [] if owner_id is None else [ModelRecord.owner_id == owner_id]
        async with self.sessions() as session:
            total = await session.scalar(select(func.count()).select_from(ModelRecord).where(*where))
            rows = await session.scalars(
                select(ModelRecord).where(*where)
                .order_by(ModelRecord.created_at.desc(), ModelRecord.id).limit(limit).offset(offset)
            )
            return list(rows), total or 0

    async def add(self, row: ModelRecord) -> None:
        async with self.sessions() as session, session.begin():
            session.add(row)

    async def save(self, row: ModelRecord) -> ModelRecord:
        """Write back a record read earlier (and changed since); the stored record."""
        async with self.sessions() as session, session.begin():
            return await session.merge(row)

    async def set_job(self, model_id: str, job_id: str) -> ModelRecord | None:
        """Only job_id, then the record as it is now: the worker may already have reported."""
        async with self.sessions() as session, session.begin():
            await session.execute(update(ModelRecord).where(ModelRecord.id == model_id).values(job_id=job_id))
            return await session.get(ModelRecord, model_id)

    async def delete(self, model_id: str) -> None:
        async with self.sessions() as session, session.begin():
            await session.execute(delete(ModelRecord).where(ModelRecord.id == model_id))
