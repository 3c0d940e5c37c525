"""A job submission: checked for everything a worker would trip on later, within the
caller's quotas, then handed to a dispatcher.

Checked, in this order: the params' size and strings, the params against the job type,
the queue, the timeout, a sleep's length, access to the dataset (through the DataClient,
with the caller's token), the model of a train_model job, and the dependencies.

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
import json
from dataclasses import dataclass
from typing import Any

import redis
from fastapi import Request
from prometheus_client import Counter
from pydantic import ValidationError
from rq.job import Job

from datalab.contracts import routes
from datalab.contracts.data_client import DataClient
from datalab.core.audit import audit
from datalab.core.auth import Principal, bearer_token
from datalab.core.errors import Problem
from datalab.core.service_client import ServiceClient, ServiceUnavailable

from . import dispatch
from .access import visible_job
from .jobs import JOB_TYPES, DatasetParams, JobType, Params, SleepParams, TrainModelParams
from .schemas import JobSubmit
from .settings import ComputeSettings

SUBMITTED = Counter("datalab_compute_jobs_submitted_total", "Jobs submitted", ["type"])


@dataclass
class Submissions:
    settings: ComputeSettings
    connection: redis.Redis  # RQ's, synchronous: used in threads
    dispatchers: dispatch.Dispatchers
    data: DataClient  # with the caller's token
    services: ServiceClient

    async def submit(self, body: JobSubmit, principal: Principal, request: Request) -> Job:
        spec = JOB_TYPES[body.type]
        params = self._validated_params(body, spec)
        queue_name = body.queue or spec.queue
        if not principal.is_admin and queue_name == "default" and spec.queue != "default":
            raise Problem(422, f"{spec.name} jobs run on the {spec.queue} queue; `default` is for short jobs.")
        timeout = job_timeout(self.settings, principal, spec, queue_name, body.timeout)
        if isinstance(params, SleepParams):
            if not principal.is_admin and params.seconds > self.settings.user_max_sleep:
                raise Problem(422, f"A sleep may last at most {self.settings.user_max_sleep:g} s.")
            if params.seconds >= timeout:
                raise Problem(422, f"A sleep must end within the job's timeout ({timeout} s).")
        if isinstance(params, DatasetParams):
            # The caller must see the dataset now; the worker reads it later as the platform.
            await self.data.dataset(params.dataset_id)
        if isinstance(params, TrainModelParams):
            await self._check_model(params, principal, request)
        for dep in body.depends_on:
            await visible_job(self.connection, dep, principal, request)

        submission = dispatch.Submission(
            job_type=body.type, params=params.model_dump(mode="json"), owner_id=principal.user_id,
            queue=body.queue, depends_on=tuple(body.depends_on), retries=body.retries, timeout=timeout,
        )
        job = await asyncio.to_thread(self._submit_within_quota, principal, queue_name, submission)
        SUBMITTED.labels(body.type).inc()
        return job

    def _validated_params(self, body: JobSubmit, spec: JobType) -> Params:
        """The params (with the dataset_id shorthand) as the job type's model: bounded in
        size, no NUL, no NaN or infinity, valid for the type; a 413 or 422 otherwise."""
        try:
            # allow_nan=False: Python's parser reads NaN and 1e400, a JSON response cannot hold them.
            size = len(json.dumps(body.params, separators=(",", ":"), allow_nan=False).encode())
        except RecursionError:
            raise Problem(422, "The job's params nest too deeply.") from None
        except ValueError:
            raise Problem(422, "The job's params may not hold NaN or infinite numbers.") from None
        limit = self.settings.max_params_bytes
        if size > limit:
            raise Problem(413, f"The job's params may take at most {limit} bytes as JSON.")
        if _has_nul(body.params) or _has_nul(body.dataset_id):
            raise Problem(422, "Strings in a job's params may not contain NUL characters.")
        params = dict(body.params)
        if body.dataset_id is not None:
            params.setdefault("dataset_id", body.dataset_id)
        try:
            return spec.params.model_validate(params)
        except ValidationError as exc:
            errors = [{"loc": list(e["loc"]), "msg": e["msg"]} for e in exc.errors()]
            raise Problem(422, f"Invalid params for job type {body.type!r}.", errors=errors) from None

    async def _check_model(self, p: TrainModelParams, principal: Principal, request: Request) -> None:
        """A train_model job writes models/{model_id}.joblib and reports to ai as the platform,
        so the model must be one the ai service created for this caller, still awaiting its
        first job, and the job must train what the model records. Only ai submits such jobs."""
        try:
            resp = await self.services.request("ai", "GET", routes.model(p.model_id), token=bearer_token(request))
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
        recorded = (row.get("dataset_id"), row.get("target"), row.get("features"), row.get("kind"),
                    row.get("params") or {})
        if recorded != (p.dataset_id, p.target, p.features, p.kind, p.params):
            raise Problem(422, f"The job must train model {p.model_id} as the ai service recorded it.")
        # One job per model: the first submission claims it (ai sets job_id only afterwards).
        claimed = await asyncio.to_thread(
            self.connection.set, f"dl:compute:train-claim:{p.model_id}", principal.user_id,
            nx=True, ex=dispatch.RESULT_TTL,
        )
        if not claimed:
            raise Problem(409, f"Model {p.model_id} already has a training job.")

    def _submit_within_quota(self, principal: Principal, queue_name: str, submission: dispatch.Submission) -> Job:
        """Submit unless the user already has max_active_jobs queued or running. Admins are not
        counted. One submission per user at a time, so two at once cannot both slip past it."""
        dispatcher = self.dispatchers.for_queue(queue_name)
        if principal.is_admin:
            return dispatcher.submit(self.connection, submission)
        limit = self.settings.max_active_jobs
        with self.connection.lock(f"dl:compute:submit-lock:{principal.user_id}", timeout=30, blocking_timeout=10):
            if dispatch.count_active(self.connection, principal.user_id) >= limit:
                raise Problem(
                    429, f"You have {limit} jobs queued or running, the most allowed; "
                    "submit more when some have ended.",
                    headers={"Retry-After": str(self.settings.active_retry_after)},
                )
            return dispatcher.submit(self.connection, submission)


def job_timeout(settings: ComputeSettings, principal: Principal, spec: JobType, queue_name: str,
                asked: int | None) -> int:
    """The job's timeout. A user's is at most the queue's limit for users (a type's longer
    default is cut to it; asking for more is a 422); an admin's at most max_job_timeout."""
    limit = settings.max_job_timeout
    if not principal.is_admin:
        limit = min(limit, settings.user_max_timeout.get(queue_name, limit))
    if asked is not None and asked > limit:
        raise Problem(422, f"timeout may not exceed {limit} s on the {queue_name} queue.")
    return min(asked or spec.timeout, limit)


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
