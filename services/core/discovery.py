"""Where the other services are: a static table (embedded mode) or Consul (later issue).

`instances(name)` returns base URLs of healthy instances; callers pick one per request.
"""

from __future__ import annotations

from typing import Protocol

from .settings import SERVICE_PORTS, BaseServiceSettings


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


def create_discovery(settings: BaseServiceSettings) -> Discovery:
    if settings.discovery == "static":
        return StaticDiscovery(settings.static_services)
    raise NotImplementedError(
        "Consul discovery arrives with the HashiCorp deployment issue; use DATALAB_DISCOVERY=static"
    )
