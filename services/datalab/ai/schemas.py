"""What the ai service takes and answers."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from datalab.ml.training import Kind

NO_NUL = r"^[^\x00]*$"  # PostgreSQL text cannot hold a NUL character


def _nul_shown(value: str | None) -> str | None:
    return value and value.replace("\x00", "\ufffd")


class TrainRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    dataset_id: str = Field(max_length=64)  # a data id (a UUID): see trainer.canonical_dataset_id
    target: str = Field(min_length=1, max_length=255)
    features: list[str] = Field(min_length=1, max_length=1000)
    kind: Kind
    name: str | None = Field(default=None, max_length=255, pattern=NO_NUL)
    params: dict[str, Any] = Field(default_factory=dict)  # training.PARAMS lists them per kind
    run_async: bool | None = Field(default=None, alias="async")  # None: by dataset size


class TrainResult(BaseModel):
    """What the compute worker reports. The row is filled from the artifact it wrote (the
    source of truth); the optional numbers are accepted for the worker's convenience."""

    status: Literal["ready", "failed"]
    # A worker's reason may quote data holding NUL, which PostgreSQL text cannot store: the
    # reason is kept, the NUL shown as U+FFFD (refusing it would leave the model training).
    error: Annotated[str | None, AfterValidator(_nul_shown)] = Field(default=None, max_length=10_000)
    metrics: dict[str, float | None] | None = None
    n_train: int | None = None
    n_test: int | None = None
    classes: list[Any] | None = None
    device: str | None = None
    job_id: str | None = Field(default=None, max_length=64)  # the reporting job: must be the model's


class ModelOut(BaseModel):
    # Read from a records.ModelRecord. (A docstring would become the OpenAPI's description.)
    model_config = ConfigDict(from_attributes=True)
    id: str
    owner_id: str
    dataset_id: str
    name: str | None
    kind: str
    task: str | None
    target: str
    features: list[str]
    params: dict[str, Any]
    metrics: dict[str, float | None] | None
    n_train: int | None
    n_test: int | None
    classes: list[Any] | None
    status: str
    error: str | None
    job_id: str | None
    device: str | None
    created_at: datetime
    updated_at: datetime


class ModelPage(BaseModel):
    items: list[ModelOut]
    total: int
    limit: int
    offset: int


class PredictRequest(BaseModel):
    rows: list[dict[str, Any]] = Field(min_length=1)
