"""AI service (port 8002): train models on datasets, serve predictions.

Small datasets train in the request (off the event loop, in a pool of their own so a fit
never holds up predictions); large ones (or `"async": true`) become a `train_model` job on
the compute service's heavy queue, whose worker fits with `training.fit`, writes the
artifact with `training.save` to DATALAB_HOME/models/{id}.joblib and reports with
`PUT /api/v1/ai/models/{id}/result`. Predictions go through an LRU cache of loaded models
and a micro-batcher per model (serving.py).
"""

from __future__ import annotations

import asyncio
import io
import logging
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Literal

import polars as pl
from fastapi import APIRouter, FastAPI, Query as QueryParam, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import Histogram
from pydantic import AfterValidator, BaseModel, ConfigDict, Field
from sqlalchemy import delete, func, select, update

from datalab.core import db, events
from datalab.core.audit import audit
from datalab.core.app import ServiceSpec, create_app
from datalab.core.auth import AdminUser, CurrentUser, Principal, bearer_token
from datalab.core.service_client import ServiceResponse, ServiceUnavailable
from datalab.core.errors import Problem
from datalab.core.openapi import problems
from datalab.core.settings import BaseServiceSettings, ensure_dir

from datalab.ml import training
from .models import Base, Model
from .serving import PREDICTIONS, ModelCache

log = logging.getLogger("datalab.ai")

TRAIN_SECONDS = Histogram(
    "datalab_ai_training_seconds",
    "Time spent fitting a model (TrainedModel.fit_seconds)",
    ["kind", "mode"],  # mode: sync (in the service) | async (compute worker)
    buckets=(0.01, 0.05, 0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800),
)
PROBLEM_TYPE = "https://datalab.dev/problems/invalid-model"
MAX_OFFSET = 1_000_000_000  # PostgreSQL takes a bigint; past the rows any page is empty anyway
NO_NUL = r"^[^\x00]*$"  # PostgreSQL text cannot hold a NUL character


class AiSettings(BaseServiceSettings):
    service_name: str = "ai"
    port: int = 8002
    device: Literal["auto", "cpu", "cuda"] = "auto"
    sync_train_max_rows: int = Field(100_000, ge=0)  # larger datasets train as a compute job
    train_concurrency: int = Field(2, ge=1)  # synchronous fits at once
    model_cache_size: int = Field(32, ge=1)
    batch_max_size: int = Field(256, ge=1)  # rows per predict call; 1 turns micro-batching off
    batch_max_wait_ms: float = Field(2.0, ge=0)
    predict_max_rows: int = Field(10_000, ge=1)
    max_body_bytes: int = Field(16 * 1024 * 1024, ge=0)  # a predict call of predict_max_rows rows


class TrainRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    dataset_id: str = Field(max_length=64)  # a data id (a UUID): see _dataset_id
    target: str = Field(min_length=1, max_length=255)
    features: list[str] = Field(min_length=1, max_length=1000)
    kind: training.Kind
    name: str | None = Field(default=None, max_length=255, pattern=NO_NUL)
    params: dict[str, Any] = Field(default_factory=dict)  # training.PARAMS lists them per kind
    run_async: bool | None = Field(default=None, alias="async")  # None: by dataset size


class TrainResult(BaseModel):
    """What the compute worker reports. The row is filled from the artifact it wrote (the
    source of truth); the optional numbers are accepted for the worker's convenience."""

    status: Literal["ready", "failed"]
    # A worker's reason may quote data holding NUL, which PostgreSQL text cannot store: the
    # reason is kept, the NUL shown as U+FFFD (refusing it would leave the model training).
    error: Annotated[str | None, AfterValidator(lambda v: v and v.replace("\x00", "\ufffd"))] = Field(
        default=None, max_length=10_000)
    metrics: dict[str, float | None] | None = None
    n_train: int | None = None
    n_test: int | None = None
    classes: list[Any] | None = None
    device: str | None = None
    job_id: str | None = Field(default=None, max_length=64)  # the reporting job: must be the model's


class ModelOut(BaseModel):
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


router = APIRouter(prefix="/api/v1/ai", tags=["ai"])


def _out(row: Model) -> ModelOut:
    return ModelOut.model_validate(row, from_attributes=True)


def _artifact(request: Request, model_id: str) -> Path:
    return training.artifact_path(request.app.state.models_dir, model_id)


@contextmanager
def _unprocessable() -> Iterator[None]:
    try:
        yield
    except training.RowsError as exc:
        raise Problem(422, str(exc), type_=PROBLEM_TYPE, errors=exc.errors[:100]) from None
    except training.TrainingError as exc:
        raise Problem(422, str(exc), type_=PROBLEM_TYPE) from None


