"""Every service believes X-Forwarded-For from trusted proxies only."""

import httpx
from fastapi import FastAPI, Request

from datalab.core.audit import client_ip
from datalab.core.proxy import TrustedProxyMiddleware, peer_is_trusted_proxy


def _app() -> FastAPI:
    app = FastAPI()

    @app.get("/who")
    async def who(request: Request) -> dict:
        return {"client": client_ip(request), "peer_trusted": peer_is_trusted_proxy(request)}

    app.add_middleware(TrustedProxyMiddleware, trusted_proxies="127.0.0.1,10.0.0.0/24")
    return app


async def _who(peer: str, xff: str | None) -> dict:
    transport = httpx.ASGITransport(app=_app(), client=(peer, 40000))
    async with httpx.AsyncClient(transport=transport, base_url="http://gw") as http:
        return (await http.get("/who", headers={"X-Forwarded-For": xff} if xff else {})).json()


async def test_an_untrusted_peer_is_the_client_whatever_it_says():
    assert await _who("192.0.2.9", "203.0.113.1") == {"client": "192.0.2.9", "peer_trusted": False}


async def test_a_trusted_proxy_names_the_client():
    assert await _who("127.0.0.1", "198.51.100.4") == {"client": "198.51.100.4", "peer_trusted": True}


async def test_the_first_untrusted_hop_from_the_right_is_the_client():
    # forwardAuth through Traefik's auth entrypoint: "<client>, 127.0.0.1", from a CIDR-trusted node.
    got = await _who("10.0.0.5", "203.0.113.1, 198.51.100.4, 127.0.0.1")
    assert got == {"client": "198.51.100.4", "peer_trusted": True}


async def test_proxies_from_the_file_are_trusted_once_it_appears(tmp_path):
    # Under Nomad the file holds Traefik's node addresses from Consul (the gateway job).
    listed = tmp_path / "trusted_proxies"
    app = FastAPI()

    @app.get("/who")
    async def who(request: Request) -> dict:
        return {"client": client_ip(request)}

    app.add_middleware(TrustedProxyMiddleware, trusted_proxies="127.0.0.1", extra_file=listed, refresh_seconds=0)
    transport = httpx.ASGITransport(app=app, client=("192.0.2.50", 40000))
    async with httpx.AsyncClient(transport=transport, base_url="http://gw") as http:
        xff = {"X-Forwarded-For": "203.0.113.9"}
        assert (await http.get("/who", headers=xff)).json() == {"client": "192.0.2.50"}
        listed.write_text("192.0.2.49,192.0.2.50,")
        assert (await http.get("/who", headers=xff)).json() == {"client": "203.0.113.9"}
