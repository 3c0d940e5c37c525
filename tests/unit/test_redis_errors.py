"""A Redis failure a route does not handle itself (Redis full under noeviction, down, or an
ACL refusal) is a 503 problem with Retry-After, never a 500, and names no internals."""

import httpx
import pytest
from fastapi import FastAPI
from redis.exceptions import ConnectionError, NoPermissionError, OutOfMemoryError

from datalab.core.errors import install_error_handlers


@pytest.mark.parametrize("exc", [
    OutOfMemoryError("command not allowed when used memory > 'maxmemory'."),
    ConnectionError("Error 111 connecting to 10.0.0.7:6379. Connection refused."),
    NoPermissionError("User viz has no permissions to run the 'get' command"),
])
async def test_redis_errors_are_503_problems(exc):
    app = FastAPI()
    install_error_handlers(app)

    @app.get("/boom")
    async def boom():
        raise exc

    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app, raise_app_exceptions=False),
                                 base_url="http://t") as client:
        resp = await client.get("/boom")
    assert resp.status_code == 503
    assert resp.headers["content-type"] == "application/problem+json"
    assert resp.headers["Retry-After"] == "5"
    assert str(exc) not in resp.text and "6379" not in resp.text
