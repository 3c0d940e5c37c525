"""Errors as RFC 9457 problem details (`application/problem+json`).

Raise `Problem` from domain code; the handlers below turn it, FastAPI's validation errors
and Starlette's HTTP errors into problem documents. Unexpected exceptions become a 500 that
names the request id and nothing else (no traceback or value ever reaches a client): that
catch-all is in middleware.RequestContextMiddleware, inside the request id's scope.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from http import HTTPStatus
from typing import Any

import redis.exceptions
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from .logs import request_id_var

PROBLEM_JSON = "application/problem+json"
log = logging.getLogger("datalab.errors")


class Problem(Exception):
    def __init__(
        self,
        status: int,
        detail: str,
        *,
        title: str | None = None,
        type_: str = "about:blank",
        headers: dict[str, str] | None = None,
        **extra: Any,
    ):
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.title = title or HTTPStatus(status).phrase
        self.type = type_
        self.headers = headers or {}
        self.extra = extra


def problem_response(
    status: int,
    detail: str,
    *,
    title: str | None = None,
    type_: str = "about:blank",
    headers: Mapping[str, str] | None = None,
    **extra: Any,
) -> JSONResponse:
    body: dict[str, Any] = {
        "type": type_,
        "title": title or HTTPStatus(status).phrase,
        "status": status,
        "detail": detail,
    }
    if (rid := request_id_var.get()) is not None:
        body["request_id"] = rid
    body.update(extra)
    return JSONResponse(body, status_code=status, headers=headers, media_type=PROBLEM_JSON)


async def _on_problem(_: Request, exc: Problem) -> JSONResponse:
    return problem_response(
        exc.status, exc.detail, title=exc.title, type_=exc.type, headers=exc.headers, **exc.extra
    )


async def _on_http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    detail = exc.detail if isinstance(exc.detail, str) else HTTPStatus(exc.status_code).phrase
    headers = dict(getattr(exc, "headers", None) or {})
    if exc.status_code == 405:
        headers["Allow"] = ", ".join(_allowed_methods(request))
    return problem_response(exc.status_code, detail, headers=headers)


METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


def _allowed_methods(request: Request) -> list[str]:
    """Every method some route takes at this path. Starlette's 405 names only the methods
    of the first route whose path matches, and FastAPI makes a route per method."""
    routes = request.app.router.routes
    return [m for m in METHODS
            if any(r.matches({**request.scope, "method": m})[0] == Match.FULL for r in routes)]


async def _on_validation(_: Request, exc: RequestValidationError) -> JSONResponse:
    errors = [
        {"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")}
        for e in exc.errors()
    ]
    return problem_response(422, "The request is not valid.", errors=errors)


async def _on_redis(_: Request, exc: redis.exceptions.RedisError) -> JSONResponse:
    # Redis down, full (maxmemory, noeviction) or refusing (ACL): the request can be retried,
    # so a 503, not a 500. A NOPERM is a missing rule in redis_users.py: log it loudly.
    level = logging.ERROR if isinstance(exc, redis.exceptions.NoPermissionError) else logging.WARNING
    log.log(level, "redis error", extra={"error": f"{type(exc).__name__}: {exc}"})
    return problem_response(503, "A backing store is not answering or is full; try again shortly.",
                            headers={"Retry-After": "5"})


def install_error_handlers(app: FastAPI) -> None:
    # app.exception_handler(cls) takes a handler typed for cls (add_exception_handler wants
    # one typed for any Exception).
    app.exception_handler(Problem)(_on_problem)
    app.exception_handler(StarletteHTTPException)(_on_http)
    app.exception_handler(RequestValidationError)(_on_validation)
    app.exception_handler(redis.exceptions.RedisError)(_on_redis)
