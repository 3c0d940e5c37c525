"""The gateway's start-up: the objects its routes use (deps.py), then the seeded accounts."""

from __future__ import annotations

from fastapi import FastAPI

from datalab.core.auth import TokenIssuer

from .key_cache import KeyCache
from .ratelimit import RateLimiter
from .seeding import ensure_admin, ensure_service_account
from .settings import GatewaySettings


async def startup(app: FastAPI) -> None:
    state = app.state
    settings: GatewaySettings = state.settings
    state.token_issuer = TokenIssuer(state.secrets, settings.jwt_issuer, settings.jwt_audience)
    state.limiter = RateLimiter(state.redis)
    state.key_cache = KeyCache(state.redis, settings.api_key_cache_ttl)
    await ensure_admin(state.sessions, state.secrets, settings)
    await ensure_service_account(state.sessions, state.secrets, settings, state.key_cache)
