"""Logging in, refreshing tokens, who am I, and users (created by an admin).

- `POST /api/v1/auth/token`    OAuth2 password form -> access + refresh JWT
- `POST /api/v1/auth/refresh`  a refresh token (single use) -> a new pair
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Depends, Request

from datalab.contracts.routes import GATEWAY
from datalab.core.audit import audit
from datalab.core.auth import AdminUser, CurrentUser, Principal, TokenIssuer
from datalab.core.deps import RedisDep, SessionsDep
from datalab.core.errors import Problem

from .. import accounts
from ..deps import ClientIpDep, LimiterDep, SettingsDep, TokenIssuerDep, TokenVerifierDep
from ..schemas import LoginForm, RefreshRequest, TokenPair, UserCreate, UserOut
from ..settings import GatewaySettings

router = APIRouter(prefix=GATEWAY, tags=["auth"])


def _pair(issuer: TokenIssuer, settings: GatewaySettings, principal: Principal) -> TokenPair:
    access, _ = issuer.mint(principal, "access", settings.access_token_ttl)
    refresh, _ = issuer.mint(principal, "refresh", settings.refresh_token_ttl)
    return TokenPair(access_token=access, refresh_token=refresh, expires_in=settings.access_token_ttl)


@router.post("/token", response_model=TokenPair)
async def login(request: Request, form: Annotated[LoginForm, Depends()], settings: SettingsDep,
                sessions: SessionsDep, issuer: TokenIssuerDep, limiter: LimiterDep, ip: ClientIpDep) -> TokenPair:
    try:
        await limiter.enforce("login-ip", ip, settings.login_limit_per_minute)
    except Problem:
        audit("login", "denied", actor=form.username, object=f"user:{form.username}", request=request,
              reason="rate limit")
        raise
    user = await accounts.check_password(sessions, form.username, form.password)
    if user is None:
        audit("login", "failure", actor=form.username, object=f"user:{form.username}", request=request)
        raise Problem(401, "Wrong user name or password.", headers={"WWW-Authenticate": "Bearer"})
    audit("login", "success", actor=user.username, object=f"user:{user.id}", request=request)
    return _pair(issuer, settings, accounts.principal_of(user))


@router.post("/refresh", response_model=TokenPair)
async def refresh(request: Request, body: RefreshRequest, settings: SettingsDep, sessions: SessionsDep,
                  redis: RedisDep, issuer: TokenIssuerDep, verifier: TokenVerifierDep) -> TokenPair:
    try:
        claims = verifier.decode(body.refresh_token, "refresh")
    except Problem:
        audit("token.refresh", "failure", actor=None, request=request, reason="invalid token")
        raise
    # Single use: the first presentation wins, a replay is refused.
    ttl = max(1, int(claims["exp"]) - int(datetime.now(UTC).timestamp()))
    first = await redis.set(f"dl:refresh-used:{claims['jti']}", 1, ex=ttl, nx=True)
    if not first:
        audit("token.refresh", "failure", actor=claims.get("name"), object=f"user:{claims['sub']}",
              request=request, reason="replayed")
        raise Problem(401, "This refresh token was already used.")
    user = await accounts.get_user(sessions, claims["sub"])
    if user is None or user.disabled:
        audit("token.refresh", "failure", actor=claims.get("name"), object=f"user:{claims['sub']}",
              request=request, reason="user gone or disabled")
        raise Problem(401, "The user no longer exists or is disabled.")
    audit("token.refresh", "success", actor=user.username, object=f"user:{user.id}", request=request)
    return _pair(issuer, settings, accounts.principal_of(user))


@router.get("/me", response_model=UserOut)
async def me(principal: CurrentUser) -> UserOut:
    return UserOut(id=principal.user_id, username=principal.username, is_admin=principal.is_admin)


@router.post("/users", response_model=UserOut, status_code=201)
async def create_user(request: Request, body: UserCreate, principal: AdminUser, sessions: SessionsDep) -> UserOut:
    password_hash = await accounts.hash_password(body.password)
    user_id = await accounts.create_user(sessions, body.username, password_hash, body.is_admin)
    if user_id is None:
        audit("user.create", "failure", actor=principal.username, object=f"user:{body.username}",
              request=request, reason="exists")
        raise Problem(409, f"User {body.username!r} already exists.")
    audit("user.create", "success", actor=principal.username, object=f"user:{user_id}", request=request,
          username=body.username, is_admin=body.is_admin)
    return UserOut(id=user_id, username=body.username, is_admin=body.is_admin)
