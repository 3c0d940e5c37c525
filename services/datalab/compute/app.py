"""Compute service (port 8003): named jobs on RQ queues, run by `datalab worker`s.

Submission checks everything a worker would trip on later (job type, params, access to the
dataset, dependencies) and answers 202 with the job's id; workers do the work. Status,
progress, result or a readable error, cancel, and a list with filters complete the API.

A train_model job names a model the ai service created for the caller and that awaits its
first job (ai submits it; a foreign or unknown model is a 404, a trained one a 409). Users
(not admins) have quotas: params of at most max_params_bytes, max_active_jobs queued or
running (429 with Retry-After), and bounds on how long one job may hold a worker, so one
user's long job cannot keep everyone else waiting: a per-queue timeout ceiling
(user_max_timeout), `default` stays the short lane (heavy job types cannot be moved onto
it), and a user's sleep lasts at most user_max_sleep.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from typing import Annotated, Any, Literal

import redis
from fastapi import APIRouter, FastAPI, Query as QueryParam, Request, Response
from prometheus_client import Counter, Gauge
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from datalab.core.app import ServiceSpec, create_app
from datalab.core.audit import audit
from datalab.core.auth import CurrentUser, Principal, bearer_token
from datalab.core.cache import create_sync_redis
from datalab.core.service_client import ServiceUnavailable
from datalab.core.errors import Problem
from datalab.core.secret_files import SecretStore
from datalab.core.settings import BaseServiceSettings

from . import dispatch as rqq
from .jobs import JOB_TYPES, DatasetParams, SleepParams, TrainModelParams

log = logging.getLogger("datalab.compute")
QUEUE_LENGTH = Gauge("datalab_compute_queue_length", "Jobs waiting in a queue", ["queue"])
SUBMITTED = Counter("datalab_compute_jobs_submitted_total", "Jobs submitted", ["type"])
REAPED = Counter("datalab_compute_jobs_reaped_total", "Abandoned jobs moved out of `started`")


class ComputeSettings(BaseServiceSettings):
    service_name: str = "compute"
    port: int = 8003
    reap_interval: float = 5.0  # seconds between checks for jobs whose worker died
    max_job_timeout: int = 6 * 3600
    # Quotas for non-admin users. Params live in Redis as long as the job (7 days).
    max_params_bytes: int = 64 * 1024  # a job's params, serialized as JSON
    max_active_jobs: int = 10  # a user's queued + deferred + scheduled + started jobs
    active_retry_after: int = 15  # seconds, the Retry-After of a 429 at that limit
    # The longest a user's job may run, per queue: a worker busy with one user's job is
    # busy for everyone, and default-queue jobs are meant to be short.
    user_max_timeout: dict[str, int] = {"default": 600, "heavy": 3600}
    user_max_sleep: float = 60.0  # seconds: `sleep` is for tests, not for holding a worker
    # With a Nomad address, jobs bound for these queues run as dispatched `compute-batch`
    # allocations instead of on the long-running workers.
    nomad_addr: str | None = None
    nomad_dispatch_queues: list[str] = ["heavy"]


JobId = Annotated[str, StringConstraints(pattern=f"^{rqq.JOB_ID.pattern}$")]  # checked before Redis sees it
# The registered types, as an enum in the OpenAPI: any other name is a 422 from validation.
JobTypeName = Literal[tuple(JOB_TYPES)]  # type: ignore[valid-type]
JOB_STATUSES = Literal["queued", "deferred", "scheduled", "started", "finished", "failed", "stopped", "canceled"]


class JobSubmit(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: JobTypeName
    params: dict[str, Any] = Field(default_factory=dict)
    dataset_id: str | None = Field(None, max_length=64)  # shorthand for params.dataset_id
    queue: Literal["default", "heavy"] | None = None
    depends_on: list[JobId] = Field(default_factory=list, max_length=20)
    retries: int | None = Field(None, ge=0, le=5)
    timeout: int | None = Field(None, ge=1)


router = APIRouter(prefix="/api/v1/compute", tags=["compute"])


def _conn(request: Request) -> redis.Redis:
    return request.app.state.rq_redis


def _visible(job, principal: Principal) -> bool:
    return principal.is_admin or (job.meta or {}).get("owner_id") == principal.user_id


async def _job_or_404(request: Request, job_id: str, principal: Principal):
    """The job if the caller may see it; 404 otherwise (others' jobs do not exist)."""
    if not rqq.JOB_ID.fullmatch(job_id):
        raise Problem(404, "No such job.")
    job = await asyncio.to_thread(rqq.fetch, _conn(request), job_id)
    if job is not None and not _visible(job, principal):
        audit("job.access", "denied", actor=principal.user_id, object=job_id, request=request)
        job = None
    if job is None:
        raise Problem(404, f"No job {job_id!r}.")
    return job


def _has_nul(value: Any) -> bool:
    """Whether a string anywhere in a JSON value holds NUL (walked without recursion)."""
    todo = [value]
    while todo:
        item = todo.pop()
        if isinstance(item, str) and "\x00" in item:
            return True
        if isinstance(item, dict):
            todo.extend(item.keys())
            todo.extend(item.values())
        elif isinstance(item, list):
            todo.extend(item)
    return False


@router.get("/job-types")
async def job_types(_: CurrentUser) -> list[dict]:
    return [
        {"type": t.name, "queue": t.queue, "timeout": t.timeout, "retries": t.retries,
         "description": t.description, "params": t.params.model_json_schema()}
        for t in JOB_TYPES.values()
    ]


@router.post("/jobs", status_code=202)
async def submit(request: Request, body: JobSubmit, principal: CurrentUser, response: Response) -> dict:
    settings: ComputeSettings = request.app.state.settings
    spec = JOB_TYPES[body.type]
    try:
        # allow_nan=False: Python's parser reads NaN and 1e400, a JSON response cannot hold them.
        size = len(json.dumps(body.params, separators=(",", ":"), allow_nan=False).encode())
    except RecursionError:
        raise Problem(422, "The job's params nest too deeply.") from None
    except ValueError:
        raise Problem(422, "The job's params may not hold NaN or infinite numbers.") from None
    if size > settings.max_params_bytes:
        raise Problem(413, f"The job's params may take at most {settings.max_params_bytes} bytes as JSON.")
    if _has_nul(body.params) or _has_nul(body.dataset_id):
        raise Problem(422, "Strings in a job's params may not contain NUL characters.")
    params = dict(body.params)
    if body.dataset_id is not None:
        params.setdefault("dataset_id", body.dataset_id)
    try:
        validated = spec.params.model_validate(params)
    except ValidationError as exc:
        errors = [{"loc": list(e["loc"]), "msg": e["msg"]} for e in exc.errors()]
        raise Problem(422, f"Invalid params for job type {body.type!r}.", errors=errors) from None
    queue_name = body.queue or spec.queue
    if not principal.is_admin and queue_name == "default" and spec.queue != "default":
        raise Problem(422, f"{spec.name} jobs run on the {spec.queue} queue; `default` is for short jobs.")
    timeout = _timeout(settings, principal, spec, queue_name, body.timeout)
    if isinstance(validated, SleepParams):
        if not principal.is_admin and validated.seconds > settings.user_max_sleep:
            raise Problem(422, f"A sleep may last at most {settings.user_max_sleep:g} s.")
        if validated.seconds >= timeout:
            raise Problem(422, f"A sleep must end within the job's timeout ({timeout} s).")
    if isinstance(validated, DatasetParams):
        await _check_dataset(request, validated.dataset_id)
    if isinstance(validated, TrainModelParams):
        await _check_model(request, validated, principal)
    for dep in body.depends_on:
        await _job_or_404(request, dep, principal)

    submission = rqq.Submission(
        job_type=body.type, params=validated.model_dump(mode="json"), owner_id=principal.user_id,
        queue=body.queue, depends_on=tuple(body.depends_on), retries=body.retries, timeout=timeout,
    )
    dispatcher = request.app.state.dispatcher
    if request.app.state.nomad_dispatcher and queue_name in settings.nomad_dispatch_queues:
        dispatcher = request.app.state.nomad_dispatcher
    job = await asyncio.to_thread(_submit_within_quota, request, principal, dispatcher, submission)
    SUBMITTED.labels(body.type).inc()
    response.headers["Location"] = f"/api/v1/compute/jobs/{job.id}"
    return rqq.view(job)


def _timeout(settings: ComputeSettings, principal: Principal, spec, queue_name: str, asked: int | None) -> int:
    """The job's timeout. A user's is at most the queue's limit for users (a type's longer
    default is cut to it; asking for more is a 422); an admin's at most max_job_timeout."""
    limit = settings.max_job_timeout
    if not principal.is_admin:
        limit = min(limit, settings.user_max_timeout.get(queue_name, limit))
    if asked is not None and asked > limit:
        raise Problem(422, f"timeout may not exceed {limit} s on the {queue_name} queue.")
    return min(asked or spec.timeout, limit)


def _submit_within_quota(request: Request, principal: Principal, dispatcher, submission: rqq.Submission):
    """Submit unless the user already has max_active_jobs queued or running. Admins are not
    counted. One submission per user at a time, so two at once cannot both slip past it."""
    settings: ComputeSettings = request.app.state.settings
    conn = _conn(request)
    if principal.is_admin:
        return dispatcher.submit(conn, submission)
    with conn.lock(f"dl:compute:submit-lock:{principal.user_id}", timeout=30, blocking_timeout=10):
        if rqq.count_active(conn, principal.user_id) >= settings.max_active_jobs:
            raise Problem(
                429, f"You have {settings.max_active_jobs} jobs queued or running, the most allowed; "
                "submit more when some have ended.",
                headers={"Retry-After": str(settings.active_retry_after)},
            )
        return dispatcher.submit(conn, submission)


async def _check_model(request: Request, p: TrainModelParams, principal: Principal) -> None:
    """A train_model job writes models/{model_id}.joblib and reports to ai as the platform,
    so the model must be one the ai service created for this caller, still awaiting its
    first job, and the job must train what the model records. Only ai submits such jobs."""
    try:
        resp = await request.app.state.services.request(
            "ai", "GET", f"/api/v1/ai/models/{p.model_id}", token=bearer_token(request)
        )
    except ServiceUnavailable:
        raise Problem(503, "The ai service is not answering; try again shortly.") from None
    if resp.status == 404:  # not the caller's, or no model at all: the same answer
        audit("model.access", "denied", actor=principal.user_id, object=p.model_id, request=request)
        raise Problem(404, f"No model {p.model_id!r}.")
    if resp.status != 200:
        raise Problem(502, f"The ai service answered {resp.status}.")
    row = resp.json()
    if row.get("status") != "training" or row.get("job_id"):
        raise Problem(409, f"Model {p.model_id} is not awaiting training.", model_status=row.get("status"))
    recorded = (row.get("dataset_id"), row.get("target"), row.get("features"), row.get("kind"), row.get("params") or {})
    if recorded != (p.dataset_id, p.target, p.features, p.kind, p.params):
        raise Problem(422, f"The job must train model {p.model_id} as the ai service recorded it.")
    # One job per model: the first submission claims it (ai sets job_id only afterwards).
    claimed = await asyncio.to_thread(
        _conn(request).set, f"dl:compute:train-claim:{p.model_id}", principal.user_id, nx=True, ex=rqq.RESULT_TTL
    )
    if not claimed:
        raise Problem(409, f"Model {p.model_id} already has a training job.")


async def _check_dataset(request: Request, dataset_id: str) -> None:
    """The caller must see the dataset now; the worker reads it later as the platform."""
    try:
        resp = await request.app.state.services.request(
            "data", "GET", f"/api/v1/data/datasets/{dataset_id}", token=bearer_token(request)
        )
    except ServiceUnavailable:
        raise Problem(503, "The data service is not answering; try again shortly.") from None
    if resp.status == 404:
        raise Problem(404, f"No dataset {dataset_id!r}.")
    if resp.status != 200:
        raise Problem(502, f"The data service answered {resp.status}.")


@router.get("/jobs/{job_id}")
async def get_job(request: Request, job_id: str, principal: CurrentUser) -> dict:
    job = await _job_or_404(request, job_id, principal)
    return rqq.view(job)


@router.delete("/jobs/{job_id}")
async def cancel_job(request: Request, job_id: str, principal: CurrentUser) -> dict:
    job = await _job_or_404(request, job_id, principal)
    try:
        status = await asyncio.to_thread(rqq.cancel, _conn(request), job)
    except ValueError as exc:
        raise Problem(409, f"The job is already {exc}; nothing to cancel.") from None
    return {"id": job.id, "status": status}


@router.get("/jobs")
async def list_jobs(
    request: Request,
    principal: CurrentUser,
    status: JOB_STATUSES | None = None,
    type: Annotated[str | None, QueryParam(pattern=r"^[a-z_]{1,64}$")] = None,  # noqa: A002 - the API's field name
    limit: Annotated[int, QueryParam(ge=1, le=200)] = 50,
    offset: Annotated[int, QueryParam(ge=0, le=1_000_000)] = 0,
) -> dict:
    index = rqq.INDEX_ALL if principal.is_admin else rqq.index_key(principal.user_id)

    def load() -> tuple[list[dict], int]:
        conn = _conn(request)
        ids = [i.decode() for i in conn.zrevrange(index, 0, -1)]
        views = []
        for job_id in ids:
            job = rqq.fetch(conn, job_id)
            if job is None:  # expired (result/failure TTL): drop it from the index
                conn.zrem(index, job_id)
                continue
            v = rqq.view(job)
            if (status is None or v["status"] == status) and (type is None or v["type"] == type):
                views.append(v)
        return views[offset : offset + limit], len(views)

    items, total = await asyncio.to_thread(load)
    return {"items": items, "total": total, "limit": limit, "offset": offset}


async def _reaper(app: FastAPI) -> None:
    """Never `started` forever: move jobs whose worker died on, and export queue lengths."""
    settings: ComputeSettings = app.state.settings
    while True:
        try:
            moved = await asyncio.to_thread(rqq.reap, app.state.rq_redis)
            if moved:
                REAPED.inc(moved)
                log.warning("abandoned jobs moved out of started", extra={"count": moved})
            for name, length in (await asyncio.to_thread(rqq.queue_lengths, app.state.rq_redis)).items():
                QUEUE_LENGTH.labels(name).set(length)
        except Exception:  # Redis hiccup: try again next round
            log.exception("reaper round failed")
        await asyncio.sleep(settings.reap_interval)


async def _startup(app: FastAPI) -> None:
    settings: ComputeSettings = app.state.settings
    # RQ speaks synchronous redis-py; it runs in threads, off the event loop.
    app.state.rq_redis = create_sync_redis(settings, app.state.secrets, socket_timeout=10)
    app.state.dispatcher = rqq.RQDispatcher()
    app.state.nomad_dispatcher = None
    if settings.nomad_addr:
        app.state.nomad_dispatcher = rqq.NomadDispatcher(
            settings.nomad_addr, token=SecretStore(settings.secrets_dir).read("nomad_token")
        )
    app.state.reaper = asyncio.create_task(_reaper(app))


async def _shutdown(app: FastAPI) -> None:
    app.state.reaper.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await app.state.reaper
    app.state.rq_redis.close()


async def _rq_ready(app: FastAPI) -> None:
    await asyncio.to_thread(app.state.rq_redis.ping)


SPEC = ServiceSpec(
    name="compute",
    routers=[router],
    on_startup=[_startup],
    on_shutdown=[_shutdown],
    ready_checks={"rq": _rq_ready},
)


def build_app(settings: ComputeSettings | None = None) -> FastAPI:
    return create_app(SPEC, settings or ComputeSettings())
