"""Typed dependencies for the gateway's routes: its settings and what its start-up built
(lifecycle.py), by name and type."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from datalab.core.audit import client_ip
from datalab.core.auth import TokenIssuer, TokenVerifier
from datalab.core.deps import from_state, settings_dependency

from .key_cache import KeyCache
from .ratelimit import RateLimiter
from .settings import GatewaySettings


def get_client_ip(request: Request) -> str:
    # The scope's client is the real one: TrustedProxyMiddleware believed X-Forwarded-For
    # from trusted proxies only.
    return client_ip(request) or "unknown"


SettingsDep = Annotated[GatewaySettings, Depends(settings_dependency(GatewaySettings))]
TokenIssuerDep = Annotated[TokenIssuer, Depends(from_state("token_issuer", TokenIssuer))]
TokenVerifierDep = Annotated[TokenVerifier, Depends(from_state("token_verifier", TokenVerifier))]
KeyCacheDep = Annotated[KeyCache, Depends(from_state("key_cache", KeyCache))]
LimiterDep = Annotated[RateLimiter, Depends(from_state("limiter", RateLimiter))]
ClientIpDep = Annotated[str, Depends(get_client_ip)]
