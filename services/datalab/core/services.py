"""The five services, in one place: their names and default listen ports.

Everything else that lists them derives from here: the `datalab serve` choices (cli.py),
the static discovery table's defaults (core.discovery), what `datalab up` runs
(devstack.local_stack), the jobs `make e2e` deploys (devstack.e2e), the services a cluster
check waits for (ops.cluster_checks), the Vault roles and the Redis users of the services.
"""

from __future__ import annotations

# name -> default port (the README's table), in the order `datalab up` starts them (the gateway first:
# the others' forwardAuth needs it). Each service is the package datalab.<name>.
SERVICE_PORTS: dict[str, int] = {
    "gateway": 8000,
    "data": 8001,
    "ai": 8002,
    "compute": 8003,
    "viz": 8004,
}
SERVICES: tuple[str, ...] = tuple(SERVICE_PORTS)
# The services with tables of their own in PostgreSQL: each has its own database role.
DATABASE_SERVICES: tuple[str, ...] = ("gateway", "data", "ai")


def app_module(service: str) -> str:
    """The module with the service's `build_app(settings=None)` and its Settings class."""
    return f"datalab.{service}.app"
