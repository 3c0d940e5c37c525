"""The real client's address, believed only from trusted proxies.

uvicorn's ProxyHeadersMiddleware does the walk: when the peer is a trusted proxy (an IP or
a CIDR of `trusted_proxies`, as uvicorn's `forwarded_allow_ips` and Traefik's
`forwardedHeaders.trustedIPs`), the client is the right-most `X-Forwarded-For` entry that
is not itself a trusted proxy; from any other peer the header is ignored. It rewrites the
ASGI scope, so `request.client.host` (the request log, the gateway's rate limits,
`core.audit.client_ip`) is the client. The app factory installs it outermost in every
service (settings `trusted_proxies`, `trusted_proxies_file`).

Before the rewrite, this records whether the peer itself was a trusted proxy: the gateway's
forwardAuth answers only Traefik (`peer_is_trusted_proxy`).

Under Nomad, Traefik's addresses come from Consul into a file (`trusted_proxies_file`),
re-read every few seconds: a Traefik node that joins is trusted without a restart.
"""

from __future__ import annotations

import time
from pathlib import Path

from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

_PEER_TRUSTED = "datalab.peer_is_trusted_proxy"


class TrustedProxyMiddleware:
    def __init__(self, app: ASGIApp, trusted_proxies: str, extra_file: Path | None = None,
                 refresh_seconds: float = 5.0):
        self.app = app
        self.base = trusted_proxies
        self.extra_file = extra_file
        self.refresh_seconds = refresh_seconds
        self._hosts: str | None = None
        self._proxy: ProxyHeadersMiddleware | None = None
        self._checked = 0.0

    def _current(self) -> ProxyHeadersMiddleware:
        now = time.monotonic()
        if self._proxy is None or (self.extra_file is not None and now - self._checked >= self.refresh_seconds):
            self._checked = now
            extra = ""
            if self.extra_file is not None:
                try:
                    extra = self.extra_file.read_text()
                except OSError:  # not rendered yet: the base list alone
                    pass
            hosts = ",".join(h.strip() for h in f"{self.base},{extra}".split(",") if h.strip())
            if self._proxy is None or hosts != self._hosts:
                # uvicorn types ASGI with TypedDicts of its own, Starlette with plain mappings:
                # the same dicts at run time.
                self._proxy = ProxyHeadersMiddleware(self.app, trusted_hosts=hosts)  # type: ignore[arg-type]
                self._hosts = hosts
        return self._proxy

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        proxy = self._current()
        if scope["type"] == "http":
            peer = scope.get("client")
            scope[_PEER_TRUSTED] = peer is not None and peer[0] in proxy.trusted_hosts
        await proxy(scope, receive, send)  # type: ignore[arg-type]  # uvicorn's ASGI types, as above


def peer_is_trusted_proxy(request: Request) -> bool:
    return bool(request.scope.get(_PEER_TRUSTED, False))
