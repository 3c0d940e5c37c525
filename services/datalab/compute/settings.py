"""Settings of the compute API and of `datalab worker` (DATALAB_* environment variables)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from datalab.core.settings import BaseServiceSettings


class ComputeSettings(BaseServiceSettings):
    port: int = 8003
    reap_interval: float = 5.0  # seconds between checks for jobs whose worker died
    max_job_timeout: int = 6 * 3600
    # Quotas for non-admin users. Params live in Redis as long as the job (7 days).
    max_params_bytes: int = 64 * 1024  # a job's params, serialized as JSON
    max_active_jobs: int = 10  # a user's queued + deferred + scheduled + started jobs
    active_retry_after: int = 15  # seconds, the Retry-After of a 429 at that limit
    # The longest a user's job may run, per queue: a worker busy with one user's job is
    # busy for everyone, and default-queue jobs are meant to be short.
    user_max_timeout: dict[str, int] = Field(default={"default": 600, "heavy": 3600})
    user_max_sleep: float = 60.0  # seconds: `sleep` is for tests, not for holding a worker
    # With a Nomad address, jobs bound for these queues run as dispatched `compute-batch`
    # allocations instead of on the long-running workers.
    nomad_addr: str | None = None
    nomad_dispatch_queues: list[str] = Field(default=["heavy"])


class WorkerSettings(BaseServiceSettings):
    worker_queues: list[str] = Field(default=["default", "heavy"])
    worker_max_jobs: int | None = None  # a dispatched compute-batch allocation runs exactly one
    worker_metrics_port: int | None = None  # Prometheus /metrics of this worker
    job_monitoring_interval: int = 5  # seconds between heartbeats while a job runs
    heartbeat_grace: int = 10  # seconds after a missed heartbeat before a job is abandoned
    maintenance_interval: int = 15  # seconds between registry clean-ups (the reaper)
    worker_burst: bool = False  # quit when the queues are empty (tests, batch runs)
    device: Literal["auto", "cpu", "cuda"] = "auto"  # for train_model, as in the ai service
