"""RQ plumbing shared by the compute API and the workers: queues, submission, job views,
cancellation and the reaper that keeps a dead worker's job from staying `started`.

RQ's client is synchronous; the API calls these functions with `asyncio.to_thread`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Protocol

import redis
from rq import Callback, Queue, Retry
from rq.command import send_stop_job_command
from rq.exceptions import InvalidJobOperation, NoSuchJobError
from rq.job import Job, JobStatus
from rq.registry import StartedJobRegistry
from rq.serializers import JSONSerializer
from rq.timeouts import TimerDeathPenalty

from .jobs import JOB_TYPES
from .tasks import error_text, execute, on_failure

QUEUES = ("default", "heavy", "nomad")  # "nomad": run by dispatched compute-batch allocations
RESULT_TTL = 7 * 24 * 3600
FAILURE_TTL = 7 * 24 * 3600
RETRY_INTERVALS = [2, 10, 30]  # seconds: backoff between attempts
INDEX_ALL = "dl:compute:jobs"


def index_key(owner_id: str) -> str:
    return f"dl:compute:jobs:{owner_id}"


def queue(connection: redis.Redis, name: str) -> Queue:
    return Queue(name, connection=connection, serializer=JSONSerializer)


@dataclass(frozen=True)
class Submission:
    job_type: str
    params: dict
    owner_id: str
    queue: str | None = None
    depends_on: tuple[str, ...] = ()
    retries: int | None = None
    timeout: int | None = None


class Dispatcher(Protocol):
    """Where heavy work runs. RQ workers by default; a Nomad parameterized batch job can
    take a job type instead (the HashiCorp deployment adds that dispatcher)."""

    def submit(self, connection: redis.Redis, submission: Submission) -> Job: ...


class RQDispatcher:
    def submit(self, connection: redis.Redis, s: Submission) -> Job:
        spec = JOB_TYPES[s.job_type]
        retries = spec.retries if s.retries is None else s.retries
        q = queue(connection, s.queue or spec.queue)
        job = q.enqueue(
            execute,
            kwargs={"job_type": s.job_type, "params": s.params},
            job_timeout=s.timeout or spec.timeout,
            result_ttl=RESULT_TTL,
            failure_ttl=FAILURE_TTL,
            retry=Retry(max=retries, interval=RETRY_INTERVALS[:retries] or 0) if retries else None,
            depends_on=list(s.depends_on) or None,
            on_failure=Callback(on_failure),
            meta={"type": s.job_type, "owner_id": s.owner_id, "progress": 0.0},
        )
        now = time.time()
        with connection.pipeline() as pipe:
            pipe.zadd(index_key(s.owner_id), {job.id: now})
            pipe.zadd(INDEX_ALL, {job.id: now})
            pipe.execute()
        return job


def fetch(connection: redis.Redis, job_id: str) -> Job | None:
    try:
        return Job.fetch(job_id, connection=connection, serializer=JSONSerializer)
    except NoSuchJobError:
        return None


def _iso(dt) -> str | None:
    return dt.isoformat() if dt else None


def view(job: Job) -> dict[str, Any]:
    """A job as the API shows it."""
    status = job.get_status(refresh=False)
    meta = job.meta or {}
    out: dict[str, Any] = {
        "id": job.id,
        "type": meta.get("type"),
        "queue": job.origin,
        "status": status.value if status else "unknown",
        "progress": meta.get("progress", 0.0),
        "progress_message": meta.get("progress_message"),
        "params": (job.kwargs or {}).get("params"),
        "enqueued_at": _iso(job.enqueued_at),
        "started_at": _iso(job.started_at),
        "ended_at": _iso(job.ended_at),
        "retries_left": job.retries_left,
        "depends_on": list(job.dependency_ids or []),
        "result": None,
        "error": None,
    }
    if status == JobStatus.FINISHED:
        out["result"] = job.return_value()
    elif status in (JobStatus.FAILED, JobStatus.STOPPED):
        info = job.exc_info or ""
        if "AbandonedJobError" in info:
            out["error"] = "The worker running this job stopped (killed or lost) before it finished."
        else:
            out["error"] = error_text(info) or "The job failed."
    return out


def cancel(connection: redis.Redis, job: Job) -> str:
    """Cancel a waiting job, or stop a running one. Returns the new status."""
    status = job.get_status()
    if status in (JobStatus.QUEUED, JobStatus.DEFERRED, JobStatus.SCHEDULED):
        job.cancel()
        return JobStatus.CANCELED.value
    if status == JobStatus.STARTED:
        try:
            send_stop_job_command(connection, job.id, serializer=JSONSerializer)
        except InvalidJobOperation:
            pass  # it finished meanwhile
        return JobStatus.STOPPED.value
    raise ValueError(status.value if status else "unknown")


def reap(connection: redis.Redis) -> int:
    """Move jobs whose worker stopped heartbeating out of `started`: retried when they have
    retries left, else failed (RQ runs their failure callback). Returns how many."""
    moved = 0
    for name in QUEUES:
        # The reaper runs in a thread: RQ's default (SIGALRM) timeout for the failure
        # callback only works in a main thread.
        registry = StartedJobRegistry(
            name, connection=connection, serializer=JSONSerializer, death_penalty_class=TimerDeathPenalty
        )
        expired = registry.get_expired_job_ids()
        if expired:
            registry.cleanup()
            moved += len(expired)
    return moved


def queue_lengths(connection: redis.Redis) -> dict[str, int]:
    return {name: queue(connection, name).count for name in QUEUES}
