"""A user's own API keys: create (shown once), list, revoke."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from datalab.contracts.routes import GATEWAY
from datalab.core.audit import audit
from datalab.core.auth import CurrentUser
from datalab.core.deps import SessionsDep
from datalab.core.errors import Problem

from .. import accounts
from ..deps import KeyCacheDep
from ..schemas import ApiKeyCreate, ApiKeyCreated, ApiKeyOut

router = APIRouter(prefix=GATEWAY, tags=["auth"])


@router.post("/api-keys", response_model=ApiKeyCreated, status_code=201)
async def create_api_key(request: Request, body: ApiKeyCreate, principal: CurrentUser,
                         sessions: SessionsDep) -> ApiKeyCreated:
    if principal.via != "jwt":
        audit("api_key.create", "denied", actor=principal.username, request=request, reason="via api key")
        raise Problem(403, "API keys are created by a logged-in user, not by another API key.")
    row, key = await accounts.create_api_key(sessions, principal.user_id, body.name)
    audit("api_key.create", "success", actor=principal.username, object=f"api_key:{row.id}", request=request,
          label=body.name)
    return ApiKeyCreated(id=row.id, name=row.name, prefix=row.prefix, created_at=row.created_at, key=key)


@router.get("/api-keys", response_model=list[ApiKeyOut])
async def list_api_keys(principal: CurrentUser, sessions: SessionsDep) -> list[ApiKeyOut]:
    rows = await accounts.list_api_keys(sessions, principal.user_id)
    return [ApiKeyOut.model_validate(r, from_attributes=True) for r in rows]


@router.delete("/api-keys/{key_id}", status_code=204)
async def revoke_api_key(request: Request, key_id: str, principal: CurrentUser, sessions: SessionsDep,
                         cache: KeyCacheDep) -> Response:
    row = await accounts.revoke_api_key(sessions, cache, key_id, principal.user_id)
    if row is None:
        audit("api_key.revoke", "failure", actor=principal.username, object=f"api_key:{key_id[:64]}",
              request=request, reason="not found")
        raise Problem(404, "No such API key.")
    audit("api_key.revoke", "success", actor=principal.username, object=f"api_key:{row.id}", request=request)
    return Response(status_code=204)
