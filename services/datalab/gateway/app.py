"""Gateway (port 8000): identity and policy. Traefik routes; the gateway decides who may pass.

- `POST /api/v1/auth/token`    OAuth2 password form -> access + refresh JWT
- `POST /api/v1/auth/refresh`  a refresh token (single use) -> a new pair
- users (admin) and API keys (each user their own)

Not routed by Traefik's public routers (`/internal/`), and answering only whom they serve:
- `GET  /internal/auth/verify`         Traefik forwardAuth (trusted proxies only): bearer
      JWT or API key, rate limits, identity headers (`X-User-Id`, `X-User-Name`,
      `Authorization`) that Traefik hands upstream only, never to the client
- `GET  /internal/auth/service-token`   the platform's service key -> a short-lived JWT
      (workers, `core.identity`); no other key gets a token
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import secrets
from datetime import UTC, datetime
from typing import Annotated

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerifyMismatchError
from fastapi import APIRouter, Depends, FastAPI, Form, Header, Request, Response
from pydantic import AfterValidator, BaseModel, Field
from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert

from datalab.core import db
from datalab.core.app import ServiceSpec, create_app
from datalab.core.audit import audit, client_ip
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
from datalab.core.proxy import peer_is_trusted_proxy
from datalab.core.settings import BaseServiceSettings

from .keycache import KeyCache, KeyEntry
from .models import ApiKey, Base, User, new_id
from .ratelimit import RateLimiter

log = logging.getLogger("datalab.gateway")
hasher = PasswordHasher()
# Verified against when the user does not exist, so a wrong name costs what a wrong password does.
_DUMMY_HASH = hasher.hash(secrets.token_urlsafe(16))


class GatewaySettings(BaseServiceSettings):
    service_name: str = "gateway"
    port: int = 8000
    access_token_ttl: int = 900
    refresh_token_ttl: int = 7 * 24 * 3600
    # The JWT minted for an API-key call (forwardAuth, service token): it bounds how long a
    # token derived from a revoked key can live upstream, so seconds, not minutes.
    internal_token_ttl: int = 15
    api_key_cache_ttl: int = 300  # revocation overwrites the entry at once (keycache)
    rate_limit_user_per_minute: int = 600
    rate_limit_ip_per_minute: int = 1200
    login_limit_per_minute: int = 30
    admin_user: str = "admin"
    service_account: str = "svc-datalab"


router = APIRouter(prefix="/api/v1/auth", tags=["auth"])
internal = APIRouter(prefix="/internal/auth", tags=["internal"], include_in_schema=False)


def _no_nul(value: str) -> str:
    # PostgreSQL text cannot hold NUL: refuse it as bad input (422), not a 500 at the insert.
    if "\x00" in value:
        raise ValueError("must not contain a NUL character")
    return value


Text = Annotated[str, AfterValidator(_no_nul)]


class TokenPair(BaseModel):
    access_token: str
    refresh_token: str
    token_type: str = "bearer"
    expires_in: int


class RefreshRequest(BaseModel):
    refresh_token: str


class UserCreate(BaseModel):
    username: Text = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.@-]+$")
    password: Text = Field(min_length=8, max_length=256)
    is_admin: bool = False


class UserOut(BaseModel):
    id: str
    username: str
    is_admin: bool


class ApiKeyCreate(BaseModel):
    name: Text = Field(min_length=1, max_length=128)


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
    # The scope's client is the real one: TrustedProxyMiddleware believed X-Forwarded-For
    # from trusted proxies only.
    return client_ip(request) or "unknown"


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


class LoginForm:
    """The OAuth2 password form (username, password), NUL refused before any lookup."""

    # min_length: an empty form field is a missing one to FastAPI ("Field required").
    def __init__(self, username: Annotated[str, Form(min_length=1, max_length=256)],
                 password: Annotated[str, Form(min_length=1, max_length=1024)]):
        if "\x00" in username or "\x00" in password:
            raise Problem(422, "The user name and password must not contain a NUL character.")
        self.username = username
        self.password = password


@router.post("/token", response_model=TokenPair)
async def login(request: Request, form: Annotated[LoginForm, Depends()]) -> TokenPair:
    try:
        await _limit(request, "login-ip", _client_ip(request), _settings(request).login_limit_per_minute)
    except Problem:
        audit("login", "denied", actor=form.username, object=f"user:{form.username}", request=request,
              reason="rate limit")
        raise
    user = await db.read_with_retry(request.app.state.sessions,
                         lambda session: session.scalar(select(User).where(User.username == form.username)))
    ok = await _password_ok(user.password_hash if user else _DUMMY_HASH, form.password)
    if user is None or not ok or user.disabled:
        audit("login", "failure", actor=form.username, object=f"user:{form.username}", request=request)
        raise Problem(401, "Wrong user name or password.", headers={"WWW-Authenticate": "Bearer"})
    audit("login", "success", actor=user.username, object=f"user:{user.id}", request=request)
    return _pair(request, _principal(user))


@router.post("/refresh", response_model=TokenPair)
async def refresh(request: Request, body: RefreshRequest) -> TokenPair:
    try:
        claims = request.app.state.token_verifier.decode(body.refresh_token, "refresh")
    except Problem:
        audit("token.refresh", "failure", actor=None, request=request, reason="invalid token")
        raise
    # Single use: the first presentation wins, a replay is refused.
    ttl = max(1, int(claims["exp"]) - int(datetime.now(UTC).timestamp()))
    first = await request.app.state.redis.set(f"dl:refresh-used:{claims['jti']}", 1, ex=ttl, nx=True)
    if not first:
        audit("token.refresh", "failure", actor=claims.get("name"), object=f"user:{claims['sub']}",
              request=request, reason="replayed")
        raise Problem(401, "This refresh token was already used.")
    user = await db.read_with_retry(request.app.state.sessions, lambda session: session.get(User, claims["sub"]))
    if user is None or user.disabled:
        audit("token.refresh", "failure", actor=claims.get("name"), object=f"user:{claims['sub']}",
              request=request, reason="user gone or disabled")
        raise Problem(401, "The user no longer exists or is disabled.")
    audit("token.refresh", "success", actor=user.username, object=f"user:{user.id}", request=request)
    return _pair(request, _principal(user))


@internal.get("/verify")
async def verify(
    request: Request,
    response: Response,
    x_api_key: Annotated[str | None, Header()] = None,
) -> dict:
    """Traefik forwardAuth: 2xx lets the request through (with identity headers), else deny.

    Traefik copies the headers upstream only (authResponseHeaders), so the internal JWT
    minted for an API key never reaches a client; nobody but a trusted proxy is answered."""
    if not peer_is_trusted_proxy(request):
        raise Problem(403, "This endpoint answers the edge proxy only.")
    settings = _settings(request)
    await _limit(request, "ip", _client_ip(request), settings.rate_limit_ip_per_minute)

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


@internal.get("/service-token")  # GET: no state changes, so the service client retries it
async def service_token(request: Request, x_api_key: Annotated[str | None, Header()] = None) -> dict:
    """The platform's own identity (core.identity): its service key -> a short-lived JWT.
    Any other key is refused: a user's key works through Traefik only."""
    settings = _settings(request)
    if not x_api_key:
        raise Problem(401, "The service key is required (X-API-Key).")
    principal = await _api_key_principal(request, x_api_key)
    if principal.username != settings.service_account:
        raise Problem(403, "Only the platform's service key is exchanged for a token.")
    token, _ = request.app.state.token_issuer.mint(principal, "access", settings.internal_token_ttl)
    return {"access_token": token, "token_type": "bearer", "expires_in": settings.internal_token_ttl}


