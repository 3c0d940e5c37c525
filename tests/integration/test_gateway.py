"""Gateway on real PostgreSQL and Redis, reached through Traefik."""

import time

import httpx
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
    bearer = {"Authorization": f"Bearer {first.json()['access_token']}"}
    assert http.get("/api/v1/auth/me", headers=bearer).status_code == 200
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
    # From 127.0.0.1, a trusted proxy's address (as Traefik is).
    resp = httpx.get(f"{platform.config.url('gateway')}/internal/auth/verify", headers=admin_headers)
    assert resp.status_code == 200
    assert resp.headers["X-User-Name"] == "admin"
    assert resp.headers["Authorization"] == admin_headers["Authorization"]


# -- tokens stay inside, revocation lands in seconds, bad input, foreign tokens, audit -------

def _from(address: str, base_url: str) -> httpx.Client:
    """A client from another loopback address (Linux routes 127/8 to lo): not 127.0.0.1,
    which the gateway trusts as Traefik's address."""
    return httpx.Client(base_url=base_url, transport=httpx.HTTPTransport(local_address=address), timeout=30)


def _new_key(http, headers, name: str) -> dict:
    created = http.post("/api/v1/auth/api-keys", json={"name": name}, headers=headers)
    assert created.status_code == 201, created.text
    return created.json()


def _no_token(resp: httpx.Response) -> None:
    assert resp.status_code >= 400, (resp.request.url, resp.status_code)
    assert "authorization" not in resp.headers
    assert "eyJ" not in resp.text  # no JWT in the body either


def test_a_client_calling_verify_with_an_api_key_gets_no_token(http, platform, user_factory):
    _, _, headers = user_factory("nosy")
    key = {"X-API-Key": _new_key(http, headers, "nosy")["key"]}
    paths = ("/api/v1/auth/verify", "/internal/auth/verify", "/internal/auth/service-token")
    for path in paths:  # through Traefik: no public route leads there
        _no_token(http.get(path, headers=key))
    with _from("127.0.0.2", platform.config.url("gateway")) as direct:  # straight, not from Traefik
        for path in paths:
            _no_token(direct.get(path, headers=key))
    # Not even from a trusted address: a user's key is exchanged by forwardAuth only.
    _no_token(httpx.get(f"{platform.config.url('gateway')}/internal/auth/service-token", headers=key))
    # ... and it works where it should, the token going upstream only.
    assert http.get("/api/v1/data/datasets", headers=key).status_code == 200


def test_the_platform_service_key_gets_a_short_lived_token(platform):
    key = (platform.secrets_dir / "service_api_key").read_text().strip()
    resp = httpx.get(f"{platform.config.url('gateway')}/internal/auth/service-token", headers={"X-API-Key": key})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert 0 < body["expires_in"] <= 60
    data = httpx.get(f"{platform.config.url('data')}/api/v1/data/datasets",
                     headers={"Authorization": f"Bearer {body['access_token']}"})
    assert data.status_code == 200, data.text


def test_a_revoked_key_and_tokens_derived_from_it_stop_within_seconds(http, platform, user_factory):
    _, _, headers = user_factory("revoker")
    created = _new_key(http, headers, "soon-revoked")
    key = {"X-API-Key": created["key"]}
    assert http.get("/api/v1/data/datasets", headers=key).status_code == 200  # the cache is warm
    # What forwardAuth hands upstream for this key (asked from 127.0.0.1, as Traefik does).
    minted = httpx.get(f"{platform.config.url('gateway')}/internal/auth/verify", headers=key)
    assert minted.status_code == 200, minted.text
    derived = {"Authorization": minted.headers["Authorization"]}
    data = f"{platform.config.url('data')}/api/v1/data/datasets"
    assert httpx.get(data, headers=derived).status_code == 200

    assert http.delete(f"/api/v1/auth/api-keys/{created['id']}", headers=headers).status_code == 204
    deadline = time.monotonic() + 30  # bounded poll: what matters is that both stop
    while True:
        statuses = (http.get("/api/v1/data/datasets", headers=key).status_code,
                    httpx.get(data, headers=derived).status_code)
        if statuses == (401, 401) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert statuses == (401, 401), f"(key, derived token) still answered {statuses} after revocation"


@pytest.mark.parametrize("path, body", [
    ("/api/v1/auth/users", {"username": "nul\x00user", "password": "long-enough"}),
    ("/api/v1/auth/users", {"username": "nulpass", "password": "long\x00enough"}),
    ("/api/v1/auth/api-keys", {"name": "with\x00nul"}),
])
def test_nul_in_json_input_is_422(http, admin_headers, path, body):
    resp = http.post(path, json=body, headers=admin_headers)
    assert resp.status_code == 422, resp.text
    assert resp.headers["content-type"] == "application/problem+json"
    assert "long" not in resp.text  # the password is not echoed


