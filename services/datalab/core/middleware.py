"""Pure-ASGI middlewares every service runs (not BaseHTTPMiddleware, so streamed bodies
such as uploads pass through untouched):

- `RequestContextMiddleware`, the outer one: request id, access log, Prometheus metrics, and
  the catch-all for unexpected exceptions. The catch-all lives here, inside the request id's
  scope, rather than in Starlette's ServerErrorMiddleware: that one runs outside every user
  middleware (its 500 had no X-Request-ID and logged `request_id: null`) and re-raises after
  answering, which makes uvicorn close the keep-alive connection, so the next request Traefik
  sent on it got a 502.
- `BodyLimitMiddleware`: a request body larger than the service allows is a 413 (at once
  when Content-Length says so, else when the streamed body passes the limit), and a body
  that stops arriving is a 408, so a client can hold a worker only so long.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid

from prometheus_client import Counter, Histogram
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .errors import problem_response
from .logs import request_id_var

REQUESTS = Counter(
    "datalab_http_requests_total", "HTTP requests served", ["service", "method", "route", "status"]
)
LATENCY = Histogram(
    "datalab_http_request_duration_seconds",
    "HTTP request latency",
    ["service", "method", "route"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
access_log = logging.getLogger("datalab.access")
error_log = logging.getLogger("datalab.errors")
QUIET_PATHS = {"/health", "/ready", "/metrics"}


def _route_template(scope: Scope) -> str:
    """The route's path template (bounded label cardinality), never the raw path: every odd
    path a client sends would be a new time series. The router leaves the route it
    dispatched to in the scope (FastAPI: the APIRoute, also inside an included router)."""
    path = getattr(scope.get("route"), "path", None)
    return path if isinstance(path, str) else "unmatched"


class RequestContextMiddleware:
    def __init__(self, app: ASGIApp, service: str):
        self.app = app
        self.service = service

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or ())
        incoming = headers.get(b"x-request-id", b"").decode("latin-1")
        # Accept a caller's id only if it is sane; otherwise make one.
        rid = incoming if 0 < len(incoming) <= 128 and incoming.isprintable() else uuid.uuid4().hex
        token = request_id_var.set(rid)
        status = 500
        started = finished = False
        start = time.perf_counter()

        async def send_with_id(message: Message) -> None:
            nonlocal status, started, finished
            if message["type"] == "http.response.start":
                status, started = message["status"], True
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (b"x-request-id", rid.encode())]
            elif message["type"] == "http.response.body" and not message.get("more_body", False):
                finished = True
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception as exc:
            error_log.exception("unhandled error", exc_info=exc)
            if started and not finished:
                raise  # half a response is out: only closing the connection tells the client
            if not started:  # a problem document like every other error, on a usable connection
                status = 500
                response = problem_response(500, "Internal error; quote the request id when reporting it.")
                await response(scope, receive, send_with_id)
        finally:
            elapsed = time.perf_counter() - start
            route = _route_template(scope)
            method = scope["method"]
            REQUESTS.labels(self.service, method, route, str(status)).inc()
            LATENCY.labels(self.service, method, route).observe(elapsed)
            if scope["path"] not in QUIET_PATHS:
                access_log.info(
                    "request",
                    extra={
                        "method": method,
                        "path": scope["path"],
                        "status": status,
                        "duration_ms": round(elapsed * 1000, 2),
                    },
                )
            request_id_var.reset(token)


class BodyTooLarge(HTTPException):
    """Raised from `receive` when the body passes the limit. An HTTPException, so FastAPI's
    body parsing passes it on (it turns other errors into a 400) and it becomes a 413
    problem. No `Connection: close`: closing while the peer still sends makes the kernel
    reset the connection, and Traefik then loses the answer (a 502); uvicorn discards the
    rest of the body instead, no worker held."""

    def __init__(self, limit: int):
        super().__init__(413, f"The request body exceeds the limit of {limit} bytes.")


class BodyTimeout(HTTPException):
    """A body that stopped arriving: the connection closes (nothing is being sent on it)."""

    def __init__(self, seconds: float):
        super().__init__(408, f"The request body stopped arriving for {seconds:g} s.",
                         headers={"Connection": "close"})


# A multipart body carries boundaries and part headers around the file; the upload's own
# limit (the file's bytes, counted by the service) is the exact one.
MULTIPART_OVERHEAD = 64 * 1024


class BodyLimitMiddleware:
    """`max_body` bytes for any body; multipart/form-data bodies get `max_upload` (plus part
    overhead) when the service takes uploads (its own code then counts the file exactly).
    `idle_timeout`: seconds the next chunk of a body may take to arrive."""

    def __init__(self, app: ASGIApp, max_body: int, max_upload: int | None, idle_timeout: float):
        self.app = app
        self.max_body = max_body
        self.max_upload = max_upload
        self.idle_timeout = idle_timeout

    def _limit(self, headers: dict[bytes, bytes]) -> int:
        content_type = headers.get(b"content-type", b"").split(b";")[0].strip().lower()
        if self.max_upload is not None and content_type == b"multipart/form-data":
            return self.max_upload + MULTIPART_OVERHEAD
        return self.max_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or ())
        limit = self._limit(headers)
        declared = headers.get(b"content-length", b"")
        if declared.isdigit() and int(declared) > limit:
            response = problem_response(413, f"The request body exceeds the limit of {limit} bytes.")
            await response(scope, receive, send)  # before a byte of the body is read
            return
        received = 0
        body_done = False
        refused: HTTPException | None = None  # what limited_receive raised
        replaced = False

        async def limited_receive() -> Message:
            nonlocal received, body_done, refused
            if body_done:  # after the body only http.disconnect comes: no deadline
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), self.idle_timeout)
            except TimeoutError:
                refused = BodyTimeout(self.idle_timeout)
                raise refused from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    refused = BodyTooLarge(limit)
                    raise refused
                body_done = not message.get("more_body", False)
            return message

        async def checked_send(message: Message) -> None:
            # Code that reads the body itself may wrap our error in its own (a 400 "malformed
            # body"): the client still gets the 413 or 408 it caused.
            nonlocal replaced
            if replaced:
                return
            if message["type"] == "http.response.start" and refused is not None \
                    and message["status"] != refused.status_code:
                replaced = True
                await problem_response(refused.status_code, refused.detail, headers=refused.headers)(
                    scope, receive, send)
                return
            await send(message)

        await self.app(scope, limited_receive, checked_send)
