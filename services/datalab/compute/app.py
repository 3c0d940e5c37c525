"""Compute service (port 8003): named jobs on RQ queues, run by `datalab worker`s.

Submission checks everything a worker would trip on later (submission.py) and answers 202
with the job's id; workers do the work (tasks.py, jobs.py). Status, progress, result or a
readable error, cancel, and a list with filters complete the API (routes.py).
"""

from __future__ import annotations

from fastapi import FastAPI

from datalab.core.app import ServiceSpec, create_app

from .lifecycle import rq_ready, shutdown, startup
from .routes import router
from .settings import ComputeSettings

SPEC = ServiceSpec(
    name="compute",
    routers=[router],
    on_startup=[startup],
    on_shutdown=[shutdown],
    ready_checks={"rq": rq_ready},
)


def build_app(settings: ComputeSettings | None = None) -> FastAPI:
    return create_app(SPEC, settings or ComputeSettings())
