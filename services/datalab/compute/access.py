"""Who sees a job: its owner and admins. To anyone else it does not exist (a 404, audited)."""

from __future__ import annotations

import asyncio

import redis
from fastapi import Request
from rq.job import Job

from datalab.core.audit import audit
from datalab.core.auth import Principal
from datalab.core.errors import Problem

from . import dispatch


def is_visible(job: Job, principal: Principal) -> bool:
    return principal.is_admin or (job.meta or {}).get("owner_id") == principal.user_id


async def visible_job(connection: redis.Redis, job_id: str, principal: Principal, request: Request) -> Job:
    """The job if the caller may see it; 404 otherwise."""
    if not dispatch.JOB_ID.fullmatch(job_id):
        raise Problem(404, "No such job.")
    job = await asyncio.to_thread(dispatch.fetch, connection, job_id)
    if job is not None and not is_visible(job, principal):
        audit("job.access", "denied", actor=principal.user_id, object=job_id, request=request)
        job = None
    if job is None:
        raise Problem(404, f"No job {job_id!r}.")
    return job
