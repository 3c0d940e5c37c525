"""The real client's address, believed only from trusted proxies.

uvicorn's ProxyHeadersMiddleware does the walk: when the peer is a trusted proxy (an IP or
a CIDR of `trusted_proxies`, as uvicorn's `forwarded_allow_ips` and Traefik's
`forwardedHeaders.trustedIPs`), the client is the right-most `X-Forwarded-For` entry that
is not itself a trusted proxy; from any other peer the header is ignored. It rewrites the
ASGI scope, so `request.client.host` (rate limits, `core.audit.client_ip`) is the client.

Before the rewrite, this records whether the peer itself was a trusted proxy: forwardAuth
answers only Traefik (`peer_is_trusted_proxy`).
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

_PEER_TRUSTED = "datalab.peer_is_trusted_proxy"


class TrustedProxyMiddleware:
    def __init__(self, app: ASGIApp, trusted_proxies: str):
        self.proxy = ProxyHeadersMiddleware(app, trusted_hosts=trusted_proxies)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            peer = scope.get("client")
            scope[_PEER_TRUSTED] = bool(peer) and peer[0] in self.proxy.trusted_hosts
        await self.proxy(scope, receive, send)


def peer_is_trusted_proxy(request: Request) -> bool:
    return bool(request.scope.get(_PEER_TRUSTED, False))
