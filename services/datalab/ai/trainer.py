"""Training orchestration: a model is fitted in the request, or by a compute job.

Small datasets train in the request (off the event loop, in a pool of their own so a fit
never holds up predictions); large ones (or `"async": true`) become a `train_model` job on
the compute service's heavy queue, whose worker fits with `training.fit`, writes the
artifact with `training.save` to DATALAB_HOME/models/{id}.joblib and reports with
`PUT /api/v1/ai/models/{id}/result` (`Trainer.record_result`).
"""

from __future__ import annotations

import asyncio
import io
import logging
import uuid
from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress
from pathlib import Path
from typing import Any

import polars as pl
from prometheus_client import Histogram

from datalab.contracts import routes
from datalab.contracts.data_client import DataClient
from datalab.core.errors import Problem
from datalab.core.service_client import ServiceClient, ServiceResponse, ServiceUnavailable
from datalab.ml import training

from .problems import no_model, unprocessable
from .records import ModelRecord, ModelRecords
from .schemas import TrainRequest, TrainResult
from .serving import ModelCache
from .settings import AiSettings

log = logging.getLogger("datalab.ai")

TRAIN_SECONDS = Histogram(
    "datalab_ai_training_seconds",
    "Time spent fitting a model (TrainedModel.fit_seconds)",
    ["kind", "mode"],  # mode: sync (in the service) | async (compute worker)
    buckets=(0.01, 0.05, 0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800),
)
# The task a kind always has; the others' follows the target (known once fitted).
FIXED_TASKS = {"linear": "regression", "logistic": "classification"}


def canonical_dataset_id(value: str) -> str:
    """The canonical form of a dataset id; 404 for what cannot be one. It goes into the path
    of a call to data, where "" or "x/content" would name another route."""
    try:
        return str(uuid.UUID(value))
    except ValueError:
        raise Problem(404, f"No dataset {value!r}.") from None


class ComputeJobs:
    """The compute service's job API, called with the caller's token."""

    def __init__(self, services: ServiceClient, token: str | None):
        self.services = services
        self.token = token

    async def _call(self, method: str, path: str, json: Any = None) -> ServiceResponse:
        try:
            return await self.services.request("compute", method, path, token=self.token, json=json)
        except ServiceUnavailable as exc:
            log.warning("service unavailable", extra={"service": "compute", "error": str(exc)})
            raise Problem(503, "The compute service is not answering; try again shortly.") from None

    async def submit_training(self, params: dict[str, Any]) -> str:
        """A train_model job on the heavy queue; its id."""
        resp = await self._call("POST", routes.compute_jobs(),
                                json={"type": "train_model", "params": params, "queue": "heavy"})
        if resp.status not in (200, 201, 202):
            log.error("compute refused the job",
                      extra={"status": resp.status, "body": resp.body[:500].decode(errors="replace")})
            raise Problem(502, f"The compute service refused the training job ({resp.status}).")
        return str(resp.json()["id"])

    async def cancel(self, job_id: str) -> None:
        """Best effort: a job that still runs finds no record when it reports, and the
        artifact it wrote is removed then (Trainer.record_result)."""
        try:
            resp = await self._call("DELETE", routes.compute_job(job_id))
        except Problem:
            return
        if resp.status not in (200, 404, 409):  # 409: it ended meanwhile
            log.warning("could not cancel a training job", extra={"job_id": job_id, "status": resp.status})


def _fit_and_save(content: bytes, row: ModelRecord, device: str, path: Path) -> training.TrainedModel:
    frame = pl.read_parquet(io.BytesIO(content))
    model = training.fit(frame, row.target, row.features, row.kind, device=device, params=row.params)
    training.save(model, path)
    return model


def _fill(row: ModelRecord, model: training.TrainedModel, path: Path) -> None:
    row.status, row.error = "ready", None
    row.task, row.metrics, row.classes = model.task, model.metrics, model.classes
    row.n_train, row.n_test, row.device = model.n_train, model.n_test, model.device
    row.artifact = f"models/{path.name}"


