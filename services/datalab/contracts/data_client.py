"""The one client for the data service: typed answers, one mapping of its failures.

Every caller (ai, compute's API and workers, viz) goes through this, with the caller's
token (or the platform's, for workers). Failures are `DataServiceError`, a Problem: an API
handler lets it answer; a worker turns it into a failed job with the same words.
"""

from __future__ import annotations

import logging
from collections.abc import Collection
from typing import Any

from datalab.core.errors import Problem
from datalab.core.service_client import ServiceClient, ServiceResponse, ServiceUnavailable

from . import routes
from .datasets import DatasetOut

log = logging.getLogger("datalab.contracts.data")
PASSED_ON = (401, 403, 404, 422)  # the data service's refusals: the caller's, said as data said them


class DataServiceError(Problem):
    """`upstream_status`: what the data service answered; None when it did not answer."""

    def __init__(self, status: int, detail: str, *, upstream_status: int | None = None, **kwargs: Any):
        super().__init__(status, detail, **kwargs)
        self.upstream_status = upstream_status


class DataClient:
    """`passed_on`: the data service's refusals answered as it said them; any other answer
    but 200 and 404 is a 502 (`passed_on=()`: every one of them is, as compute's API has it)."""

    def __init__(self, services: ServiceClient, token: str | None, *, passed_on: Collection[int] = PASSED_ON):
        self.services = services
        self.token = token
        self.passed_on = passed_on

    async def _call(self, method: str, path: str, *, dataset_id: str, json: Any = None) -> ServiceResponse:
        try:
            resp = await self.services.request("data", method, path, token=self.token, json=json)
        except ServiceUnavailable as exc:
            log.warning("service unavailable", extra={"service": "data", "error": str(exc)})
            raise DataServiceError(503, "The data service is not answering; try again shortly.",
                                   headers={"Retry-After": "5"}) from None
        if resp.status == 200:
            return resp
        if resp.status == 404:
            raise DataServiceError(404, f"No dataset {dataset_id!r}.", upstream_status=404)
        if resp.status in self.passed_on:
            try:
                detail = resp.json().get("detail")
            except (ValueError, AttributeError):
                detail = None
            raise DataServiceError(resp.status, detail or "The data service refused the request.",
                                   upstream_status=resp.status)
        raise DataServiceError(502, f"The data service answered {resp.status} for dataset {dataset_id!r}.",
                               upstream_status=resp.status)

    async def dataset(self, dataset_id: str) -> DatasetOut:
        resp = await self._call("GET", routes.dataset(dataset_id), dataset_id=dataset_id)
        return DatasetOut.model_validate(resp.json())

    async def content(self, dataset_id: str) -> bytes:
        """The dataset as Parquet bytes."""
        return (await self._call("GET", routes.dataset_content(dataset_id), dataset_id=dataset_id)).body

    async def query(self, dataset_id: str, query: dict[str, Any]) -> Any:
        return (await self._call("POST", routes.dataset_query(dataset_id), dataset_id=dataset_id, json=query)).json()

    async def query_body(self, dataset_id: str, query: dict[str, Any]) -> bytes:
        """The query's answer as data sent it (JSON bytes), for a caller that parses it
        elsewhere: viz parses it in its render workers, off the event loop."""
        return (await self._call("POST", routes.dataset_query(dataset_id), dataset_id=dataset_id, json=query)).body