def _dataset_id(value: str) -> str:
    """The canonical form of a dataset id; 404 for what cannot be one. It goes into the path
    of a call to data, where "" or "x/content" would name another route."""
    try:
        return str(uuid.UUID(value))
    except ValueError:
        raise Problem(404, f"No dataset {value!r}.") from None


async def _row(request: Request, model_id: str) -> Model | None:
    if not db.is_row_id(model_id):
        return None
    return await db.read_with_retry(request.app.state.sessions, lambda session: session.get(Model, model_id))


async def _owned(request: Request, model_id: str, principal: Principal, action: str) -> Model:
    """The model if the caller may see it; 404 otherwise (others' models do not exist, but
    the attempt on one goes to the audit trail as `action` denied)."""
    row = await _row(request, model_id)
    if row is not None and row.owner_id != principal.user_id and not principal.is_admin:
        _denied(request, principal, action, model_id)
        row = None
    if row is None:
        raise Problem(404, f"No model {model_id!r}.")
    return row


def _denied(request: Request, principal: Principal, action: str, model_id: str) -> None:
    audit(action, "denied", actor=principal.username, object=f"model:{model_id}", request=request,
          reason="not the owner")


async def _call(request: Request, service: str, method: str, path: str, **kwargs) -> ServiceResponse:
    """Call another service with the caller's token; 503 when it does not answer."""
    try:
        return await request.app.state.services.request(
            service, method, path, token=bearer_token(request), **kwargs
        )
    except ServiceUnavailable as exc:
        log.warning("service unavailable", extra={"service": service, "error": str(exc)})
        raise Problem(503, f"The {service} service is not answering; try again shortly.") from None


async def _dataset(request: Request, dataset_id: str, suffix: str = "") -> ServiceResponse:
    resp = await _call(request, "data", "GET", f"/api/v1/data/datasets/{dataset_id}{suffix}")
    if resp.status == 404:
        raise Problem(404, f"No dataset {dataset_id!r}.")
    if resp.status != 200:
        raise Problem(502, f"The data service answered {resp.status} for dataset {dataset_id!r}.")
    return resp


# -- training -------------------------------------------------------------------------------

@router.post("/models", status_code=201, response_model=ModelOut,
             responses={202: {"model": ModelOut}, **problems(404, 502)})
async def create_model(request: Request, response: Response, body: TrainRequest, principal: CurrentUser) -> ModelOut:
    settings: AiSettings = request.app.state.settings
    dataset_id = _dataset_id(body.dataset_id)
    meta = (await _dataset(request, dataset_id)).json()
    columns = {c["name"]: c["type"] for c in meta["columns"]}
    with _unprocessable():  # every mistake the metadata can show, before any download
        params = training.check_request(columns, body.target, body.features, body.kind, body.params,
                                        rows=meta["rows"])
    row = Model(
        id=str(uuid.uuid4()), owner_id=principal.user_id, dataset_id=dataset_id, name=body.name,
        kind=body.kind, target=body.target, features=body.features, params=params,
        task={"linear": "regression", "logistic": "classification"}.get(body.kind),
    )
    run_async = body.run_async if body.run_async is not None else meta["rows"] > settings.sync_train_max_rows
    if run_async:
        response.status_code = 202
        return await _train_async(request, row)
    return await _train_sync(request, row)


def _fit_and_save(content: bytes, row: Model, device: str, path: Path) -> training.TrainedModel:
    frame = pl.read_parquet(io.BytesIO(content))
    model = training.fit(frame, row.target, row.features, row.kind, device=device, params=row.params)  # type: ignore[arg-type]
    training.save(model, path)
    return model


async def _train_sync(request: Request, row: Model) -> ModelOut:
    state = request.app.state
    content = (await _dataset(request, row.dataset_id, "/content")).body
    path = _artifact(request, row.id)
    job = state.train_pool.submit(_fit_and_save, content, row, state.device, path)
    try:
        with _unprocessable():
            model = await asyncio.wrap_future(job)
    except asyncio.CancelledError:
        # The fit runs on; when it ends, remove what it saved (no artifact without a row).
        job.add_done_callback(lambda _: path.unlink(missing_ok=True))
        raise
    TRAIN_SECONDS.labels(row.kind, "sync").observe(model.fit_seconds)
    _fill(row, model, path)
    try:
        async with state.sessions() as session, session.begin():
            session.add(row)
    except BaseException:
        path.unlink(missing_ok=True)  # the row is the commit point: no artifact without one
        raise
    state.cache.put(row.id, model, row.owner_id)  # the first predict needs no load
    log.info("model trained", extra={"model_id": row.id, "kind": row.kind, "metrics": model.metrics})
    return _out(row)


