"""Consul discovery against a real Consul agent (built from Go modules by
tools/hashistack/build.sh, or on PATH). Without one these tests skip, saying why."""

import json
import shutil
import tempfile
import urllib.request
from pathlib import Path

import pytest

from datalab.core.discovery import ConsulDiscovery
from datalab.devstack.hashistack import ConsulDev, find_binary

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        find_binary("consul") is None,
        reason="NO CONSUL BINARY: not on PATH and tools/hashistack/bin/consul not built "
        "(run tools/hashistack/build.sh consul); Consul discovery was NOT tested against a real agent",
    ),
]


@pytest.fixture(scope="module")
def consul_agent():
    root = Path(tempfile.mkdtemp(prefix="datalab-consul-"))
    agent = ConsulDev(root)
    agent.start()
    try:
        yield agent
    finally:
        agent.stop()
        shutil.rmtree(root, ignore_errors=True)


def agent_put(agent, path: str, body=None) -> None:
    data = json.dumps(body).encode() if body is not None else b""
    req = urllib.request.Request(f"{agent.address}{path}", data=data, method="PUT")
    urllib.request.urlopen(req, timeout=5).read()


def register(agent, service: str, instance: str, port: int) -> None:
    agent_put(agent, "/v1/agent/service/register", {
        "ID": instance, "Name": service, "Address": "127.0.0.1", "Port": port,
        "Check": {"CheckID": f"{instance}-ttl", "TTL": "60s", "Status": "passing"},
    })


async def test_passing_instances_follow_health_without_a_call_per_request(consul_agent):
    register(consul_agent, "data", "data-1", 18001)
    discovery = ConsulDiscovery(consul_agent.address, wait="5s")
    try:
        assert await discovery.instances("data") == ["http://127.0.0.1:18001"]
        queries = discovery.queries
        for _ in range(200):
            await discovery.instances("data")
        assert discovery.queries <= queries + 1  # served from the cache, not one call each

        register(consul_agent, "data", "data-2", 18002)
        assert await eventually_async(lambda: discovery.instances("data"),
                                      lambda v: sorted(v) == ["http://127.0.0.1:18001", "http://127.0.0.1:18002"])
        agent_put(consul_agent, "/v1/agent/check/fail/data-1-ttl")  # critical: no longer passing
        assert await eventually_async(lambda: discovery.instances("data"), lambda v: v == ["http://127.0.0.1:18002"])
        assert await discovery.instances("nothing-registered") == []
    finally:
        await discovery.close()


async def test_unreachable_consul_keeps_the_last_answer(consul_agent):
    register(consul_agent, "viz", "viz-1", 18004)
    discovery = ConsulDiscovery(consul_agent.address, wait="2s")
    try:
        assert await discovery.instances("viz") == ["http://127.0.0.1:18004"]
        discovery._consul.http.base_uri = "http://127.0.0.1:9"  # now nothing answers
        assert await discovery.instances("viz") == ["http://127.0.0.1:18004"]
    finally:
        await discovery.close()


async def eventually_async(get, check, seconds=15.0):
    import asyncio
    import time

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if check(await get()):
            return True
        await asyncio.sleep(0.1)
    return check(await get())

