"""What the gateway's routes take and answer."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import Form
from pydantic import AfterValidator, BaseModel, Field

from datalab.core.errors import Problem


def _no_nul(value: str) -> str:
    # PostgreSQL text cannot hold NUL: refuse it as bad input (422), not a 500 at the insert.
    if "\x00" in value:
        raise ValueError("must not contain a NUL character")
    return value


Text = Annotated[str, AfterValidator(_no_nul)]


class LoginForm:
    """The OAuth2 password form (username, password), NUL refused before any lookup."""

    # min_length: an empty form field is a missing one to FastAPI ("Field required").
    def __init__(self, username: Annotated[str, Form(min_length=1, max_length=256)],
                 password: Annotated[str, Form(min_length=1, max_length=1024)]):
        if "\x00" in username or "\x00" in password:
            raise Problem(422, "The user name and password must not contain a NUL character.")
        self.username = username
        self.password = password


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


# The internal routes' answers (not in the OpenAPI: Traefik and core.identity read them).


class VerifiedCaller(BaseModel):
    user_id: str
    username: str
    via: str


class ServiceToken(BaseModel):
    access_token: str
    token_type: str = "bearer"
    expires_in: int
