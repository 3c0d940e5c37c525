"""Typed dependencies of the ai service's handlers: its settings, the objects its start-up
puts on `app.state` (lifecycle.start), and per-request clients carrying the caller's token."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from datalab.contracts.data_client import DataClient
from datalab.core.auth import bearer_token
from datalab.core.deps import ServicesDep, settings_dependency

from .records import ModelRecords
from .serving import ModelCache
from .settings import AiSettings
from .trainer import ComputeJobs, Trainer


def get_model_cache(request: Request) -> ModelCache:
    return request.app.state.model_cache


def get_model_records(request: Request) -> ModelRecords:
    return request.app.state.model_records


def get_trainer(request: Request) -> Trainer:
    return request.app.state.trainer


def get_data_client(request: Request, services: ServicesDep) -> DataClient:
    return DataClient(services, bearer_token(request))


def get_compute_jobs(request: Request, services: ServicesDep) -> ComputeJobs:
    return ComputeJobs(services, bearer_token(request))


SettingsDep = Annotated[AiSettings, Depends(settings_dependency(AiSettings))]
ModelCacheDep = Annotated[ModelCache, Depends(get_model_cache)]
ModelRecordsDep = Annotated[ModelRecords, Depends(get_model_records)]
TrainerDep = Annotated[Trainer, Depends(get_trainer)]
DataClientDep = Annotated[DataClient, Depends(get_data_client)]
ComputeJobsDep = Annotated[ComputeJobs, Depends(get_compute_jobs)]
