"""Gateway (port 8000): identity and policy. Traefik routes; the gateway decides who may pass.

- `POST /api/v1/auth/token`    OAuth2 password form -> access + refresh JWT
- `POST /api/v1/auth/refresh`  a refresh token (single use) -> a new pair
- `GET  /api/v1/auth/verify`   Traefik forwardAuth: bearer JWT or API key, rate limits,
                               identity headers (`X-User-Id`, `X-User-Name`, `Authorization`)
- users (admin) and API keys (each user their own)
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import secrets as pysecrets
from datetime import UTC, datetime
from typing import Annotated

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerifyMismatchError
from fastapi import APIRouter, Depends, FastAPI, Header, Request, Response
from fastapi.security import OAuth2PasswordRequestForm
from pydantic import BaseModel, Field
from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert

from datalab.core import db
from datalab.core.app import ServiceSpec, create_app
from datalab.core.auth import (
    AdminUser,
    CurrentUser,
    Principal,
    TokenIssuer,
    api_key_hash,
    api_key_prefix,
    bearer_token,
    new_api_key,
)
from datalab.core.errors import Problem
from datalab.core.settings import BaseServiceSettings

from .models import ApiKey, Base, User, new_id
from .ratelimit import RateLimiter

log = logging.getLogger("datalab.gateway")
hasher = PasswordHasher()
# Verified against when the user does not exist, so a wrong name costs what a wrong password does.
_DUMMY_HASH = hasher.hash(pysecrets.token_urlsafe(16))


class GatewaySettings(BaseServiceSettings):
    service_name: str = "gateway"
    port: int = 8000
    access_token_ttl: int = 900
    refresh_token_ttl: int = 7 * 24 * 3600
    internal_token_ttl: int = 300  # the JWT minted for an API-key call
    rate_limit_user_per_minute: int = 600
    rate_limit_ip_per_minute: int = 1200
    login_limit_per_minute: int = 30
    admin_user: str = "admin"
    service_account: str = "svc-datalab"


router = APIRouter(prefix="/api/v1/auth", tags=["auth"])


class TokenPair(BaseModel):
    access_token: str
    refresh_token: str
    token_type: str = "bearer"
    expires_in: int


class RefreshRequest(BaseModel):
    refresh_token: str


class UserCreate(BaseModel):
    username: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.@-]+$")
    password: str = Field(min_length=8, max_length=256)
    is_admin: bool = False


class UserOut(BaseModel):
    id: str
    username: str
    is_admin: bool


class ApiKeyCreate(BaseModel):
    name: str = Field(min_length=1, max_length=128)


class ApiKeyOut(BaseModel):
    id: str
    name: str
    prefix: str
    created_at: datetime
    revoked_at: datetime | None = None


class ApiKeyCreated(ApiKeyOut):
    key: str  # shown once


def _settings(request: Request) -> GatewaySettings:
    return request.app.state.settings


def _client_ip(request: Request) -> str:
    # Traefik sets X-Forwarded-For on what it forwards (client-supplied values are not
    # trusted at the entrypoint); the right-most entry is the one our proxy added.
    forwarded = request.headers.get("x-forwarded-for")
    if forwarded:
        return forwarded.split(",")[-1].strip()
    return request.client.host if request.client else "unknown"


def _too_many(retry_after: int, what: str) -> Problem:
    return Problem(429, f"Rate limit exceeded ({what}); retry later.", headers={"Retry-After": str(retry_after)})


async def _limit(request: Request, scope: str, key: str, limit: int) -> None:
    verdict = await request.app.state.limiter.hit(scope, key, limit)
    if not verdict.allowed:
        raise _too_many(verdict.retry_after, scope)


def _pair(request: Request, principal: Principal) -> TokenPair:
    settings = _settings(request)
    issuer: TokenIssuer = request.app.state.token_issuer
    access, _ = issuer.mint(principal, "access", settings.access_token_ttl)
    refresh, _ = issuer.mint(principal, "refresh", settings.refresh_token_ttl)
    return TokenPair(access_token=access, refresh_token=refresh, expires_in=settings.access_token_ttl)


def _principal(user: User) -> Principal:
    return Principal(user_id=user.id, username=user.username, is_admin=user.is_admin)


async def _password_ok(password_hash: str, password: str) -> bool:
    def verify() -> bool:
        try:
            return hasher.verify(password_hash, password)
        except (VerifyMismatchError, InvalidHashError):
            return False

    return await asyncio.to_thread(verify)


@router.post("/token", response_model=TokenPair)
async def login(request: Request, form: Annotated[OAuth2PasswordRequestForm, Depends()]) -> TokenPair:
    await _limit(request, "login-ip", _client_ip(request), _settings(request).login_limit_per_minute)
    user = await db.read(request.app.state.sessions,
                         lambda session: session.scalar(select(User).where(User.username == form.username)))
    ok = await _password_ok(user.password_hash if user else _DUMMY_HASH, form.password)
    if user is None or not ok or user.disabled:
        raise Problem(401, "Wrong user name or password.", headers={"WWW-Authenticate": "Bearer"})
    return _pair(request, _principal(user))


@router.post("/refresh", response_model=TokenPair)
async def refresh(request: Request, body: RefreshRequest) -> TokenPair:
    claims = request.app.state.token_verifier.decode(body.refresh_token, "refresh")
    # Single use: the first presentation wins, a replay is refused.
    ttl = max(1, int(claims["exp"]) - int(datetime.now(UTC).timestamp()))
    first = await request.app.state.redis.set(f"dl:refresh-used:{claims['jti']}", 1, ex=ttl, nx=True)
    if not first:
        raise Problem(401, "This refresh token was already used.")
    user = await db.read(request.app.state.sessions, lambda session: session.get(User, claims["sub"]))
    if user is None or user.disabled:
        raise Problem(401, "The user no longer exists or is disabled.")
    return _pair(request, _principal(user))


@router.get("/verify")
async def verify(
    request: Request,
    response: Response,
    x_api_key: Annotated[str | None, Header()] = None,
) -> dict:
    """Traefik forwardAuth: 2xx lets the request through (with identity headers), else deny."""
    settings = _settings(request)
    ip = _client_ip(request)
    await _limit(request, "ip", ip, settings.rate_limit_ip_per_minute)

    token = bearer_token(request)
    if token is not None:
        principal = request.app.state.token_verifier.principal(token)
        forwarded_token = token
    elif x_api_key:
        principal = await _api_key_principal(request, x_api_key)
        forwarded_token, _ = request.app.state.token_issuer.mint(
            principal, "access", settings.internal_token_ttl
        )
    else:
        raise Problem(401, "A bearer token or an X-API-Key is required.", headers={"WWW-Authenticate": "Bearer"})

    await _limit(request, "user", principal.user_id, settings.rate_limit_user_per_minute)
    response.headers["X-User-Id"] = principal.user_id
    response.headers["X-User-Name"] = principal.username
    response.headers["Authorization"] = f"Bearer {forwarded_token}"
    return {"user_id": principal.user_id, "username": principal.username, "via": principal.via}


async def _api_key_principal(request: Request, key: str) -> Principal:
    prefix = api_key_prefix(key)
    if prefix is None:
        raise Problem(401, "The API key is not valid.")
    digest = api_key_hash(key)
    async def lookup(session):
        query = select(ApiKey, User).join(User, User.id == ApiKey.user_id).where(ApiKey.prefix == prefix)
        return (await session.execute(query)).first()

    # Every request through the edge with an API key comes here (forwardAuth): a session cut
    # by a credential rotation costs a retry, not a refused request.
    row = await db.read(request.app.state.sessions, lookup)
    if row is None:
        raise Problem(401, "The API key is not valid.")
    api_key, user = row
    if not hmac.compare_digest(api_key.key_hash, digest) or api_key.revoked_at or user.disabled:
        raise Problem(401, "The API key is not valid.")
    return Principal(user_id=user.id, username=user.username, is_admin=user.is_admin, via="api_key")


@router.get("/me", response_model=UserOut)
async def me(principal: CurrentUser) -> UserOut:
    return UserOut(id=principal.user_id, username=principal.username, is_admin=principal.is_admin)


@router.post("/users", response_model=UserOut, status_code=201)
async def create_user(request: Request, body: UserCreate, _: AdminUser) -> UserOut:
    password_hash = await asyncio.to_thread(hasher.hash, body.password)
    async with request.app.state.sessions() as session, session.begin():
        stmt = (
            insert(User)
            .values(id=new_id(), username=body.username,
                    password_hash=password_hash, is_admin=body.is_admin)
            .on_conflict_do_nothing(index_elements=[User.username])
            .returning(User.id)
        )
        user_id = await session.scalar(stmt)
    if user_id is None:
        raise Problem(409, f"User {body.username!r} already exists.")
    return UserOut(id=user_id, username=body.username, is_admin=body.is_admin)


@router.post("/api-keys", response_model=ApiKeyCreated, status_code=201)
async def create_api_key(request: Request, body: ApiKeyCreate, principal: CurrentUser) -> ApiKeyCreated:
    if principal.via != "jwt":
        raise Problem(403, "API keys are created by a logged-in user, not by another API key.")
    key, prefix, digest = new_api_key()
    row = ApiKey(user_id=principal.user_id, name=body.name, prefix=prefix, key_hash=digest)
    async with request.app.state.sessions() as session, session.begin():
        session.add(row)
    return ApiKeyCreated(id=row.id, name=row.name, prefix=prefix, created_at=row.created_at, key=key)


@router.get("/api-keys", response_model=list[ApiKeyOut])
async def list_api_keys(request: Request, principal: CurrentUser) -> list[ApiKeyOut]:
    async with request.app.state.sessions() as session:
        rows = await session.scalars(
            select(ApiKey).where(ApiKey.user_id == principal.user_id).order_by(ApiKey.created_at)
        )
        return [ApiKeyOut.model_validate(r, from_attributes=True) for r in rows]


@router.delete("/api-keys/{key_id}", status_code=204)
async def revoke_api_key(request: Request, key_id: str, principal: CurrentUser) -> Response:
    async with request.app.state.sessions() as session, session.begin():
        row = await session.get(ApiKey, key_id)
        if row is None or row.user_id != principal.user_id:
            raise Problem(404, "No such API key.")
        row.revoked_at = row.revoked_at or datetime.now(UTC)
    return Response(status_code=204)


async def _startup(app: FastAPI) -> None:
    settings: GatewaySettings = app.state.settings
    app.state.token_issuer = TokenIssuer(app.state.secrets, settings.jwt_issuer, settings.jwt_audience)
    app.state.limiter = RateLimiter(app.state.redis)
    await _ensure_admin(app, settings)
    await _ensure_service_account(app, settings)


async def _ensure_admin(app: FastAPI, settings: GatewaySettings) -> None:
    """First start: create the admin user from the `admin_password` secret, if given."""
    password = app.state.secrets.read("admin_password")
    if not password:
        return
    async with app.state.sessions() as session, session.begin():
        exists = await session.scalar(select(User.id).where(User.username == settings.admin_user))
        if exists:
            return
        password_hash = await asyncio.to_thread(hasher.hash, password)
        await session.execute(
            insert(User)
            .values(id=new_id(), username=settings.admin_user,
                    password_hash=password_hash, is_admin=True)
            .on_conflict_do_nothing(index_elements=[User.username])
        )
    log.info("admin user created", extra={"username": settings.admin_user})


async def _ensure_service_account(app: FastAPI, settings: GatewaySettings) -> None:
    """The platform's own identity (workers act with it, on nobody's behalf): an admin user
    that cannot log in, holding the API key from the `service_api_key` secret."""
    key = app.state.secrets.read("service_api_key")
    prefix = api_key_prefix(key) if key else None
    if prefix is None:
        return
    async with app.state.sessions() as session, session.begin():
        user_id = await session.scalar(select(User.id).where(User.username == settings.service_account))
        if user_id is None:
            user_id = new_id()
            unusable = hasher.hash(pysecrets.token_urlsafe(32))  # nobody knows it
            await session.execute(
                insert(User)
                .values(id=user_id, username=settings.service_account, password_hash=unusable, is_admin=True)
                .on_conflict_do_nothing(index_elements=[User.username])
            )
            user_id = await session.scalar(select(User.id).where(User.username == settings.service_account))
        await session.execute(
            insert(ApiKey)
            .values(id=new_id(), user_id=user_id, name="platform service key", prefix=prefix, key_hash=api_key_hash(key))
            .on_conflict_do_update(index_elements=[ApiKey.prefix], set_={"key_hash": api_key_hash(key), "revoked_at": None})
        )


SPEC = ServiceSpec(name="gateway", routers=[router], metadata=Base.metadata, on_startup=[_startup])


def build_app(settings: GatewaySettings | None = None) -> FastAPI:
    return create_app(SPEC, settings or GatewaySettings())
