"""A service's own identity, for calls made on nobody's behalf (RQ workers, batch jobs).

The platform's API key (secret `service_api_key`) is exchanged at the gateway's internal
`/internal/auth/service-token` (no public route leads there) for a short-lived JWT, renewed
when a third of its life is left: the token is short (seconds), so revoking or rotating
the key takes effect within seconds too.
"""

from __future__ import annotations

import asyncio
import time

import jwt

from .secret_files import SecretStore
from .service_client import ServiceClient


class IdentityError(RuntimeError):
    pass


class ServiceIdentity:
    def __init__(self, secrets: SecretStore, client: ServiceClient):
        self.secrets = secrets
        self.client = client
        self._token: str | None = None
        self._expires = 0.0
        self._renew_at = 0.0
        self._lock = asyncio.Lock()

    async def token(self) -> str:
        async with self._lock:
            if self._token is None or time.time() >= self._renew_at:
                self._token, issued, self._expires = await self._exchange()
                self._renew_at = self._expires - (self._expires - issued) / 3
            return self._token

    async def _exchange(self) -> tuple[str, float, float]:
        key = self.secrets.require("service_api_key")
        resp = await self.client.request("gateway", "GET", "/internal/auth/service-token",
                                         headers={"X-API-Key": key})
        if resp.status != 200:
            raise IdentityError(f"the gateway refused the service key ({resp.status})")
        token = resp.json().get("access_token") if resp.body else None
        if not token:
            raise IdentityError("the gateway returned no token for the service key")
        # Only for the lifetime; the services that receive the token verify its signature.
        claims = jwt.decode(token, options={"verify_signature": False})
        return token, float(claims["iat"]), float(claims["exp"])