async def _api_key_principal(request: Request, key: str) -> Principal:
    prefix = api_key_prefix(key)
    if prefix is None:
        raise Problem(401, "The API key is not valid.")
    cache: KeyCache = request.app.state.key_cache
    entry = await cache.get(prefix)  # warm: no PostgreSQL
    cold = entry is None
    if cold:
        entry = await _key_entry(request, prefix)
    if entry is None or not hmac.compare_digest(entry.key_hash, api_key_hash(key)) or not entry.usable:
        raise Problem(401, "The API key is not valid.")
    if cold:  # filled only for the right key, so a wrong secret cannot skip the audit below
        if await cache.first_use(entry.key_id):
            audit("api_key.first_use", "success", actor=entry.username, object=f"api_key:{entry.key_id}",
                  request=request)
        await cache.fill(prefix, entry)
    return Principal(user_id=entry.user_id, username=entry.username, is_admin=entry.is_admin, via="api_key")


def _entry(api_key: ApiKey, user: User) -> KeyEntry:
    return KeyEntry(key_id=api_key.id, key_hash=api_key.key_hash, user_id=user.id, username=user.username,
                    is_admin=user.is_admin, usable=api_key.revoked_at is None and not user.disabled)


async def _key_entry(request: Request, prefix: str) -> KeyEntry | None:
    async def lookup(session):
        query = select(ApiKey, User).join(User, User.id == ApiKey.user_id).where(ApiKey.prefix == prefix)
        return (await session.execute(query)).first()

    # Every cold API-key request through the edge comes here (forwardAuth): a session cut
    # by a credential rotation costs a retry, not a refused request.
    row = await db.read_with_retry(request.app.state.sessions, lookup)
    return _entry(*row) if row is not None else None


