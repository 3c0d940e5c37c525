"""The core service client against real services: discovery, token propagation, retries
of idempotent calls only, and the circuit breaker."""

import pytest

from datalab.core.discovery import StaticDiscovery
from datalab.core.logs import request_id_var
from datalab.core.service_client import ServiceClient, ServiceUnavailable
from datalab.devstack.servers import free_port

pytestmark = pytest.mark.integration


async def test_calls_data_with_token_and_request_id(platform, admin_tokens):
    client = ServiceClient(StaticDiscovery({"data": [platform.config.url("data")]}))
    rid = request_id_var.set("client-test-rid")
    try:
        resp = await client.request("data", "GET", "/api/v1/data/datasets", token=admin_tokens["access_token"])
    finally:
        request_id_var.reset(rid)
        await client.close()
    assert resp.status == 200 and "items" in resp.json()
    assert resp.headers["x-request-id"] == "client-test-rid"


async def test_retries_move_to_a_live_instance(platform):
    dead = f"http://127.0.0.1:{free_port()}"
    client = ServiceClient(StaticDiscovery({"data": [dead, platform.config.url("data")]}), retries=2, backoff=0)
    try:
        for _ in range(4):  # round robin hits the dead one half the time; GET is retried
            assert (await client.request("data", "GET", "/health")).status == 200
    finally:
        await client.close()


async def test_post_is_not_retried(platform):
    dead = f"http://127.0.0.1:{free_port()}"
    client = ServiceClient(StaticDiscovery({"data": [dead, platform.config.url("data")]}), retries=2, backoff=0)
    try:
        outcomes = []
        for _ in range(2):
            try:
                outcomes.append((await client.request("data", "POST", "/health")).status)
            except ServiceUnavailable:
                outcomes.append("unavailable")
        assert "unavailable" in outcomes  # the POST that met the dead instance was not replayed
    finally:
        await client.close()


async def test_breaker_opens_after_repeated_failures():
    dead = f"http://127.0.0.1:{free_port()}"
    client = ServiceClient(StaticDiscovery({"x": [dead]}), retries=0, breaker_threshold=3, breaker_ttl=60)
    try:
        errors = []
        for _ in range(5):
            with pytest.raises(ServiceUnavailable) as err:
                await client.request("x", "GET", "/health")
            errors.append(str(err.value))
        assert "open" not in errors[0].lower()
        assert "is open" in errors[-1]  # refused without a connection attempt
    finally:
        await client.close()


async def test_unknown_service_is_unavailable():
    client = ServiceClient(StaticDiscovery({}))
    with pytest.raises(ServiceUnavailable, match="no instance"):
        await client.request("nothing-here", "GET", "/")
    await client.close()


async def test_service_identity_exchanges_the_platform_key_for_a_jwt(platform, http, admin_headers):
    from datalab.core.identity import ServiceIdentity
    from datalab.core.secret_files import SecretStore

    client = ServiceClient(StaticDiscovery({n: [platform.config.url(n)] for n in platform.config.service_ports}))
    identity = ServiceIdentity(SecretStore(platform.secrets_dir), client)
    try:
        token = await identity.token()
        assert await identity.token() == token  # cached
        # The service account reads any user's dataset (workers act for many users).
        created = http.post("/api/v1/data/datasets", headers=admin_headers,
                            files={"file": ("s.csv", b"a,b\n1,2\n", "text/csv")}).json()
        resp = await client.request("data", "GET", f"/api/v1/data/datasets/{created['id']}", token=token)
        assert resp.status == 200
    finally:
        await client.close()
    # ... but the service account cannot log in with a password.
    assert http.post("/api/v1/auth/token", data={"username": "svc-datalab", "password": ""}).status_code in (401, 422)
