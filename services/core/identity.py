"""A service's own identity, for calls made on nobody's behalf (RQ workers, batch jobs).

The platform's API key (secret `service_api_key`) is exchanged at the gateway's
`/api/v1/auth/verify` for a short-lived JWT, the same swap Traefik's forwardAuth makes for
any API key; the token is cached until a minute before it expires.
"""

from __future__ import annotations

import asyncio
import time

import jwt

from .client import ServiceClient
from .secrets import SecretStore


class IdentityError(RuntimeError):
    pass


class ServiceIdentity:
    def __init__(self, secrets: SecretStore, client: ServiceClient):
        self.secrets = secrets
        self.client = client
        self._token: str | None = None
        self._expires = 0.0
        self._lock = asyncio.Lock()

    async def token(self) -> str:
        async with self._lock:
            if self._token is None or self._expires - time.time() < 60:
                self._token, self._expires = await self._exchange()
            return self._token

    async def _exchange(self) -> tuple[str, float]:
        key = self.secrets.require("service_api_key")
        resp = await self.client.request("gateway", "GET", "/api/v1/auth/verify", headers={"X-API-Key": key})
        if resp.status != 200:
            raise IdentityError(f"the gateway refused the service key ({resp.status})")
        scheme, _, token = resp.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise IdentityError("the gateway returned no token for the service key")
        # Only for the expiry; the services that receive the token verify its signature.
        exp = jwt.decode(token, options={"verify_signature": False})["exp"]
        return token, float(exp)
