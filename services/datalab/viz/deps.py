"""Typed dependencies of the viz routes (core.deps for the shared ones)."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from datalab.contracts.data_client import DataClient
from datalab.core.auth import bearer_token
from datalab.core.deps import ServicesDep, from_state

from .charts import Charts


def get_data_client(request: Request, services: ServicesDep) -> DataClient:
    """The data service, asked with the caller's token: data decides what the caller may see."""
    return DataClient(services, bearer_token(request))


ChartsDep = Annotated[Charts, Depends(from_state("charts", Charts))]
DataDep = Annotated[DataClient, Depends(get_data_client)]
