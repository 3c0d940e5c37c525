"""Routes Traefik's public routers never lead to (`/internal/`), answering only whom they serve:

- `GET  /internal/auth/verify`         Traefik forwardAuth (trusted proxies only): bearer
      JWT or API key, rate limits, identity headers (`X-User-Id`, `X-User-Name`,
      `Authorization`) that Traefik hands upstream only, never to the client
- `GET  /internal/auth/service-token`   the platform's service key -> a short-lived JWT
      (workers, `core.identity`); no other key gets a token
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Request, Response

from datalab.core.auth import bearer_token
from datalab.core.deps import SessionsDep
from datalab.core.errors import Problem
from datalab.core.proxy import peer_is_trusted_proxy

from .. import accounts
from ..deps import ClientIpDep, KeyCacheDep, LimiterDep, SettingsDep, TokenIssuerDep, TokenVerifierDep
from ..schemas import ServiceToken, VerifiedCaller

router = APIRouter(prefix="/internal/auth", tags=["internal"], include_in_schema=False)


@router.get("/verify")
async def verify(
    request: Request,
    response: Response,
    settings: SettingsDep,
    sessions: SessionsDep,
    issuer: TokenIssuerDep,
    verifier: TokenVerifierDep,
    cache: KeyCacheDep,
    limiter: LimiterDep,
    ip: ClientIpDep,
    x_api_key: Annotated[str | None, Header()] = None,
) -> VerifiedCaller:
    """Traefik forwardAuth: 2xx lets the request through (with identity headers), else deny.

    Traefik copies the headers upstream only (authResponseHeaders), so the internal JWT
    minted for an API key never reaches a client; nobody but a trusted proxy is answered."""
    if not peer_is_trusted_proxy(request):
        raise Problem(403, "This endpoint answers the edge proxy only.")
    await limiter.enforce("ip", ip, settings.rate_limit_ip_per_minute)

    token = bearer_token(request)
    if token is not None:
        principal = verifier.principal(token)
        forwarded_token = token
    elif x_api_key:
        principal = await accounts.api_key_principal(request, sessions, cache, x_api_key)
        forwarded_token, _ = issuer.mint(principal, "access", settings.internal_token_ttl)
    else:
        raise Problem(401, "A bearer token or an X-API-Key is required.", headers={"WWW-Authenticate": "Bearer"})

    await limiter.enforce("user", principal.user_id, settings.rate_limit_user_per_minute)
    response.headers["X-User-Id"] = principal.user_id
    response.headers["X-User-Name"] = principal.username
    response.headers["Authorization"] = f"Bearer {forwarded_token}"
    return VerifiedCaller(user_id=principal.user_id, username=principal.username, via=principal.via)


@router.get("/service-token")  # GET: no state changes, so the service client retries it
async def service_token(request: Request, settings: SettingsDep, sessions: SessionsDep, issuer: TokenIssuerDep,
                        cache: KeyCacheDep, x_api_key: Annotated[str | None, Header()] = None) -> ServiceToken:
    """The platform's own identity (core.identity): its service key -> a short-lived JWT.
    Any other key is refused: a user's key works through Traefik only."""
    if not x_api_key:
        raise Problem(401, "The service key is required (X-API-Key).")
    principal = await accounts.api_key_principal(request, sessions, cache, x_api_key)
    if principal.username != settings.service_account:
        raise Problem(403, "Only the platform's service key is exchanged for a token.")
    token, _ = issuer.mint(principal, "access", settings.internal_token_ttl)
    return ServiceToken(access_token=token, expires_in=settings.internal_token_ttl)