class Trainer:
    """Turns training requests into ready models (or queued jobs), takes the workers'
    results, and removes models with everything they left: record, job, artifact, cache."""

    def __init__(self, settings: AiSettings, records: ModelRecords, cache: ModelCache,
                 models_dir: Path, device: str):
        self.settings = settings
        self.records = records
        self.cache = cache
        self.models_dir = models_dir
        self.device = device
        self.pool = ThreadPoolExecutor(settings.train_concurrency, thread_name_prefix="train")

    def artifact(self, model_id: str) -> Path:
        return training.artifact_path(self.models_dir, model_id)

    async def create(self, body: TrainRequest, owner_id: str, data: DataClient,
                     compute: ComputeJobs) -> tuple[ModelRecord, bool]:
        """The new model's record, and whether it was queued as a job (else it is ready)."""
        dataset_id = canonical_dataset_id(body.dataset_id)
        dataset = await data.dataset(dataset_id)
        with unprocessable():  # every mistake the metadata can show, before any download
            params = training.check_request(dataset.kinds(), body.target, body.features, body.kind,
                                            body.params, rows=dataset.rows)
        row = ModelRecord(
            id=str(uuid.uuid4()), owner_id=owner_id, dataset_id=dataset_id, name=body.name,
            kind=body.kind, target=body.target, features=body.features, params=params,
            task=FIXED_TASKS.get(body.kind),
        )
        queued = body.run_async if body.run_async is not None else dataset.rows > self.settings.sync_train_max_rows
        if queued:
            return await self._queue(row, compute), True
        return await self._fit_now(row, data), False

    async def _fit_now(self, row: ModelRecord, data: DataClient) -> ModelRecord:
        content = await data.content(row.dataset_id)
        path = self.artifact(row.id)
        job = self.pool.submit(_fit_and_save, content, row, self.device, path)
        try:
            with unprocessable():
                model = await asyncio.wrap_future(job)
        except asyncio.CancelledError:
            # The fit runs on; when it ends, remove what it saved (no artifact without a record).
            job.add_done_callback(lambda _: path.unlink(missing_ok=True))
            raise
        TRAIN_SECONDS.labels(row.kind, "sync").observe(model.fit_seconds)
        _fill(row, model, path)
        try:
            await self.records.add(row)
        except BaseException:
            path.unlink(missing_ok=True)  # the record is the commit point: no artifact without one
            raise
        self.cache.put(row.id, model, row.owner_id)  # the first predict needs no load
        log.info("model trained", extra={"model_id": row.id, "kind": row.kind, "metrics": model.metrics})
        return row

    async def _queue(self, row: ModelRecord, compute: ComputeJobs) -> ModelRecord:
        row.status = "training"
        # The record exists before the job does, so a fast worker's result always finds it.
        await self.records.add(row)
        params: dict[str, Any] = {
            "model_id": row.id, "dataset_id": row.dataset_id, "target": row.target,
            "features": row.features, "kind": row.kind,
        }
        if row.params:
            params["params"] = row.params
        try:
            job_id = await compute.submit_training(params)
        except BaseException:
            await self.records.delete(row.id)  # no record left behind
            raise
        queued = await self.records.set_job(row.id, job_id)
        if queued is None:  # deleted in the meantime
            raise no_model(row.id)
        log.info("model training queued", extra={"model_id": row.id, "job_id": job_id})
        return queued

    async def record_result(self, model_id: str, result: TrainResult) -> ModelRecord:
        """A worker's report: the model becomes ready (from the artifact it wrote) or failed."""
        row = await self.records.get(model_id)
        if row is None:
            # Deleted while training: drop what the worker wrote (no artifact without a record).
            with suppress(training.ArtifactPathError):
                self.artifact(model_id).unlink(missing_ok=True)
            raise no_model(model_id)
        if result.job_id and row.job_id and result.job_id != row.job_id:
            raise Problem(409, f"Model {model_id} awaits the result of another job.")
        if row.status == result.status:
            return row  # a retried PUT: already recorded
        if row.status != "training":
            raise Problem(409, f"Model {model_id} is already {row.status}.", model_status=row.status)
        model = None
        if result.status == "ready":
            path = self.artifact(row.id)
            model = await self._load_reported(row, path)
            _fill(row, model, path)
            TRAIN_SECONDS.labels(row.kind, "async").observe(model.fit_seconds)
        else:
            row.status, row.error = "failed", result.error or "Training failed; the worker gave no reason."
        saved = await self.records.save(row)
        if model is not None:
            self.cache.put(row.id, model, row.owner_id)
        log.info("model result", extra={"model_id": model_id, "status": row.status})
        return saved

    async def _load_reported(self, row: ModelRecord, path: Path) -> training.TrainedModel:
        try:
            model = await asyncio.to_thread(training.load, path, root=self.models_dir)
        except FileNotFoundError:
            raise Problem(422, f"No artifact at models/{path.name}: write it with training.save first.") from None
        except Exception as exc:
            log.exception("artifact unreadable", extra={"model_id": row.id})
            raise Problem(422, f"The artifact models/{path.name} cannot be loaded ({type(exc).__name__}).") from None
        if (model.kind, model.target, model.features) != (row.kind, row.target, row.features):
            raise Problem(422, "The artifact does not match the model (kind, target or features differ).")
        return model

    async def discard(self, row: ModelRecord, compute: ComputeJobs) -> None:
        """Delete a model: its record, its job if it still trains, its artifact, its cache entry."""
        await self.records.delete(row.id)
        if row.status == "training" and row.job_id:
            await compute.cancel(row.job_id)
        self.artifact(row.id).unlink(missing_ok=True)
        self.cache.drop(row.id)

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
