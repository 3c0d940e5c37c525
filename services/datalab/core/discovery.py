"""Where the other services are: a static table (embedded mode) or Consul.

`instances(name)` returns base URLs of healthy instances; callers pick one per request.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from typing import Protocol
from urllib.parse import urlsplit

from .secret_files import SecretStore
from .services import SERVICE_PORTS
from .settings import BaseServiceSettings

log = logging.getLogger("datalab.discovery")


class Discovery(Protocol):
    async def instances(self, service: str) -> list[str]: ...

    async def close(self) -> None: ...


class StaticDiscovery:
    """A fixed table: {"data": ["http://127.0.0.1:8001"]}; unknown names use default ports."""

    def __init__(self, table: dict[str, list[str]], host: str = "127.0.0.1"):
        self.table = {name: list(urls) for name, urls in table.items()}
        self.host = host

    async def instances(self, service: str) -> list[str]:
        if service in self.table:
            return list(self.table[service])
        if service in SERVICE_PORTS:
            return [f"http://{self.host}:{SERVICE_PORTS[service]}"]
        return []

    async def close(self) -> None:
        return None


class ConsulDiscovery:
    """Consul's passing instances, from a cache kept fresh by blocking queries.

    The first `instances(name)` starts one background watch for that service (a long-poll
    on /v1/health/service/<name>?passing, re-issued with the last index); every later call
    reads the cache, so a request never costs a Consul round trip. If Consul is unreachable
    the last known instances stay in use while the watch retries.
    """

    def __init__(self, address: str, token: str | None = None, wait: str = "30s", first_wait: float = 5.0):
        self.address = urlsplit(address if "://" in address else f"http://{address}")
        self.token = token
        self._consul = None  # made in the event loop, on first use (aiohttp needs one)
        self.wait = wait
        self.first_wait = first_wait
        self.queries = 0  # Consul calls made (tests check requests do not add any)
        self._cache: dict[str, list[str]] = {}
        self._ready: dict[str, asyncio.Event] = {}
        self._watches: dict[str, asyncio.Task] = {}

    @property
    def consul(self):
        if self._consul is None:
            import consul.aio  # py-consul, the maintained fork of python-consul

            a = self.address
            self._consul = consul.aio.Consul(
                host=a.hostname or "127.0.0.1", port=a.port or 8500, scheme=a.scheme or "http", token=self.token
            )
        return self._consul

    async def instances(self, service: str) -> list[str]:
        if service not in self._watches:
            self._ready[service] = asyncio.Event()
            self._watches[service] = asyncio.create_task(self._watch(service), name=f"consul-watch-{service}")
        ready = self._ready[service]
        if not ready.is_set():  # only the very first call for a service waits for Consul
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(ready.wait(), self.first_wait)
        return list(self._cache.get(service, ()))

    async def _watch(self, service: str) -> None:
        index = None
        delay = 0.5
        while True:
            try:
                self.queries += 1
                new_index, entries = await self.consul.health.service(
                    service, passing=True, index=index, wait=self.wait
                )
                # Consul's rule: an index that goes backwards means start over.
                index = new_index if index is None or int(new_index) >= int(index) else None
                self._cache[service] = [_url(e) for e in entries]
                self._ready[service].set()
                delay = 0.5
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # Consul away: keep the last answer, retry with backoff
                log.warning("consul watch failed", extra={"watched": service, "error": str(exc)})
                self._ready[service].set()
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)

    async def close(self) -> None:
        for task in self._watches.values():
            task.cancel()
        for task in self._watches.values():
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._consul is not None:
            await self._consul.close()


def _url(entry: dict) -> str:
    svc = entry["Service"]
    host = svc.get("Address") or entry["Node"]["Address"]
    if ":" in host and not host.startswith("["):  # IPv6
        host = f"[{host}]"
    return f"http://{host}:{svc['Port']}"


def create_discovery(settings: BaseServiceSettings, secrets: SecretStore | None = None) -> Discovery:
    if settings.discovery == "consul":
        # Nomad gives a task its Consul token as CONSUL_HTTP_TOKEN and as secrets/consul_token
        # (root:root 0640, unreadable by a non-root container user): environment first.
        token = os.environ.get("CONSUL_HTTP_TOKEN") or None
        if token is None and secrets:
            try:
                token = secrets.read("consul_token")
            except PermissionError:
                token = None
        return ConsulDiscovery(settings.consul_addr, token=token)
    return StaticDiscovery(settings.static_services)