def _fill(row: Model, model: training.TrainedModel, path: Path) -> None:
    row.status, row.error = "ready", None
    row.task, row.metrics, row.classes = model.task, model.metrics, model.classes
    row.n_train, row.n_test, row.device = model.n_train, model.n_test, model.device
    row.artifact = f"models/{path.name}"


async def _train_async(request: Request, row: Model) -> ModelOut:
    sessions = request.app.state.sessions
    row.status = "training"
    # The row exists before the job does, so a fast worker's result always finds it.
    async with sessions() as session, session.begin():
        session.add(row)
    params: dict[str, Any] = {
        "model_id": row.id, "dataset_id": row.dataset_id, "target": row.target,
        "features": row.features, "kind": row.kind,
    }
    if row.params:
        params["params"] = row.params
    try:
        resp = await _call(request, "compute", "POST", "/api/v1/compute/jobs",
                           json={"type": "train_model", "params": params, "queue": "heavy"})
        if resp.status not in (200, 201, 202):
            log.error("compute refused the job", extra={"status": resp.status, "body": resp.body[:500].decode(errors="replace")})
            raise Problem(502, f"The compute service refused the training job ({resp.status}).")
        job_id = str(resp.json()["id"])
    except BaseException:
        async with sessions() as session, session.begin():  # no row left behind
            await session.execute(delete(Model).where(Model.id == row.id))
        raise
    async with sessions() as session, session.begin():
        # Only job_id: the worker may already have reported a result.
        await session.execute(update(Model).where(Model.id == row.id).values(job_id=job_id))
        fresh = await session.get(Model, row.id)
    log.info("model training queued", extra={"model_id": row.id, "job_id": job_id})
    return _out(fresh)


@router.put("/models/{model_id}/result", response_model=ModelOut, responses=problems(409))
async def report_result(request: Request, model_id: str, body: TrainResult, _: AdminUser) -> ModelOut:
    state = request.app.state
    row = await _row(request, model_id)
    if row is None:
        if db.is_row_id(model_id):  # deleted while training: drop what the worker wrote
            _artifact(request, model_id).unlink(missing_ok=True)
        raise Problem(404, f"No model {model_id!r}.")
    if body.job_id and row.job_id and body.job_id != row.job_id:
        raise Problem(409, f"Model {model_id} awaits the result of another job.")
    if row.status == body.status:
        return _out(row)  # a retried PUT: already recorded
    if row.status != "training":
        raise Problem(409, f"Model {model_id} is already {row.status}.", model_status=row.status)
    model = None
    if body.status == "ready":
        path = _artifact(request, model_id)
        try:
            model = await asyncio.to_thread(training.load, path, root=state.models_dir)
        except FileNotFoundError:
            raise Problem(422, f"No artifact at models/{path.name}: write it with training.save first.") from None
        except Exception as exc:
            log.exception("artifact unreadable", extra={"model_id": model_id})
            raise Problem(422, f"The artifact models/{path.name} cannot be loaded ({type(exc).__name__}).") from None
        if (model.kind, model.target, model.features) != (row.kind, row.target, row.features):
            raise Problem(422, "The artifact does not match the model (kind, target or features differ).")
        _fill(row, model, path)
        TRAIN_SECONDS.labels(row.kind, "async").observe(model.fit_seconds)
    else:
        row.status, row.error = "failed", body.error or "Training failed; the worker gave no reason."
    async with state.sessions() as session, session.begin():
        merged = await session.merge(row)
    if model is not None:
        state.cache.put(model_id, model, row.owner_id)
    log.info("model result", extra={"model_id": model_id, "status": row.status})
    return _out(merged)


# -- models ---------------------------------------------------------------------------------

@router.get("/models", response_model=ModelPage)
async def list_models(
    request: Request,
    principal: CurrentUser,
    limit: Annotated[int, QueryParam(ge=1, le=500)] = 50,
    offset: Annotated[int, QueryParam(ge=0, le=MAX_OFFSET)] = 0,
) -> ModelPage:
    where = [] if principal.is_admin else [Model.owner_id == principal.user_id]
    async with request.app.state.sessions() as session:
        total = await session.scalar(select(func.count()).select_from(Model).where(*where))
        rows = await session.scalars(
            select(Model).where(*where).order_by(Model.created_at.desc(), Model.id).limit(limit).offset(offset)
        )
        items = [_out(r) for r in rows]
    return ModelPage(items=items, total=total or 0, limit=limit, offset=offset)


@router.get("/models/{model_id}", response_model=ModelOut)
async def get_model(request: Request, model_id: str, principal: CurrentUser) -> ModelOut:
    return _out(await _owned(request, model_id, principal, "model.read"))


