"""Typed dependencies for the gateway's routes: its settings and what its start-up built
(lifecycle.py), by name and type."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from datalab.core.audit import client_ip
from datalab.core.auth import TokenIssuer, TokenVerifier
from datalab.core.deps import settings_dependency

from .key_cache import KeyCache
from .ratelimit import RateLimiter
from .settings import GatewaySettings


def get_token_issuer(request: Request) -> TokenIssuer:
    return request.app.state.token_issuer


def get_token_verifier(request: Request) -> TokenVerifier:
    return request.app.state.token_verifier


def get_key_cache(request: Request) -> KeyCache:
    return request.app.state.key_cache


def get_limiter(request: Request) -> RateLimiter:
    return request.app.state.limiter


def get_client_ip(request: Request) -> str:
    # The scope's client is the real one: TrustedProxyMiddleware believed X-Forwarded-For
    # from trusted proxies only.
    return client_ip(request) or "unknown"


SettingsDep = Annotated[GatewaySettings, Depends(settings_dependency(GatewaySettings))]
TokenIssuerDep = Annotated[TokenIssuer, Depends(get_token_issuer)]
TokenVerifierDep = Annotated[TokenVerifier, Depends(get_token_verifier)]
KeyCacheDep = Annotated[KeyCache, Depends(get_key_cache)]
LimiterDep = Annotated[RateLimiter, Depends(get_limiter)]
ClientIpDep = Annotated[str, Depends(get_client_ip)]
