"""Compute service (port 8003): named jobs on RQ queues, run by `datalab worker`s.

Submission checks everything a worker would trip on later (job type, params, access to the
dataset, dependencies) and answers 202 with the job's id; workers do the work. Status,
progress, result or a readable error, cancel, and a list with filters complete the API.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Annotated, Any, Literal

import redis
from fastapi import APIRouter, FastAPI, Query as QueryParam, Request, Response
from prometheus_client import Counter, Gauge
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from datalab.core.app import ServiceSpec, create_app
from datalab.core.auth import CurrentUser, Principal, bearer_token
from datalab.core.cache import create_sync_redis
from datalab.core.client import ServiceUnavailable
from datalab.core.errors import Problem
from datalab.core.secrets import SecretStore
from datalab.core.settings import BaseServiceSettings

from . import queue as rqq
from .jobs import JOB_TYPES, DatasetParams

log = logging.getLogger("datalab.compute")
QUEUE_LENGTH = Gauge("datalab_compute_queue_length", "Jobs waiting in a queue", ["queue"])
SUBMITTED = Counter("datalab_compute_jobs_submitted_total", "Jobs submitted", ["type"])
REAPED = Counter("datalab_compute_jobs_reaped_total", "Abandoned jobs moved out of `started`")


class ComputeSettings(BaseServiceSettings):
    service_name: str = "compute"
    port: int = 8003
    reap_interval: float = 5.0  # seconds between checks for jobs whose worker died
    max_job_timeout: int = 6 * 3600
    # With a Nomad address, jobs bound for these queues run as dispatched `compute-batch`
    # allocations instead of on the long-running workers.
    nomad_addr: str | None = None
    nomad_dispatch_queues: list[str] = ["heavy"]


class JobSubmit(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: str
    params: dict[str, Any] = Field(default_factory=dict)
    dataset_id: str | None = None  # shorthand for params.dataset_id
    queue: Literal["default", "heavy"] | None = None
    depends_on: list[str] = Field(default_factory=list, max_length=20)
    retries: int | None = Field(None, ge=0, le=5)
    timeout: int | None = Field(None, ge=1)


router = APIRouter(prefix="/api/v1/compute", tags=["compute"])


def _conn(request: Request) -> redis.Redis:
    return request.app.state.rq_redis


def _visible(job, principal: Principal) -> bool:
    return principal.is_admin or (job.meta or {}).get("owner_id") == principal.user_id


async def _job_or_404(request: Request, job_id: str, principal: Principal):
    job = await asyncio.to_thread(rqq.fetch, _conn(request), job_id)
    if job is None or not _visible(job, principal):
        raise Problem(404, f"No job {job_id!r}.")
    return job


@router.get("/job-types")
async def job_types(_: CurrentUser) -> list[dict]:
    return [
        {"type": t.name, "queue": t.queue, "timeout": t.timeout, "retries": t.retries,
         "description": t.description, "params": t.params.model_json_schema()}
        for t in JOB_TYPES.values()
    ]


@router.post("/jobs", status_code=202)
async def submit(request: Request, body: JobSubmit, principal: CurrentUser, response: Response) -> dict:
    spec = JOB_TYPES.get(body.type)
    if spec is None:
        raise Problem(422, f"Unknown job type {body.type!r}.", known=sorted(JOB_TYPES))
    params = dict(body.params)
    if body.dataset_id is not None:
        params.setdefault("dataset_id", body.dataset_id)
    try:
        validated = spec.params.model_validate(params)
    except ValidationError as exc:
        errors = [{"loc": list(e["loc"]), "msg": e["msg"]} for e in exc.errors()]
        raise Problem(422, f"Invalid params for job type {body.type!r}.", errors=errors) from None
    if body.timeout and body.timeout > request.app.state.settings.max_job_timeout:
        raise Problem(422, f"timeout may not exceed {request.app.state.settings.max_job_timeout} s.")
    if isinstance(validated, DatasetParams):
        await _check_dataset(request, validated.dataset_id)
    for dep in body.depends_on:
        await _job_or_404(request, dep, principal)

    submission = rqq.Submission(
        job_type=body.type, params=validated.model_dump(mode="json"), owner_id=principal.user_id,
        queue=body.queue, depends_on=tuple(body.depends_on), retries=body.retries, timeout=body.timeout,
    )
    dispatcher = request.app.state.dispatcher
    settings: ComputeSettings = request.app.state.settings
    if request.app.state.nomad_dispatcher and (body.queue or spec.queue) in settings.nomad_dispatch_queues:
        dispatcher = request.app.state.nomad_dispatcher
    job = await asyncio.to_thread(dispatcher.submit, _conn(request), submission)
    SUBMITTED.labels(body.type).inc()
    response.headers["Location"] = f"/api/v1/compute/jobs/{job.id}"
    return rqq.view(job)


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
    status: str | None = None,
    type: str | None = None,  # noqa: A002 - the API's field name
    limit: Annotated[int, QueryParam(ge=1, le=200)] = 50,
    offset: Annotated[int, QueryParam(ge=0)] = 0,
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
        from datalab.hashicorp.nomad import NomadDispatcher

        app.state.nomad_dispatcher = NomadDispatcher(
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
