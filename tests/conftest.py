"""Shared fixtures: one real platform (PostgreSQL, Redis, Traefik, services) per session.

It is the same `Platform` that `make up` runs, started on free ports in a temporary home.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

import httpx
import pytest

from datalab.devstack.local_stack import DEFAULT_SERVICES, Platform, PlatformConfig

MAX_UPLOAD = 1024 * 1024  # small, so the oversize test is quick
# Dataset caps low enough that a test can cross them within MAX_UPLOAD (test_data_security).
MAX_DATASET_ROWS = 200_000
MAX_DATASET_CELLS = 2_000_000
UPLOAD_IDLE_TIMEOUT = 3  # seconds: a stalled (upload) body is refused this fast
DECODE_MEMORY = 384 * 2**20  # the conversion child's limit: a bomb test stops there
MAX_DATASET_BYTES = 32 * 2**20  # decoded


@pytest.fixture(scope="session")
def platform():
    # Under /tmp with 0755: PostgreSQL runs as an unprivileged user and must reach its dir.
    home = Path(tempfile.mkdtemp(prefix="datalab-test-"))
    os.chmod(home, 0o755)
    # All services by default; DATALAB_TEST_SERVICES=gateway,data,viz narrows it while working on one.
    names = os.environ.get("DATALAB_TEST_SERVICES", ",".join(DEFAULT_SERVICES)).split(",")
    config = PlatformConfig.on_free_ports(
        home,
        names,
        admin_password="admin-test-password",
        extra_env={
            "DATALAB_MAX_UPLOAD_BYTES": str(MAX_UPLOAD),
            "DATALAB_MAX_DATASET_ROWS": str(MAX_DATASET_ROWS),
            "DATALAB_MAX_DATASET_CELLS": str(MAX_DATASET_CELLS),
            "DATALAB_BODY_IDLE_TIMEOUT_SECONDS": str(UPLOAD_IDLE_TIMEOUT),
            "DATALAB_DECODE_MEMORY_BYTES": str(DECODE_MEMORY),
            "DATALAB_MAX_DATASET_BYTES": str(MAX_DATASET_BYTES),
            # Every test logs in from 127.0.0.1; the per-IP login limit is tested in test_ratelimit.
            "DATALAB_LOGIN_LIMIT_PER_MINUTE": "100000",
        },
    )
    p = Platform(config)
    p.start()
    try:
        yield p
        # Every service ran as its own Redis ACL user: nothing it did was refused (a cache's
        # soft failure would hide a rule missing from core/redis_users.py).
        assert not p.redis.acl_denials(), f"Redis refused: {p.redis.acl_denials()}"
    finally:
        p.stop()
        shutil.rmtree(home, ignore_errors=True)


@pytest.fixture(scope="session")
def base_url(platform) -> str:
    return platform.base_url


@pytest.fixture(scope="session")
def http(base_url):
    with httpx.Client(base_url=base_url, timeout=30) as client:
        yield client


def login(http: httpx.Client, username: str, password: str) -> dict:
    resp = http.post("/api/v1/auth/token", data={"username": username, "password": password})
    assert resp.status_code == 200, resp.text
    return resp.json()


@pytest.fixture(scope="session")
def admin_tokens(http) -> dict:
    return login(http, "admin", "admin-test-password")


@pytest.fixture(scope="session")
def admin_headers(admin_tokens) -> dict:
    return {"Authorization": f"Bearer {admin_tokens['access_token']}"}


@pytest.fixture(scope="session")
def user_factory(http, admin_headers):
    """Create a fresh (non-admin) user; returns (username, password, auth headers)."""
    counter = iter(range(10_000))

    def make(prefix: str = "user"):
        name = f"{prefix}{next(counter)}"
        password = f"{name}-password"
        resp = http.post("/api/v1/auth/users", json={"username": name, "password": password}, headers=admin_headers)
        assert resp.status_code == 201, resp.text
        tokens = login(http, name, password)
        return name, password, {"Authorization": f"Bearer {tokens['access_token']}"}

    return make


def eventually(check, timeout=5.0):
    """Access lines are written just after the response is sent: give them a moment."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.05)
    return check()
