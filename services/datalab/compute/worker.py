"""`datalab worker`: an RQ worker for the compute queues.

RQ's forking `Worker`: each job runs in a forked work horse while the main process
heartbeats, so a crashed or killed job is noticed. (The main process never runs polars or
scikit-learn, so no thread pool is forked mid-flight.) Heartbeats are frequent and the grace
after a missed one short, so a SIGKILLed worker's job is seen abandoned within seconds,
not the minute-plus RQ allows by default; the reaper (the worker's maintenance and the
compute API's) then retries it or marks it failed. Job durations are observed here, in the
main process, since a work horse's metrics die with it.
"""

from __future__ import annotations

import logging

import redis
from prometheus_client import Histogram, start_http_server
from rq import Worker
from rq.job import JobStatus
from rq.serializers import JSONSerializer

from datalab.core.cache import create_sync_redis
from datalab.core.logs import configure_logging
from datalab.core.secret_files import SecretStore
from datalab.core.settings import BaseServiceSettings

from .dispatch import PlatformJob, queue
from .settings import WorkerSettings
from .tasks import WorkerContext

log = logging.getLogger("datalab.worker")
JOB_DURATION = Histogram(
    "datalab_job_duration_seconds", "Job run time in the worker", ["type", "outcome"],
    buckets=(0.01, 0.05, 0.1, 0.5, 1, 5, 15, 60, 300, 1800),
)


class DataLabWorker(Worker):
    heartbeat_grace = 10

    def monitor_work_horse(self, job, queue) -> None:
        super().monitor_work_horse(job, queue)
        try:
            job.refresh()
            status = job.get_status(refresh=False)
            if job.started_at and job.ended_at:
                outcome = "finished" if status == JobStatus.FINISHED else "failed"
                JOB_DURATION.labels(job.meta.get("type", "unknown"), outcome).observe(
                    (job.ended_at - job.started_at).total_seconds()
                )
        except Exception:  # metrics must never break the worker loop
            log.debug("could not observe the job duration", exc_info=True)

    def get_heartbeat_ttl(self, job) -> int:
        # RQ adds a fixed 60 s; a shorter grace ends "started" limbo quickly after a crash.
        if job.timeout and job.timeout > 0:
            remaining = job.timeout  # upper bound; refreshed on every heartbeat
            return int(min(remaining, self.job_monitoring_interval)) + self.heartbeat_grace
        return self.job_monitoring_interval + self.heartbeat_grace


def connect(settings: BaseServiceSettings) -> redis.Redis:
    return create_sync_redis(settings, SecretStore(settings.secrets_dir))


def run_worker(settings: WorkerSettings | None = None) -> None:
    settings = settings or WorkerSettings()
    configure_logging("worker", settings.log_level)
    connection = connect(settings)
    context = WorkerContext(settings)
    _ = context.device  # DATALAB_DEVICE=cuda without a GPU fails here, at start, not mid-job
    WorkerContext.install(context)
    if settings.worker_metrics_port:
        start_http_server(settings.worker_metrics_port, addr=settings.host)
    DataLabWorker.heartbeat_grace = settings.heartbeat_grace
    worker = DataLabWorker(
        [queue(connection, name) for name in settings.worker_queues],
        connection=connection,
        serializer=JSONSerializer,
        job_class=PlatformJob,  # runs the platform's job types, nothing else a job names
        job_monitoring_interval=settings.job_monitoring_interval,
        maintenance_interval=settings.maintenance_interval,
        # An idle worker blocks in BLPOP for worker_ttl - 15 s between maintenance rounds;
        # keep that short so a dead worker's scheduler role is taken over promptly.
        worker_ttl=settings.maintenance_interval + 15,
    )
    log.info("worker starting", extra={"queues": settings.worker_queues, "worker": worker.name})
    worker.work(
        with_scheduler=not settings.worker_burst,
        burst=settings.worker_burst,
        max_jobs=settings.worker_max_jobs,
        logging_level=settings.log_level,
    )
