"""The viz API: POST /charts draws a chart spec as PNG or SVG."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from datalab.contracts import routes
from datalab.contracts.data_client import DataServiceError
from datalab.core.audit import audit
from datalab.core.auth import CurrentUser
from datalab.core.errors import problem_response
from datalab.core.openapi import problem, problems

from . import render
from .charts import CACHE, dataset_version
from .deps import ChartsDep, DataDep
from .negotiation import MEDIA_TYPES, etag_matches, negotiate
from .spec import ChartError, ChartSpec, cache_key, check_columns

router = APIRouter(prefix=routes.VIZ, tags=["viz"])


@router.post(
    "/charts",
    response_class=Response,
    responses={
        200: {"content": {"image/png": {}, "image/svg+xml": {}}, "description": "The chart."},
        304: {"description": "If-None-Match matched: the client's copy is current."},
        406: problem(406, "Accept allows neither image/png nor image/svg+xml."),
        **problems(404, 502),
    },
)
async def chart(request: Request, spec: ChartSpec, user: CurrentUser, data: DataDep, charts: ChartsDep) -> Response:
    fmt = negotiate(request.headers.get("accept"))
    # Always asked, also before a 304: data decides that the caller may see the dataset.
    try:
        dataset = await data.dataset(str(spec.dataset_id))
    except DataServiceError as exc:
        if exc.status in (403, 404):  # data's 404 covers others' datasets: they "do not exist"
            audit("chart.render", "denied", actor=user.username, object=f"dataset:{spec.dataset_id}",
                  request=request, reason=f"data answered {exc.status}")
        raise
    types = dataset.kinds()
    check_columns(spec, types)
    key = cache_key(spec, fmt, dataset_version(dataset), render.RENDERER)
    headers = {
        "ETag": f'"{key}"',
        "Cache-Control": "private, max-age=0, must-revalidate",
        "Vary": "Accept",
    }
    if etag_matches(request.headers.get("if-none-match"), headers["ETag"]):
        CACHE.labels("not_modified").inc()
        return Response(status_code=304, headers=headers)
    image, outcome = await charts.image(data, spec, types, fmt, key)
    CACHE.labels(outcome).inc()
    return Response(image, media_type=MEDIA_TYPES[fmt], headers={**headers, "X-Cache": outcome})


async def chart_error_response(_: Request, exc: Exception) -> JSONResponse:
    """A ChartError (from the column check or a render worker) as a 422 naming the column."""
    if not isinstance(exc, ChartError):  # registered for ChartError only
        raise exc
    extra: dict[str, Any] = {"column": exc.column} if exc.column else {}
    return problem_response(422, exc.detail, type_="https://datalab.dev/problems/invalid-chart", **extra)