@pytest.mark.parametrize("form", [
    {"username": "ad\x00min", "password": "admin-test-password"},
    {"username": "admin", "password": "admin-test\x00password"},
])
def test_nul_in_login_is_422(http, form):
    resp = http.post("/api/v1/auth/token", data=form)
    assert resp.status_code == 422, resp.text
    assert resp.headers["content-type"] == "application/problem+json"
    assert "admin-test" not in resp.text


@pytest.mark.parametrize("issuer, audience, expected", [
    ("datalab-gateway", "datalab", 200),  # the real thing: the others differ in one claim
    ("someone-else", "datalab", 401),
    ("datalab-gateway", "another-audience", 401),
])
def test_tokens_with_a_foreign_issuer_or_audience_are_refused(
    http, platform, admin_headers, issuer, audience, expected
):
    from datalab.core.auth import Principal, TokenIssuer
    from datalab.core.secret_files import SecretStore

    me = http.get("/api/v1/auth/me", headers=admin_headers).json()
    # Signed with the platform's real Ed25519 key: only the claim is foreign.
    token, _ = TokenIssuer(SecretStore(platform.secrets_dir), issuer, audience).mint(
        Principal(user_id=me["id"], username="admin", is_admin=True), "access", 300)
    bearer = {"Authorization": f"Bearer {token}"}
    at_service = httpx.get(f"{platform.config.url('data')}/api/v1/data/datasets", headers=bearer)
    at_forward_auth = http.get("/api/v1/data/datasets", headers=bearer)
    assert (at_service.status_code, at_forward_auth.status_code) == (expected, expected)


def test_audit_trail_of_logins_refreshes_users_and_api_keys(platform, admin_headers):
    import json
    import uuid

    from conftest import eventually

    run = uuid.uuid4().hex[:8]
    name, password = f"audited{run}", f"audited-{run}-password"
    address = "127.0.0.7"

    def rid(step: str) -> dict:
        return {"X-Request-Id": f"audit-{run}-{step}"}

    with _from(address, platform.base_url) as http:
        assert http.post("/api/v1/auth/users", json={"username": name, "password": password},
                         headers={**admin_headers, **rid("user")}).status_code == 201
        assert http.post("/api/v1/auth/token", data={"username": name, "password": "wrong-password"},
                         headers=rid("login-bad")).status_code == 401
        tokens = http.post("/api/v1/auth/token", data={"username": name, "password": password},
                           headers=rid("login")).json()
        tokens = http.post("/api/v1/auth/refresh", json={"refresh_token": tokens["refresh_token"]},
                           headers=rid("refresh")).json()
        auth = {"Authorization": f"Bearer {tokens['access_token']}"}
        key = http.post("/api/v1/auth/api-keys", json={"name": "audited"}, headers={**auth, **rid("key")}).json()
        for n in (1, 2):
            headers = {"X-API-Key": key["key"], **rid(f"use{n}")}
            assert http.get("/api/v1/data/datasets", headers=headers).status_code == 200
        assert http.delete(f"/api/v1/auth/api-keys/{key['id']}", headers={**auth, **rid("revoke")}).status_code == 204

    log = platform.logs / "gateway.log"

    def ours() -> list[dict]:
        return [r for r in (json.loads(line) for line in log.read_text().splitlines() if line.startswith("{"))
                if r.get("audit") is True and str(r.get("request_id", "")).startswith(f"audit-{run}-")]

    expected = {
        "user": ("user.create", "success", "admin"),
        "login-bad": ("login", "failure", name),
        "login": ("login", "success", name),
        "refresh": ("token.refresh", "success", name),
        "key": ("api_key.create", "success", name),
        "use1": ("api_key.first_use", "success", name),  # the first use only: none for use2
        "revoke": ("api_key.revoke", "success", name),
    }
    assert eventually(lambda: len(ours()) >= len(expected))
    lines = ours()
    got = {r["request_id"].removeprefix(f"audit-{run}-"): (r["action"], r["outcome"], r["actor"]) for r in lines}
    assert got == expected and len(lines) == len(expected)
    for r in lines:
        assert r["client_ip"] == address, r  # the real client, through Traefik
        assert r["object"]
    assert [r["object"] for r in lines if r["action"].startswith("api_key.")] == [f"api_key:{key['id']}"] * 3
    text = json.dumps(lines)
    for secret in (password, key["key"], tokens["access_token"], tokens["refresh_token"], "admin-test-password"):
        assert secret not in text
