"""Typed dependencies of compute's handlers: its settings, RQ's synchronous Redis
connection and the dispatchers (both put on app.state at start-up: lifecycle.py), a
DataClient with the caller's token, and the Submissions built of them."""

from __future__ import annotations

from typing import Annotated

import redis
from fastapi import Depends, Request

from datalab.contracts.data_client import DataClient
from datalab.core.auth import bearer_token
from datalab.core.deps import ServicesDep, from_state, settings_dependency

from .dispatch import Dispatchers
from .settings import ComputeSettings
from .submission import Submissions


def get_data_client(request: Request, services: ServicesDep) -> DataClient:
    # Compute passes none of data's refusals on: any answer but 200 or 404 is a 502 here.
    return DataClient(services, bearer_token(request), passed_on=())


SettingsDep = Annotated[ComputeSettings, Depends(settings_dependency(ComputeSettings))]
RQConnectionDep = Annotated[redis.Redis, Depends(from_state("rq_redis", redis.Redis))]
DispatchersDep = Annotated[Dispatchers, Depends(from_state("dispatchers", Dispatchers))]
DataClientDep = Annotated[DataClient, Depends(get_data_client)]


def get_submissions(settings: SettingsDep, connection: RQConnectionDep, dispatchers: DispatchersDep,
                    data: DataClientDep, services: ServicesDep) -> Submissions:
    return Submissions(settings, connection, dispatchers, data, services)


SubmissionsDep = Annotated[Submissions, Depends(get_submissions)]
