"""Typed dependencies of the ai service's handlers: its settings, the objects its start-up
puts on `app.state` (lifecycle.start), and per-request clients carrying the caller's token."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from datalab.contracts.data_client import DataClient
from datalab.core.auth import bearer_token
from datalab.core.deps import ServicesDep, from_state, settings_dependency

from .records import ModelRecords
from .serving import ModelCache
from .settings import AiSettings
from .trainer import ComputeJobs, Trainer


def get_data_client(request: Request, services: ServicesDep) -> DataClient:
    return DataClient(services, bearer_token(request))


def get_compute_jobs(request: Request, services: ServicesDep) -> ComputeJobs:
    return ComputeJobs(services, bearer_token(request))


SettingsDep = Annotated[AiSettings, Depends(settings_dependency(AiSettings))]
ModelCacheDep = Annotated[ModelCache, Depends(from_state("model_cache", ModelCache))]
ModelRecordsDep = Annotated[ModelRecords, Depends(from_state("model_records", ModelRecords))]
TrainerDep = Annotated[Trainer, Depends(from_state("trainer", Trainer))]
DataClientDep = Annotated[DataClient, Depends(get_data_client)]
ComputeJobsDep = Annotated[ComputeJobs, Depends(get_compute_jobs)]