@router.get("/me", response_model=UserOut)
async def me(principal: CurrentUser) -> UserOut:
    return UserOut(id=principal.user_id, username=principal.username, is_admin=principal.is_admin)


@router.post("/users", response_model=UserOut, status_code=201)
async def create_user(request: Request, body: UserCreate, principal: AdminUser) -> UserOut:
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
        audit("user.create", "failure", actor=principal.username, object=f"user:{body.username}",
              request=request, reason="exists")
        raise Problem(409, f"User {body.username!r} already exists.")
    audit("user.create", "success", actor=principal.username, object=f"user:{user_id}", request=request,
          username=body.username, is_admin=body.is_admin)
    return UserOut(id=user_id, username=body.username, is_admin=body.is_admin)


@router.post("/api-keys", response_model=ApiKeyCreated, status_code=201)
async def create_api_key(request: Request, body: ApiKeyCreate, principal: CurrentUser) -> ApiKeyCreated:
    if principal.via != "jwt":
        audit("api_key.create", "denied", actor=principal.username, request=request, reason="via api key")
        raise Problem(403, "API keys are created by a logged-in user, not by another API key.")
    key, prefix, digest = new_api_key()
    row = ApiKey(user_id=principal.user_id, name=body.name, prefix=prefix, key_hash=digest)
    async with request.app.state.sessions() as session, session.begin():
        session.add(row)
    audit("api_key.create", "success", actor=principal.username, object=f"api_key:{row.id}", request=request,
          label=body.name)
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
        row = await session.get(ApiKey, key_id) if db.is_row_id(key_id) else None
        if row is None or row.user_id != principal.user_id:
            audit("api_key.revoke", "failure", actor=principal.username, object=f"api_key:{key_id[:64]}",
                  request=request, reason="not found")
            raise Problem(404, "No such API key.")
        row.revoked_at = row.revoked_at or datetime.now(UTC)
        user = await session.get(User, row.user_id)
    # After the commit: every gateway instance refuses the key from the next request on.
    await request.app.state.key_cache.revoke(row.prefix, _entry(row, user))
    audit("api_key.revoke", "success", actor=principal.username, object=f"api_key:{row.id}", request=request)
    return Response(status_code=204)


async def _startup(app: FastAPI) -> None:
    settings: GatewaySettings = app.state.settings
    app.state.token_issuer = TokenIssuer(app.state.secrets, settings.jwt_issuer, settings.jwt_audience)
    app.state.limiter = RateLimiter(app.state.redis)
    app.state.key_cache = KeyCache(app.state.redis, settings.api_key_cache_ttl)
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
            unusable = hasher.hash(secrets.token_urlsafe(32))  # nobody knows it
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
    await app.state.key_cache.forget(prefix)  # the row may have changed (un-revoked)


SPEC = ServiceSpec(name="gateway", routers=[router, internal], metadata=Base.metadata, on_startup=[_startup],
                   api_prefix=router.prefix)  # Traefik routes /api/v1/auth here, docs included


def build_app(settings: GatewaySettings | None = None) -> FastAPI:
    return create_app(SPEC, settings or GatewaySettings())
