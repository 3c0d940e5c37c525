"""Every service's OpenAPI documents the errors it really answers: problem+json documents
(`ProblemDetails`) for 4xx and 5xx, and the bearer token its routes need.

FastAPI documents only a 422 with its own `HTTPValidationError` shape, which the error
handlers never send. `install_openapi` replaces that and adds, per operation, the statuses
any route of ours can answer (derived from what the route takes), so schemathesis'
conformance checks hold the services to what they say. A route documents its own further
statuses with `responses=problems(404, 409)`.
"""

from __future__ import annotations

import json
from http import HTTPStatus
from typing import Any

from fastapi import APIRouter, FastAPI
from fastapi.dependencies.models import Dependant
from fastapi.openapi.utils import get_openapi
from fastapi.routing import APIRoute

from .auth import admin_principal, current_principal
from .errors import PROBLEM_JSON

PROBLEM_REF = {"$ref": "#/components/schemas/ProblemDetails"}

PROBLEM_SCHEMA: dict[str, Any] = {
    "title": "ProblemDetails",
    "description": "An error, as RFC 9457 problem details. Further members (errors, column, "
    "model_status, ...) say more about some errors.",
    "type": "object",
    "required": ["type", "title", "status", "detail"],
    "properties": {
        "type": {"type": "string", "description": "A URI naming the kind of problem; about:blank if none."},
        "title": {"type": "string"},
        "status": {"type": "integer", "minimum": 400, "maximum": 599},
        "detail": {"type": "string"},
        "request_id": {"type": "string", "description": "Quote it when reporting the error."},
        "errors": {
            "type": "array",
            "description": "What is wrong with the request, item by item (422).",
            "items": {"type": "object"},
        },
    },
    "additionalProperties": True,
}

# Why each status can come back, when the route itself does not say more.
REASONS = {
    400: "The body cannot be parsed.",
    401: "No valid bearer token (or API key).",
    403: "The caller may not do this.",
    404: "No such resource (or it belongs to someone else).",
    406: "The Accept header allows no format this operation answers in.",
    408: "The request body stopped arriving.",
    409: "The resource is not in a state that allows this.",
    413: "The request body is larger than the service accepts.",
    415: "The request body is not of a media type this operation takes.",
    422: "The request is not valid.",
    429: "Rate limit exceeded; retry after Retry-After seconds.",
    500: "Internal error; quote the request id when reporting it.",
    502: "Another service answered unexpectedly.",
    503: "A dependency is not answering; try again shortly.",
}


def problem(status: int, description: str | None = None) -> dict[str, Any]:
    return {
        "description": description or REASONS.get(status) or HTTPStatus(status).phrase,
        "content": {PROBLEM_JSON: {"schema": PROBLEM_REF}},
    }


def problems(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """`responses=` for a route that can answer these statuses too (409, 502, ...)."""
    return {status: problem(status) for status in statuses}


def _calls(dependant: Dependant) -> set[Any]:
    found = {dependant.call}
    for sub in dependant.dependencies:
        found |= _calls(sub)
    return found


def _statuses(route: APIRoute) -> set[int]:
    """The problem statuses this route can answer, from what it takes."""
    # 401: Traefik's forwardAuth refuses a missing or bad token before any protected route,
    # and the public ones (login, refresh) refuse bad credentials; 429: the edge's rate
    # limits; 500: a bug; 503: a dependency down.
    statuses = {401, 429, 500, 503}
    dependant = route.dependant
    if _calls(dependant) & {current_principal, admin_principal}:
        statuses.add(403)
    if dependant.path_params:
        statuses |= {404, 422}
    if dependant.query_params or dependant.header_params or dependant.cookie_params:
        statuses.add(422)
    if dependant.body_params:
        statuses |= {400, 408, 413, 422}
    return statuses


def _secured(route: APIRoute) -> bool:
    return bool(_calls(route.dependant) & {current_principal, admin_principal})


def build_openapi(app: FastAPI, routers: list[APIRouter]) -> dict[str, Any]:
    """The app's OpenAPI with the problems of the routes of `routers` (the service's own;
    the factory's /health, /ready and /metrics are not in the schema)."""
    schema = get_openapi(title=app.title, version=app.version, routes=app.routes,
                         description=app.description)
    components = schema.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    schemas["ProblemDetails"] = PROBLEM_SCHEMA
    components.setdefault("securitySchemes", {})["bearerAuth"] = {
        "type": "http", "scheme": "bearer", "bearerFormat": "JWT",
        "description": "An access token from POST /api/v1/auth/token, or an API key.",
    }
    for route in (r for router in routers for r in router.routes):
        if not isinstance(route, APIRoute) or not route.include_in_schema:
            continue
        for method in route.methods or ():
            operation = schema.get("paths", {}).get(route.path_format, {}).get(method.lower())
            if operation is None:
                continue
            responses = operation.setdefault("responses", {})
            for status in _statuses(route):
                responses.setdefault(str(status), problem(status))
            for code, response in responses.items():
                if code.isdigit() and int(code) >= 400:
                    # FastAPI's 422 (HTTPValidationError) is not what the handler sends, and a
                    # route's own error statuses come without a body schema.
                    response["content"] = {PROBLEM_JSON: {"schema": PROBLEM_REF}}
            if _secured(route):
                operation["security"] = [{"bearerAuth": []}]
    for name in ("HTTPValidationError", "ValidationError"):  # FastAPI's, unreferenced now
        if f'"#/components/schemas/{name}"' not in json.dumps(schema):
            schemas.pop(name, None)
    return schema


def install_openapi(app: FastAPI, routers: list[APIRouter]) -> None:
    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = build_openapi(app, routers)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
