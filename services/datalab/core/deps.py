"""Typed dependencies for route handlers, as the FastAPI template's `api/deps.py`: what the
app factory put on `app.state`, by name and type, instead of `request.app.state.x`.

    async def handler(redis: RedisDep, sessions: SessionsDep, settings: DataSettingsDep): ...

A service declares its own aliases: `settings_dependency(ItsSettings)` for its settings,
`from_state("name", Type)` for an object its start-up put on `app.state`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, TypeVar

import redis.asyncio as aioredis
from fastapi import Depends, Request
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from .service_client import ServiceClient
from .settings import BaseServiceSettings

S = TypeVar("S", bound=BaseServiceSettings)
T = TypeVar("T")


def get_redis(request: Request) -> aioredis.Redis:
    return request.app.state.redis


def get_sessions(request: Request) -> async_sessionmaker[AsyncSession]:
    return request.app.state.sessions


def get_services(request: Request) -> ServiceClient:
    return request.app.state.services


def from_state(name: str, cls: type[T]) -> Callable[[Request], T]:
    """A dependency answering `app.state.<name>`, which start-up put there as a `cls`."""

    def get(request: Request) -> T:
        value = getattr(request.app.state, name)
        assert isinstance(value, cls), f"app.state.{name} is a {type(value).__name__}, not a {cls.__name__}"
        return value

    get.__name__ = f"get_{name}"
    return get


def settings_dependency(cls: type[S]) -> Callable[[Request], S]:
    return from_state("settings", cls)


RedisDep = Annotated[aioredis.Redis, Depends(get_redis)]
SessionsDep = Annotated[async_sessionmaker[AsyncSession], Depends(get_sessions)]
ServicesDep = Annotated[ServiceClient, Depends(get_services)]
