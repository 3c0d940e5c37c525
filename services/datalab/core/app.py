"""The one app factory every service is built with.

A service module supplies a `ServiceSpec` (its routers, tables, start-up hooks); this
module adds what every service has: JSON logs with request ids, Prometheus `/metrics`,
`/health` and `/ready`, problem+json errors (documented in the OpenAPI), request-body
limits, the client's address from trusted proxies, JWT verification, the database engine,
Redis, the service client, and an orderly shutdown.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from fastapi import APIRouter, FastAPI
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import MetaData

from .auth import TokenVerifier
from .cache import create_redis
from .db import create_db_engine, create_schema, ping, session_factory
from .discovery import create_discovery
from .errors import install_error_handlers, problem_response
from .logs import configure_logging
from .middleware import BodyLimitMiddleware, RequestContextMiddleware
from .openapi import install_openapi
from .proxy import TrustedProxyMiddleware
from .secret_files import SecretStore
from .service_client import ServiceClient
from .settings import BaseServiceSettings

Hook = Callable[[FastAPI], Awaitable[None]]
log = logging.getLogger("datalab.app")


@dataclass
class ServiceSpec:
    name: str
    routers: list[APIRouter]
    metadata: MetaData | None = None  # tables this service owns (created at start-up)
    on_startup: list[Hook] = field(default_factory=list)
    on_shutdown: list[Hook] = field(default_factory=list)
    # Extra readiness checks: name -> coroutine raising when the dependency is not usable.
    ready_checks: dict[str, Callable[[FastAPI], Awaitable[None]]] = field(default_factory=dict)
    # Where its docs and OpenAPI live: under the prefix Traefik routes to it.
    api_prefix: str | None = None  # default /api/v1/{name}


def create_app(spec: ServiceSpec, settings: BaseServiceSettings) -> FastAPI:
    configure_logging(spec.name, settings.log_level)
    secrets = SecretStore(settings.secrets_dir)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        state = app.state
        state.engine = create_db_engine(settings, secrets) if spec.metadata is not None else None
        state.sessions = session_factory(state.engine) if state.engine is not None else None
        state.redis = create_redis(settings, secrets)
        state.services = ServiceClient(create_discovery(settings, secrets))
        try:
            if spec.metadata is not None:
                await create_schema(state.engine, spec.metadata)
            for hook in spec.on_startup:
                await hook(app)
            log.info("started", extra={"port": settings.port})
            yield
        finally:
            log.info("shutting down")
            for hook in reversed(spec.on_shutdown):
                await hook(app)
            await state.services.close()
            await state.redis.aclose()
            if state.engine is not None:
                await state.engine.dispose()

    prefix = spec.api_prefix or f"/api/v1/{spec.name}"
    app = FastAPI(
        title=f"DataLab {spec.name}",
        lifespan=lifespan,
        docs_url=f"{prefix}/docs",
        openapi_url=f"{prefix}/openapi.json",
        redoc_url=None,
    )
    app.state.settings = settings
    app.state.secrets = secrets
    app.state.token_verifier = TokenVerifier(secrets, settings.jwt_issuer, settings.jwt_audience)
    # Added inner first: the request context wraps everything, body limits included.
    app.add_middleware(
        BodyLimitMiddleware, max_body=settings.max_body_bytes, max_upload=settings.max_upload_bytes,
        idle_timeout=settings.body_idle_timeout_seconds,
    )
    app.add_middleware(RequestContextMiddleware, service=spec.name)
    # Outermost, so the request log, the rate limits and the audit trail see the real client.
    app.add_middleware(TrustedProxyMiddleware, trusted_proxies=settings.trusted_proxies,
                       extra_file=settings.trusted_proxies_file)
    install_error_handlers(app)
    install_openapi(app, spec.routers)

    @app.get("/health", include_in_schema=False)
    async def health() -> dict:
        return {"status": "ok", "service": spec.name}

    @app.get("/ready", include_in_schema=False)
    async def ready() -> Response:
        checks: dict[str, Callable[[FastAPI], Awaitable[None]]] = {
            "redis": lambda a: a.state.redis.ping(),
        }
        if spec.metadata is not None:
            checks["postgres"] = lambda a: ping(a.state.engine)
        checks.update(spec.ready_checks)
        failed: dict[str, str] = {}
        for name, check in checks.items():
            try:
                await asyncio.wait_for(check(app), timeout=3)
            except Exception as exc:  # any failure means "not ready"; say which, not why in full
                failed[name] = type(exc).__name__
        if failed:
            return problem_response(503, "Dependencies are not answering.", failed=failed)
        return JSONResponse({"status": "ready", "service": spec.name, "checks": list(checks)})

    @app.get("/metrics", include_in_schema=False)
    async def metrics() -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    for router in spec.routers:
        app.include_router(router)
    return app
