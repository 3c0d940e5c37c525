"""Gateway on real PostgreSQL and Redis, reached through Traefik."""

import time

import pytest

pytestmark = pytest.mark.integration


def test_login_with_a_wrong_password_is_401_problem(http):
    resp = http.post("/api/v1/auth/token", data={"username": "admin", "password": "wrong-password"})
    assert resp.status_code == 401
    assert resp.headers["content-type"] == "application/problem+json"
    assert "wrong-password" not in resp.text


def test_unknown_user_is_the_same_401(http):
    resp = http.post("/api/v1/auth/token", data={"username": "nobody", "password": "whatever-pass"})
    assert resp.status_code == 401
    assert resp.json()["detail"] == "Wrong user name or password."


def test_me_and_refresh_rotation(http, user_factory):
    name, password, _ = user_factory("rot")
    tokens = http.post("/api/v1/auth/token", data={"username": name, "password": password}).json()
    me = http.get("/api/v1/auth/me", headers={"Authorization": f"Bearer {tokens['access_token']}"})
    assert me.status_code == 200 and me.json()["username"] == name and me.json()["is_admin"] is False

    first = http.post("/api/v1/auth/refresh", json={"refresh_token": tokens["refresh_token"]})
    assert first.status_code == 200
    assert http.get("/api/v1/auth/me", headers={"Authorization": f"Bearer {first.json()['access_token']}"}).status_code == 200
    replay = http.post("/api/v1/auth/refresh", json={"refresh_token": tokens["refresh_token"]})
    assert replay.status_code == 401  # single use
    as_access = http.post("/api/v1/auth/refresh", json={"refresh_token": tokens["access_token"]})
    assert as_access.status_code == 401


def test_only_admins_create_users(http, user_factory):
    _, _, headers = user_factory("plain")
    resp = http.post("/api/v1/auth/users", json={"username": "sneaky", "password": "12345678"}, headers=headers)
    assert resp.status_code == 403


def test_duplicate_user_is_409(http, admin_headers):
    body = {"username": "dup-user", "password": "long-enough"}
    assert http.post("/api/v1/auth/users", json=body, headers=admin_headers).status_code == 201
    assert http.post("/api/v1/auth/users", json=body, headers=admin_headers).status_code == 409


def test_api_key_reaches_data_with_an_internal_jwt_and_revocation_stops_it(http, user_factory):
    _, _, headers = user_factory("machine")
    created = http.post("/api/v1/auth/api-keys", json={"name": "ci"}, headers=headers)
    assert created.status_code == 201
    key = created.json()["key"]
    listed = http.get("/api/v1/auth/api-keys", headers=headers).json()
    assert [k["name"] for k in listed] == ["ci"] and "key" not in listed[0]

    # Through Traefik: forwardAuth swaps the key for a short-lived JWT the data service verifies.
    ok = http.get("/api/v1/data/datasets", headers={"X-API-Key": key})
    assert ok.status_code == 200, ok.text

    assert http.get("/api/v1/data/datasets", headers={"X-API-Key": key[:-2] + "xx"}).status_code == 401
    assert http.delete(f"/api/v1/auth/api-keys/{created.json()['id']}", headers=headers).status_code == 204
    assert http.get("/api/v1/data/datasets", headers={"X-API-Key": key}).status_code == 401


def test_user_rate_limit_answers_429_with_retry_after(http, platform, user_factory):
    _, _, headers = user_factory("limited")
    me = http.get("/api/v1/auth/me", headers=headers).json()
    # Fill this user's current window in the real Redis, as 600 requests would.
    client = platform.redis.client()
    window = int(time.time()) // 60 * 60
    for w in (window, window + 60):  # in case the minute turns during the test
        client.set(f"dl:rl:user:{me['id']}:{w}", 10_000, ex=120)
    resp = http.get("/api/v1/data/datasets", headers=headers)
    assert resp.status_code == 429
    assert 1 <= int(resp.headers["Retry-After"]) <= 61
    assert resp.headers["content-type"] == "application/problem+json"


def test_verify_sets_identity_headers(platform, admin_headers):
    import httpx

    resp = httpx.get(f"{platform.config.url('gateway')}/api/v1/auth/verify", headers=admin_headers)
    assert resp.status_code == 200
    assert resp.headers["X-User-Name"] == "admin"
    assert resp.headers["Authorization"] == admin_headers["Authorization"]
