"""The ai service's API: train models on datasets, serve predictions (/api/v1/ai)."""

from __future__ import annotations

import logging
from typing import Annotated

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import JSONResponse

from datalab.contracts import routes as contract_routes
from datalab.core.audit import audit
from datalab.core.auth import AdminUser, CurrentUser, Principal
from datalab.core.deps import RedisDep
from datalab.core.errors import Problem
from datalab.core.openapi import problems

from . import deletion_feed
from .deps import ComputeJobsDep, DataClientDep, ModelCacheDep, ModelRecordsDep, SettingsDep, TrainerDep
from .problems import INVALID_MODEL, no_model
from .records import ModelRecord, ModelRecords
from .schemas import ModelOut, ModelPage, PredictRequest, TrainRequest, TrainResult

log = logging.getLogger("datalab.ai")

MAX_OFFSET = 1_000_000_000  # PostgreSQL takes a bigint; past the rows any page is empty anyway

router = APIRouter(prefix=contract_routes.AI, tags=["ai"])


def _denied(request: Request, principal: Principal, action: str, model_id: str) -> None:
    audit(action, "denied", actor=principal.username, object=f"model:{model_id}", request=request,
          reason="not the owner")


async def _owned(request: Request, records: ModelRecords, model_id: str, principal: Principal,
                 action: str) -> ModelRecord:
    """The model if the caller may see it; 404 otherwise (others' models do not exist, but
    the attempt on one goes to the audit trail as `action` denied)."""
    row = await records.get(model_id)
    if row is not None and row.owner_id != principal.user_id and not principal.is_admin:
        _denied(request, principal, action, model_id)
        row = None
    if row is None:
        raise no_model(model_id)
    return row


@router.post("/models", status_code=201, response_model=ModelOut,
             responses={202: {"model": ModelOut}, **problems(404, 502)})
async def create_model(response: Response, body: TrainRequest, principal: CurrentUser, trainer: TrainerDep,
                       data: DataClientDep, compute: ComputeJobsDep) -> ModelOut:
    row, queued = await trainer.create(body, principal.user_id, data, compute)
    if queued:
        response.status_code = 202
    return ModelOut.model_validate(row)


@router.put("/models/{model_id}/result", response_model=ModelOut, responses=problems(409))
async def report_result(model_id: str, body: TrainResult, _: AdminUser, trainer: TrainerDep) -> ModelOut:
    return ModelOut.model_validate(await trainer.record_result(model_id, body))


@router.get("/models", response_model=ModelPage)
async def list_models(
    principal: CurrentUser,
    records: ModelRecordsDep,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
) -> ModelPage:
    rows, total = await records.page(None if principal.is_admin else principal.user_id, limit, offset)
    return ModelPage(items=[ModelOut.model_validate(r) for r in rows], total=total, limit=limit, offset=offset)


@router.get("/models/{model_id}", response_model=ModelOut)
async def get_model(request: Request, model_id: str, principal: CurrentUser, records: ModelRecordsDep) -> ModelOut:
    return ModelOut.model_validate(await _owned(request, records, model_id, principal, "model.read"))


@router.delete("/models/{model_id}", status_code=204)
async def delete_model(request: Request, model_id: str, principal: CurrentUser, records: ModelRecordsDep,
                       trainer: TrainerDep, compute: ComputeJobsDep, redis: RedisDep) -> Response:
    row = await _owned(request, records, model_id, principal, "model.delete")
    await trainer.discard(row, compute)
    await deletion_feed.announce(redis, model_id)  # every other ai instance drops it from its cache
    log.info("model deleted", extra={"model_id": model_id})
    audit("model.delete", "success", actor=principal.username, object=f"model:{model_id}",
          request=request, owner_id=row.owner_id)
    return Response(status_code=204)


@router.post("/models/{model_id}/predict", responses=problems(409))
async def predict(request: Request, model_id: str, body: PredictRequest, principal: CurrentUser,
                  settings: SettingsDep, cache: ModelCacheDep, records: ModelRecordsDep,
                  trainer: TrainerDep) -> JSONResponse:
    if len(body.rows) > settings.predict_max_rows:
        raise Problem(422, f"At most {settings.predict_max_rows} rows per request.", type_=INVALID_MODEL)
    # A cached model is ready and its owner known: no database round trip (the hot path).
    served = cache.peek(model_id)
    if served is None:
        row = await _owned(request, records, model_id, principal, "model.predict")
        if row.status != "ready":
            raise Problem(409, f"Model {model_id} is {row.status}, not ready.", model_status=row.status)
        served = await cache.get(model_id, trainer.artifact(model_id), row.owner_id)
    elif served.owner_id != principal.user_id and not principal.is_admin:
        _denied(request, principal, "model.predict", model_id)
        raise no_model(model_id)
    return JSONResponse(await served.predict(model_id, body.rows))
