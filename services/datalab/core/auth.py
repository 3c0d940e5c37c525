"""JWTs: Ed25519-signed by the gateway, verified by every service (defence in depth).

Only the gateway holds the private key; the other services get the public key alone, so a
compromised service cannot mint tokens.
"""

from __future__ import annotations

import hashlib
import secrets
import time
import uuid
from dataclasses import dataclass
from typing import Annotated, Literal

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from fastapi import Depends, Request

from .errors import Problem
from .secret_files import SecretStore

ALGORITHM = "EdDSA"
TokenType = Literal["access", "refresh"]


def generate_keypair() -> tuple[str, str]:
    """A new Ed25519 key pair as (private PEM, public PEM)."""
    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    public = (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    return private, public


def new_api_key() -> tuple[str, str, str]:
    """A new API key as (key, prefix, sha256 hex). Keys look like `dlk_<prefix>_<secret>`:
    the prefix finds the row, the hash of the whole key proves it."""
    prefix = secrets.token_hex(6)
    key = f"dlk_{prefix}_{secrets.token_urlsafe(32).replace('_', '-')}"
    return key, prefix, api_key_hash(key)


def api_key_hash(key: str) -> str:
    # Keys are 256-bit random, so a fast hash is enough (argon2 is for passwords).
    return hashlib.sha256(key.encode()).hexdigest()


def api_key_prefix(key: str) -> str | None:
    parts = key.split("_")
    return parts[1] if len(parts) == 3 and parts[0] == "dlk" and parts[1] else None


@dataclass(frozen=True)
class Principal:
    user_id: str
    username: str
    is_admin: bool
    via: str = "jwt"  # "jwt" or "api_key"


class TokenVerifier:
    def __init__(self, secrets: SecretStore, issuer: str, audience: str):
        self.secrets = secrets
        self.issuer = issuer
        self.audience = audience
        self._key_pem: str | None = None
        self._key: Ed25519PublicKey | None = None

    def _public_key(self) -> Ed25519PublicKey:
        pem = self.secrets.require("jwt_public_key.pem")
        if self._key is None or pem != self._key_pem:  # re-parse only when the file changed (rotation)
            key = serialization.load_pem_public_key(pem.encode())
            if not isinstance(key, Ed25519PublicKey):
                raise ValueError(f"jwt_public_key.pem holds a {type(key).__name__}, not an Ed25519 public key")
            self._key, self._key_pem = key, pem
        return self._key

    def decode(self, token: str, expected_type: TokenType = "access") -> dict:
        try:
            claims = jwt.decode(
                token,
                self._public_key(),
                algorithms=[ALGORITHM],
                audience=self.audience,
                issuer=self.issuer,
                options={"require": ["exp", "iat", "sub", "typ"]},
            )
        except jwt.ExpiredSignatureError:
            raise _unauthorized("The token has expired.") from None
        except jwt.PyJWTError:
            raise _unauthorized("The token is not valid.") from None
        if claims.get("typ") != expected_type:
            raise _unauthorized(f"Expected an {expected_type} token.")
        return claims

    def principal(self, token: str) -> Principal:
        claims = self.decode(token, "access")
        return Principal(
            user_id=claims["sub"],
            username=claims.get("name", ""),
            is_admin=bool(claims.get("adm", False)),
            via=claims.get("via", "jwt"),
        )


class TokenIssuer:
    """Mints tokens. Only the gateway builds one (it alone has the private key)."""

    def __init__(self, secrets: SecretStore, issuer: str, audience: str):
        self.secrets = secrets
        self.issuer = issuer
        self.audience = audience

    def mint(
        self, principal: Principal, token_type: TokenType, ttl_seconds: int
    ) -> tuple[str, dict]:
        now = int(time.time())
        claims = {
            "iss": self.issuer,
            "aud": self.audience,
            "sub": principal.user_id,
            "name": principal.username,
            "adm": principal.is_admin,
            "via": principal.via,
            "typ": token_type,
            "iat": now,
            "exp": now + ttl_seconds,
            "jti": uuid.uuid4().hex,
        }
        key = serialization.load_pem_private_key(
            self.secrets.require("jwt_private_key.pem").encode(), password=None
        )
        if not isinstance(key, Ed25519PrivateKey):
            raise ValueError(f"jwt_private_key.pem holds a {type(key).__name__}, not an Ed25519 private key")
        return jwt.encode(claims, key, algorithm=ALGORITHM), claims


def _unauthorized(detail: str) -> Problem:
    return Problem(401, detail, headers={"WWW-Authenticate": 'Bearer realm="datalab"'})


def bearer_token(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() == "bearer" and token:
        return token.strip()
    return None


async def current_principal(request: Request) -> Principal:
    """FastAPI dependency: the verified caller, or a 401 problem."""
    token = bearer_token(request)
    if token is None:
        raise _unauthorized("A bearer token is required.")
    verifier: TokenVerifier = request.app.state.token_verifier
    return verifier.principal(token)


async def admin_principal(principal: Annotated[Principal, Depends(current_principal)]) -> Principal:
    if not principal.is_admin:
        raise Problem(403, "This needs an administrator.")
    return principal


CurrentUser = Annotated[Principal, Depends(current_principal)]
AdminUser = Annotated[Principal, Depends(admin_principal)]
