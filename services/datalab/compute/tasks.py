"""What runs inside a worker: the one RQ entry point, its context and its callbacks.

RQ stores `datalab.compute.tasks.execute` plus (type, params) in each job (JSON serializer:
no pickles in Redis); PlatformJob (dispatch.py) runs nothing else, and that name and
`on_failure`'s are what it checks, so both stay here. The worker process holds one
`WorkerContext`: settings, secrets, the core service client on a private event loop, and
the platform's service identity, with which it reads datasets (through the DataClient) on
the submitter's behalf (the API checked access at submission) and reports to ai.
"""

from __future__ import annotations

import asyncio
import io
import logging
import threading
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

import polars as pl
from pydantic import ValidationError
from rq import get_current_job

from datalab.contracts import routes
from datalab.contracts.data_client import DataClient, DataServiceError
from datalab.core.discovery import create_discovery
from datalab.core.identity import ServiceIdentity
from datalab.core.secret_files import SecretStore
from datalab.core.service_client import ServiceClient
from datalab.core.settings import ensure_dir
from datalab.ml import training

from .jobs import JOB_TYPES, JobError
from .settings import WorkerSettings

log = logging.getLogger("datalab.worker")
T = TypeVar("T")


class JobRefused(Exception):
    """A queued job that is not one of the platform's (see dispatch.PlatformJob): it fails
    without anything it names being imported or run."""


class WorkerContext:
    """Per-process context; jobs reach it through `WorkerContext.current()`."""

    _instance: WorkerContext | None = None
    _lock = threading.Lock()

    def __init__(self, settings: WorkerSettings):
        self.settings = settings
        self.secrets = SecretStore(settings.secrets_dir)
        self.loop = asyncio.new_event_loop()
        self.client = ServiceClient(create_discovery(settings, self.secrets), timeout=120)
        self.identity = ServiceIdentity(self.secrets, self.client)
        self.models_dir = ensure_dir(Path(settings.home) / "models")
        self._device: str | None = None

    @property
    def device(self) -> str:
        """Where training runs, chosen by DATALAB_DEVICE like the ai service (probed once)."""
        if self._device is None:
            self._device = training.select_device(self.settings.device)
        return self._device

    @property
    def job_id(self) -> str | None:
        job = get_current_job()
        return job.id if job is not None else None

    @classmethod
    def current(cls) -> WorkerContext:
        with cls._lock:
            if cls._instance is None:
                cls._instance = cls(WorkerSettings())
            return cls._instance

    @classmethod
    def install(cls, context: WorkerContext) -> None:
        cls._instance = context

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.loop.run_until_complete(coro)

    def call_service(self, service: str, method: str, path: str, json: Any = None) -> Any:
        async def call():
            token = await self.identity.token()
            return await self.client.request(service, method, path, token=token, json=json)

        resp = self._run(call())
        if resp.status >= 400:
            raise JobError(f"{service} answered {resp.status} to {method} {path}")
        return resp.json() if resp.body else None

    def load_dataset(self, dataset_id: str) -> pl.DataFrame:
        """The dataset, read as the platform. Whatever data answered ends the job (JobError,
        no retries); data not answering is a failure retries are for."""

        async def fetch() -> bytes:
            return await DataClient(self.client, await self.identity.token()).content(dataset_id)

        try:
            content = self._run(fetch())
        except DataServiceError as exc:
            if exc.upstream_status == 404:
                raise JobError(f"dataset {dataset_id} no longer exists") from None
            if exc.upstream_status is not None:
                raise JobError(f"the data service answered {exc.upstream_status} for dataset {dataset_id}") from None
            raise
        return pl.read_parquet(io.BytesIO(content))

    def progress(self, fraction: float, message: str | None = None) -> None:
        job = get_current_job()
        if job is None:
            return
        job.meta["progress"] = round(min(1.0, max(0.0, fraction)), 4)
        if message:
            job.meta["progress_message"] = message
        job.save_meta()


def execute(job_type: str, params: dict) -> dict:
    """The RQ entry point for every DataLab job."""
    spec = JOB_TYPES[job_type]
    ctx = WorkerContext.current()
    try:
        result = spec.run(spec.params.model_validate(params), ctx)
    except (JobError, ValidationError):
        _no_more_retries()
        raise
    ctx.progress(1.0)
    return result


def _no_more_retries() -> None:
    """A deterministic failure: spend no retries on it (RQ reads retries_left next)."""
    job = get_current_job()
    if job is not None and job.retries_left:
        job.retries_left = 0


def on_failure(job, connection, exc_type, exc_value, tb) -> None:
    """RQ failure callback: also runs when a job is found abandoned (its worker died)."""
    job_type = (job.meta or {}).get("type", "unknown")
    log.warning("job failed", extra={"job_id": job.id, "type": job_type, "error": str(exc_value)[:300]})
    if isinstance(exc_value, JobRefused):
        return  # not the platform's job: nothing of it is reported anywhere
    retrying = bool(job.retries_left)
    if job_type == "train_model" and not retrying:
        _report_training_failure(job, exc_value)


def _report_training_failure(job, exc_value) -> None:
    """Tell the AI service the model will not come, so it does not wait forever."""
    model_id = (job.kwargs.get("params") or {}).get("model_id")
    if not model_id:
        return
    try:
        WorkerContext.current().call_service(
            "ai", "PUT", routes.model_result(model_id),
            {"status": "failed", "error": error_text(exc_value) or "the training job failed", "job_id": job.id},
        )
    except Exception as exc:  # the job's own failure is already recorded; log and move on
        log.error("could not report a failed training", extra={"model_id": model_id, "error": str(exc)})


def error_text(exc_or_info: Any) -> str:
    """A readable one-line error: the exception's last line, never a full traceback."""
    text = str(exc_or_info or "").strip()
    if not text:
        return ""
    last = text.splitlines()[-1].strip()
    return last[:500]
