"""Gateway (port 8000): identity and policy. Traefik routes; the gateway decides who may pass.

Its routes (routes/): logging in and tokens, users and API keys under /api/v1/auth, and the
internal forwardAuth and service-token routes; the accounts live in PostgreSQL (accounts.py,
tables.py), API-key lookups and rate limits in Redis (key_cache.py, ratelimit.py); the first
start creates the admin user and the service account (seeding.py).
"""

from __future__ import annotations

from fastapi import FastAPI

from datalab.core.app import ServiceSpec, create_app

from .lifecycle import startup
from .routes import api_keys, auth, internal
from .settings import GatewaySettings
from .tables import Base

SPEC = ServiceSpec(
    name="gateway", routers=[auth.router, api_keys.router, internal.router], metadata=Base.metadata,
    on_startup=[startup], api_prefix=auth.router.prefix,  # Traefik routes /api/v1/auth here, docs included
)


def build_app(settings: GatewaySettings | None = None) -> FastAPI:
    return create_app(SPEC, settings or GatewaySettings())
