"""What every service exposes: /health, /ready, /metrics and JSON logs with request ids."""

import json

import httpx
import pytest

from conftest import eventually

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("service", ["gateway", "data"])
def test_health_ready_metrics(platform, service):
    url = platform.config.url(service)
    assert httpx.get(f"{url}/health").json() == {"status": "ok", "service": service}
    ready = httpx.get(f"{url}/ready").json()
    assert ready["status"] == "ready" and {"postgres", "redis"} <= set(ready["checks"])
    httpx.get(f"{url}/api/v1/{'auth/me' if service == 'gateway' else 'data/datasets'}")  # a 401, counted
    metrics = httpx.get(f"{url}/metrics").text
    assert 'datalab_http_requests_total{method="GET",route="/api/v1/' in metrics
    assert f'service="{service}",status="401"' in metrics
    assert "datalab_http_request_duration_seconds_bucket" in metrics


def test_logs_are_json_with_the_request_id(platform, http, admin_headers):
    http.get("/api/v1/data/datasets", headers={**admin_headers, "X-Request-ID": "trace-me-123"})
    def mine():
        lines = (platform.logs / "data.log").read_text().splitlines()
        return [e for e in map(json.loads, lines) if e.get("request_id") == "trace-me-123"]

    assert eventually(lambda: mine())
    mine = mine()
    assert mine[-1]["path"] == "/api/v1/data/datasets" and mine[-1]["service"] == "data"


def test_errors_never_carry_secrets(platform, http):
    secrets = [p.read_text().strip() for p in platform.secrets_dir.iterdir() if p.is_file()]
    resp = http.post("/api/v1/auth/token", data={"username": "admin", "password": "nope-nope"})
    for value in secrets:
        assert value not in resp.text
    logs = "".join(p.read_text() for p in platform.logs.glob("*.log"))
    assert (platform.secrets_dir / "db_password").read_text().strip() not in logs
    for password in platform.redis.passwords.values():  # every Redis ACL user's
        assert password not in logs and password not in resp.text
