"""RQ plumbing shared by the compute API and the workers: queues, the jobs a worker agrees
to run (PlatformJob), dispatchers, job views and lists, cancellation, and the reap that
keeps a dead worker's job from staying `started`.

RQ's client is synchronous; the API calls these functions with `asyncio.to_thread`.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, replace
from typing import Any, Protocol

import redis
from rq import Callback, Queue, Retry
from rq.command import send_stop_job_command
from rq.exceptions import DeserializationError, InvalidJobOperation, NoSuchJobError
from rq.job import Job, JobStatus
from rq.registry import StartedJobRegistry
from rq.serializers import JSONSerializer
from rq.timeouts import TimerDeathPenalty

from datalab.core.audit import audit
from datalab.core.nomad_api import nomad_client

from .jobs import JOB_TYPES
from .tasks import JobRefused, error_text, execute, on_failure

QUEUES = ("default", "heavy", "nomad")  # "nomad": run by dispatched compute-batch allocations
RESULT_TTL = 7 * 24 * 3600
FAILURE_TTL = 7 * 24 * 3600
RETRY_INTERVALS = [2, 10, 30]  # seconds: backoff between attempts
INDEX_ALL = "dl:compute:jobs"
JOB_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")  # RQ's ids are uuid4; nothing else is looked up
ACTIVE = frozenset({"queued", "deferred", "scheduled", "started"})  # counted against a user's quota
EXECUTE = f"{execute.__module__}.{execute.__qualname__}"
ON_FAILURE = f"{on_failure.__module__}.{on_failure.__qualname__}"


def _text(value: object) -> str:
    """A Redis reply's member as text (the connections answer bytes)."""
    return value.decode() if isinstance(value, bytes) else str(value)


def index_key(owner_id: str) -> str:
    return f"dl:compute:jobs:{owner_id}"


def active_key(owner_id: str) -> str:
    return f"dl:compute:active:{owner_id}"


class PlatformJob(Job):
    """An RQ job that runs only the platform's entry point with a registered job type.

    RQ imports whatever callable a job names (`job.func`, its callbacks) when it runs it, so
    anyone who can write to Redis could name `os.system`. This class decides from the names
    alone, before any import: `execute` with a job type in JOB_TYPES runs; anything else
    fails with JobRefused. Callbacks are the platform's own or none, webhooks none."""

    def refusal(self) -> str | None:
        try:
            func, instance, args, kwargs = self.func_name, self.instance, self.args, self.kwargs
        except DeserializationError:
            return "its data cannot be read"
        if func != EXECUTE or instance is not None or args:
            return f"it names {str(func)[:200]!r}, not {EXECUTE}"
        if not isinstance(kwargs, dict) or set(kwargs) != {"job_type", "params"}:
            return "its arguments are not (job_type, params)"
        job_type = kwargs["job_type"]
        if not isinstance(job_type, str) or job_type not in JOB_TYPES or not isinstance(kwargs["params"], dict):
            return f"{str(job_type)[:100]!r} is not a job type"
        names = (self._success_callback_name, self._failure_callback_name, self._stopped_callback_name)
        if names[0] or names[2] or names[1] not in (None, ON_FAILURE):
            return "it names callbacks that are not the platform's"
        return None

    @property
    def func(self):
        if (reason := self.refusal()) is not None:
            audit("job.run", "denied", actor=None, object=self.id, reason=reason)
            raise JobRefused(f"Not a DataLab job: {reason}.")
        return execute

    @property
    def success_callback(self):
        return None

    @property
    def failure_callback(self):
        return on_failure if self._failure_callback_name == ON_FAILURE else None

    @property
    def stopped_callback(self):
        return None

    def send_webhooks(self, status, *, exc_string=None) -> None:
        """The platform sets none; one written into Redis is not sent (no requests on its behalf)."""


def queue(connection: redis.Redis, name: str) -> Queue:
    return Queue(name, connection=connection, serializer=JSONSerializer, job_class=PlatformJob)


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
            pipe.sadd(active_key(s.owner_id), job.id)
            pipe.expire(active_key(s.owner_id), RESULT_TTL)
            pipe.execute()
        return job


def count_active(connection: redis.Redis, owner_id: str) -> int:
    """How many of the owner's jobs are queued, deferred, scheduled or started. The set
    holds ids since submission; the ones that ended (or expired) are dropped here."""
    key = active_key(owner_id)
    ids = [_text(i) for i in connection.smembers(key)]
    with connection.pipeline() as pipe:
        for job_id in ids:
            pipe.hget(PlatformJob.key_for(job_id), "status")
        statuses = pipe.execute()
    ended = [i for i, st in zip(ids, statuses, strict=True) if st is None or st.decode() not in ACTIVE]
    if ended:
        connection.srem(key, *ended)
    return len(ids) - len(ended)


def fetch(connection: redis.Redis, job_id: str) -> Job | None:
    try:
        return PlatformJob.fetch(job_id, connection=connection, serializer=JSONSerializer)
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


def list_views(connection: redis.Redis, owner_id: str | None, *, status: str | None, job_type: str | None,
               offset: int, limit: int) -> tuple[list[dict[str, Any]], int]:
    """One page of the owner's jobs (every job for None: an admin), newest first, with the
    number that pass the filters. Ids whose job expired (result/failure TTL) leave the index."""
    index = INDEX_ALL if owner_id is None else index_key(owner_id)
    views = []
    for job_id in [_text(i) for i in connection.zrevrange(index, 0, -1)]:
        job = fetch(connection, job_id)
        if job is None:
            connection.zrem(index, job_id)
            continue
        v = view(job)
        if (status is None or v["status"] == status) and (job_type is None or v["type"] == job_type):
            views.append(v)
    return views[offset : offset + limit], len(views)


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
            name, connection=connection, serializer=JSONSerializer, death_penalty_class=TimerDeathPenalty,
            job_class=PlatformJob,
        )
        expired = registry.get_expired_job_ids()
        if expired:
            registry.cleanup()
            moved += len(expired)
    return moved


def queue_lengths(connection: redis.Redis) -> dict[str, int]:
    return {name: queue(connection, name).count for name in QUEUES}


class NomadDispatcher:
    """Compute's heavy jobs as dispatched instances of the `compute-batch` job.

    The job is recorded in RQ as usual (status, result, errors, retries all in one place)
    on the `nomad` queue, and one allocation of the parameterized job is dispatched to run
    it: `datalab worker` in burst mode for exactly one job on that queue.
    """

    queue = "nomad"

    def __init__(self, address: str, job_id: str = "compute-batch", token: str | None = None):
        self.api = nomad_client(address, token)
        self.job_id = job_id

    def submit(self, connection: redis.Redis, submission: Submission) -> Job:
        job = RQDispatcher().submit(connection, replace(submission, queue=self.queue))
        self.api.job.dispatch_job(self.job_id, meta={"rq_job_id": job.id, "job_type": submission.job_type},
                                  idempotency_token=job.id)
        return job


@dataclass(frozen=True)
class Dispatchers:
    """Where a submission goes: to Nomad for the queues it takes (when there is a Nomad
    address), to the RQ workers otherwise."""

    rq: RQDispatcher
    nomad: NomadDispatcher | None = None
    nomad_queues: frozenset[str] = frozenset()

    def for_queue(self, queue_name: str) -> Dispatcher:
        if self.nomad is not None and queue_name in self.nomad_queues:
            return self.nomad
        return self.rq
