"""The compute API: job types; submit, read, cancel and list jobs (the caller's own, or
every job for an admin). Submission's checks are in submission.py; RQ in dispatch.py."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response

from datalab.contracts.routes import COMPUTE, compute_job
from datalab.core.auth import CurrentUser
from datalab.core.errors import Problem

from . import dispatch
from .access import visible_job
from .deps import RQConnectionDep, SubmissionsDep
from .jobs import JOB_TYPES
from .schemas import JobStatus, JobSubmit

router = APIRouter(prefix=COMPUTE, tags=["compute"])


@router.get("/job-types")
async def job_types(_: CurrentUser) -> list[dict]:
    return [t.summary() for t in JOB_TYPES.values()]


@router.post("/jobs", status_code=202)
async def submit(request: Request, body: JobSubmit, principal: CurrentUser, response: Response,
                 submissions: SubmissionsDep) -> dict:
    job = await submissions.submit(body, principal, request)
    response.headers["Location"] = compute_job(job.id)
    return dispatch.view(job)


@router.get("/jobs/{job_id}")
async def get_job(request: Request, job_id: str, principal: CurrentUser, connection: RQConnectionDep) -> dict:
    return dispatch.view(await visible_job(connection, job_id, principal, request))


@router.delete("/jobs/{job_id}")
async def cancel_job(request: Request, job_id: str, principal: CurrentUser, connection: RQConnectionDep) -> dict:
    job = await visible_job(connection, job_id, principal, request)
    try:
        status = await asyncio.to_thread(dispatch.cancel, connection, job)
    except ValueError as exc:
        raise Problem(409, f"The job is already {exc}; nothing to cancel.") from None
    return {"id": job.id, "status": status}


@router.get("/jobs")
async def list_jobs(
    principal: CurrentUser,
    connection: RQConnectionDep,
    status: JobStatus | None = None,
    job_type: Annotated[str | None, Query(alias="type", pattern=r"^[a-z_]{1,64}$")] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0,
) -> dict[str, Any]:
    owner_id = None if principal.is_admin else principal.user_id
    items, total = await asyncio.to_thread(
        dispatch.list_views, connection, owner_id, status=status, job_type=job_type, offset=offset, limit=limit
    )
    return {"items": items, "total": total, "limit": limit, "offset": offset}