@router.delete("/models/{model_id}", status_code=204)
async def delete_model(request: Request, model_id: str, principal: CurrentUser) -> Response:
    row = await _owned(request, model_id, principal, "model.delete")
    async with request.app.state.sessions() as session, session.begin():
        await session.execute(delete(Model).where(Model.id == model_id))
    if row.status == "training" and row.job_id:
        await _cancel_job(request, row.job_id)
    _artifact(request, model_id).unlink(missing_ok=True)
    request.app.state.cache.drop(model_id)
    # Every other ai instance drops it from its cache too (see _follow_deletions).
    await request.app.state.redis.publish(events.MODEL_DELETED, model_id)
    log.info("model deleted", extra={"model_id": model_id})
    audit("model.delete", "success", actor=principal.username, object=f"model:{model_id}",
          request=request, owner_id=row.owner_id)
    return Response(status_code=204)


async def _cancel_job(request: Request, job_id: str) -> None:
    """Best effort: a job that still runs finds no row when it reports, and the artifact
    it wrote is removed then (report_result)."""
    try:
        resp = await _call(request, "compute", "DELETE", f"/api/v1/compute/jobs/{job_id}")
    except Problem:
        return
    if resp.status not in (200, 404, 409):  # 409: it ended meanwhile
        log.warning("could not cancel a training job", extra={"job_id": job_id, "status": resp.status})


@router.post("/models/{model_id}/predict", responses=problems(409))
async def predict(request: Request, model_id: str, body: PredictRequest, principal: CurrentUser) -> JSONResponse:
    state = request.app.state
    if len(body.rows) > state.settings.predict_max_rows:
        raise Problem(422, f"At most {state.settings.predict_max_rows} rows per request.", type_=PROBLEM_TYPE)
    # A cached model is ready and its owner known: no database round trip (the hot path).
    served = state.cache.peek(model_id)
    if served is None:
        row = await _owned(request, model_id, principal, "model.predict")
        if row.status != "ready":
            raise Problem(409, f"Model {model_id} is {row.status}, not ready.", model_status=row.status)
        served = await state.cache.get(model_id, _artifact(request, model_id), row.owner_id)
    elif served.owner_id != principal.user_id and not principal.is_admin:
        _denied(request, principal, "model.predict", model_id)
        raise Problem(404, f"No model {model_id!r}.")
    with _unprocessable():
        X = served.model.matrix(body.rows)
    results = await served.batcher.submit(X)
    PREDICTIONS.labels(served.model.kind).inc(len(results))
    out: dict[str, Any] = {"model_id": model_id, "predictions": [value for value, _ in results]}
    if served.model.task == "classification":
        out["classes"] = served.model.classes
        out["probabilities"] = [proba for _, proba in results]
    return JSONResponse(out)


# -- lifecycle ------------------------------------------------------------------------------

async def _startup(app: FastAPI) -> None:
    settings: AiSettings = app.state.settings
    app.state.models_dir = ensure_dir(settings.home / "models")
    app.state.train_pool = ThreadPoolExecutor(settings.train_concurrency, thread_name_prefix="train")
    app.state.cache = ModelCache(
        settings.model_cache_size, settings.batch_max_size, settings.batch_max_wait_ms / 1000
    )
    app.state.deletions = asyncio.create_task(_follow_deletions(app))
    log.info("ai ready", extra={"device": app.state.device, "batch_max_size": settings.batch_max_size})


async def _follow_deletions(app: FastAPI) -> None:
    """Drop models deleted through any instance from this one's cache: predict trusts it."""
    while True:
        pubsub = app.state.redis.pubsub()
        try:
            await pubsub.subscribe(events.MODEL_DELETED)
            app.state.cache.clear()  # whatever was deleted while we were not listening
            while True:
                message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=None)
                if message is not None:
                    app.state.cache.drop(message["data"].decode())
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # Redis went away: resubscribe (and clear) when it is back
            log.warning("model deletion feed lost", extra={"error": f"{type(exc).__name__}: {exc}"})
            await asyncio.sleep(1)
        finally:
            await pubsub.aclose()


async def _shutdown(app: FastAPI) -> None:
    if (task := getattr(app.state, "deletions", None)) is not None:
        task.cancel()
        with suppress(asyncio.CancelledError):
            await task
    if (cache := getattr(app.state, "cache", None)) is not None:
        cache.close()
    if (pool := getattr(app.state, "train_pool", None)) is not None:
        pool.shutdown(wait=False, cancel_futures=True)


SPEC = ServiceSpec(name="ai", routers=[router], metadata=Base.metadata, on_startup=[_startup], on_shutdown=[_shutdown])


def build_app(settings: AiSettings | None = None) -> FastAPI:
    settings = settings or AiSettings()
    # DATALAB_DEVICE=cuda without a usable GPU stops here, before anything starts, saying why.
    device = training.select_device(settings.device)
    app = create_app(SPEC, settings)
    app.state.device = device
    return app
