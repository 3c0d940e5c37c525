"""The job types compute runs: their parameters (checked at submission) and their work
(run by a worker). Each function takes its validated params and a `JobContext` that loads
datasets, calls the ai service and reports progress, and returns a JSON-serialisable result.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol, get_args

import numpy as np
import polars as pl
from pydantic import BaseModel, ConfigDict, Field

from datalab.contracts import routes
from datalab.ml import training


class JobContext(Protocol):
    def load_dataset(self, dataset_id: str) -> pl.DataFrame: ...

    def progress(self, fraction: float, message: str | None = None) -> None: ...

    def call_service(self, service: str, method: str, path: str, json: Any = None) -> Any: ...

    @property
    def models_dir(self) -> Path: ...

    @property
    def device(self) -> str: ...  # "cpu" | "cuda", chosen by settings (DATALAB_DEVICE)

    @property
    def job_id(self) -> str | None: ...  # the RQ job running now


class JobError(Exception):
    """A job that cannot do what it was asked; its message is what the user reads. It is
    not retried: the same input fails the same way (retries are for crashes and outages)."""


# Datasets and models are named by the ids their services give them (uuid4): a worker
# puts them in URLs it calls as the platform, and in artifact paths.
UUID_PATTERN = r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"


class Params(BaseModel):
    model_config = ConfigDict(extra="forbid")


class NoopParams(Params):
    value: Any = None


class SleepParams(Params):
    seconds: float = Field(1.0, ge=0, le=3600)


class DatasetParams(Params):
    dataset_id: str = Field(pattern=UUID_PATTERN)


class CorrelationParams(DatasetParams):
    columns: list[str] | None = None
    method: Literal["pearson", "spearman"] = "pearson"


class MonteCarloParams(Params):
    """Terminal values of geometric Brownian motion: S_T = S0·exp((mu − sigma²/2)T + sigma·√T·Z)."""

    simulations: int = Field(100_000, ge=100, le=50_000_000)
    s0: float = Field(100.0, gt=0)
    mu: float = Field(0.05, ge=-5, le=5)
    sigma: float = Field(0.2, gt=0, le=5)
    horizon_years: float = Field(1.0, gt=0, le=100)
    seed: int | None = None


class TrainModelParams(DatasetParams):
    """Submitted by the ai service for a model row it created (compute checks that)."""

    model_id: str = Field(pattern=UUID_PATTERN)
    target: str
    features: list[str] = Field(min_length=1)
    kind: training.Kind
    params: dict[str, Any] = Field(default_factory=dict)  # hyperparameters: ml.training.PARAMS


# ---- the work --------------------------------------------------------------------------

def noop(p: NoopParams, ctx: JobContext) -> dict:
    return {"ok": True, "value": p.value}


def sleep(p: SleepParams, ctx: JobContext) -> dict:
    deadline = time.monotonic() + p.seconds
    while (left := deadline - time.monotonic()) > 0:
        time.sleep(min(0.25, left))
        ctx.progress(1 - max(0.0, deadline - time.monotonic()) / p.seconds if p.seconds else 1.0)
    return {"slept": p.seconds}


def describe(p: DatasetParams, ctx: JobContext) -> dict:
    frame = ctx.load_dataset(p.dataset_id)
    ctx.progress(0.5, "loaded")
    stats = frame.describe()
    return {"rows": frame.height, "statistics": stats.to_dicts()}


def correlation(p: CorrelationParams, ctx: JobContext) -> dict:
    frame = ctx.load_dataset(p.dataset_id)
    numeric = [c for c, t in frame.schema.items() if t.is_numeric()]
    columns = p.columns or numeric
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise JobError(f"unknown column(s): {missing}")
    not_numeric = [c for c in columns if c not in numeric]
    if not_numeric:
        raise JobError(f"correlation needs numeric columns; not numeric: {not_numeric}")
    if len(columns) < 2:
        raise JobError(f"correlation needs at least two numeric columns, the dataset has {len(columns)}")
    data = frame.select(columns).drop_nulls().cast(pl.Float64)
    if data.height < 2:
        raise JobError("correlation needs at least two complete rows")
    if p.method == "spearman":
        data = data.select(pl.all().rank())
    matrix = np.corrcoef(data.to_numpy(), rowvar=False)
    clean = [[None if math.isnan(v) else round(float(v), 12) for v in row] for row in matrix]
    return {"columns": columns, "method": p.method, "matrix": clean, "rows": data.height}


def monte_carlo(p: MonteCarloParams, ctx: JobContext) -> dict:
    rng = np.random.default_rng(p.seed)
    chunk = 1_000_000
    drift = (p.mu - 0.5 * p.sigma**2) * p.horizon_years
    vol = p.sigma * math.sqrt(p.horizon_years)
    finals = np.empty(p.simulations)
    for start in range(0, p.simulations, chunk):
        n = min(chunk, p.simulations - start)
        finals[start : start + n] = p.s0 * np.exp(drift + vol * rng.standard_normal(n))
        ctx.progress((start + n) / p.simulations)
    p5, p50, p95 = np.percentile(finals, [5, 50, 95])
    return {
        "simulations": p.simulations,
        "mean": float(finals.mean()),
        "std": float(finals.std()),
        "p5": float(p5),
        "p50": float(p50),
        "p95": float(p95),
        "probability_of_loss": float((finals < p.s0).mean()),
        "expected_analytic": p.s0 * math.exp(p.mu * p.horizon_years),
    }


def train_model(p: TrainModelParams, ctx: JobContext) -> dict:
    """The platform's training code (ml.training, as the ai service runs it), run on a
    worker; the ai service gets the outcome."""
    frame = ctx.load_dataset(p.dataset_id)
    ctx.progress(0.2, "loaded")
    try:
        model = training.fit(frame, p.target, p.features, p.kind, device=ctx.device, params=p.params)
    except training.TrainingError as exc:
        raise JobError(str(exc)) from None
    ctx.progress(0.8, "trained")
    # The API checked the model was this submitter's and awaiting training; check again
    # just before replacing an artifact (it may have been deleted, or trained, meanwhile).
    current = ctx.call_service("ai", "GET", routes.model(p.model_id))
    if current.get("status") != "training" or current.get("job_id") not in (None, ctx.job_id):
        raise JobError(f"model {p.model_id} is no longer awaiting this training")
    try:
        path = training.artifact_path(ctx.models_dir, p.model_id)
    except training.ArtifactPathError as exc:
        raise JobError(str(exc)) from None
    training.save(model, path, root=ctx.models_dir)
    outcome = {
        "status": "ready",
        "metrics": model.metrics,
        "n_train": model.n_train,
        "n_test": model.n_test,
        "classes": model.classes,
        "device": model.device,
        "job_id": ctx.job_id,
    }
    ctx.call_service("ai", "PUT", routes.model_result(p.model_id), outcome)
    return {"model_id": p.model_id, "metrics": model.metrics}


# The registered types' names: the API's enum (any other name is a 422 from validation).
JobTypeName = Literal["noop", "sleep", "describe", "correlation", "monte_carlo", "train_model"]


@dataclass(frozen=True)
class JobType:
    name: JobTypeName
    params: type[Params]
    run: Callable[[Any, JobContext], dict]
    queue: str = "default"
    timeout: int = 600  # seconds before the worker kills it
    retries: int = 0  # default retries (a submission may ask for others)
    description: str = ""

    def summary(self) -> dict[str, Any]:
        """The type as GET /job-types lists it, its params as a JSON schema."""
        return {"type": self.name, "queue": self.queue, "timeout": self.timeout, "retries": self.retries,
                "description": self.description, "params": self.params.model_json_schema()}


JOB_TYPES: dict[str, JobType] = {
    t.name: t
    for t in [
        JobType("noop", NoopParams, noop, timeout=30, description="returns its value: for tests and benchmarks"),
        JobType("sleep", SleepParams, sleep, timeout=3700, description="sleeps, reporting progress: for tests"),
        JobType("describe", DatasetParams, describe, description="per-column statistics of a dataset"),
        JobType("correlation", CorrelationParams, correlation, description="correlation matrix of numeric columns"),
        JobType("monte_carlo", MonteCarloParams, monte_carlo, queue="heavy", timeout=1800,
                description="geometric Brownian motion terminal-value simulation"),
        JobType("train_model", TrainModelParams, train_model, queue="heavy", timeout=3600, retries=1,
                description="train a model with the AI service's code and report back to it"),
    ]
}
if tuple(JOB_TYPES) != get_args(JobTypeName):
    raise RuntimeError(f"JobTypeName {get_args(JobTypeName)} does not name the job types {tuple(JOB_TYPES)}")
