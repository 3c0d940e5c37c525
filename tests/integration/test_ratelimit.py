"""Rate limits through real Traefik, from distinct client addresses, in both topologies.

The session platform's limits are far too high to reach (every test logs in from
127.0.0.1), so this module runs its own small platform (gateway and data) with low limits.
Clients take distinct loopback source addresses (127.0.0.x: Linux routes all of 127/8 to
lo), so each is a distinct client to Traefik; the gateway trusts 127.0.0.1 alone (where
Traefik connects from), so a client that reaches the gateway straight is not believed
about its X-Forwarded-For.

Topologies: the embedded platform's own Traefik (forwardAuth straight to the gateway), and
a second Traefik configured from jobs/traefik.nomad.hcl's templates with the routers the
gateway and data jobs declare in their Consul tags (forwardAuth through Traefik's own
loopback `auth` entrypoint) in front of the same gateway.
"""

from __future__ import annotations

import itertools
import os
import re
import shutil
import tempfile
import textwrap
from pathlib import Path

import httpx
import pytest
import redis.asyncio as redis
import yaml

from datalab.devstack.local_stack import Platform, PlatformConfig
from datalab.devstack.servers import Process, free_ports, traefik_binary, wait_until
from datalab.gateway.ratelimit import RateLimiter
from hcl_plain import load_hcl

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
LOGIN_LIMIT = 4
IP_LIMIT = 6
ADMIN_PASSWORD = "admin-limits-password"
# Enough requests to hit a limit even when the minute turns once mid-test (fixed windows).
BOUND = 2 * max(LOGIN_LIMIT, IP_LIMIT) + 2
_addresses = (f"127.0.0.{n}" for n in itertools.count(10))


def new_address() -> str:
    """A loopback address no other test here used: a fresh client."""
    return next(_addresses)


def client_from(address: str, base_url: str) -> httpx.Client:
    # verify=False: the Nomad config's websecure entrypoint serves Traefik's default certificate.
    transport = httpx.HTTPTransport(local_address=address, verify=False)
    return httpx.Client(base_url=base_url, transport=transport, timeout=30)


@pytest.fixture(scope="module")
def limited():
    """A platform (gateway, data) with low per-IP limits."""
    home = Path(tempfile.mkdtemp(prefix="datalab-limits-"))
    os.chmod(home, 0o755)
    config = PlatformConfig.on_free_ports(
        home, ["gateway", "data"], admin_password=ADMIN_PASSWORD,
        extra_env={"DATALAB_LOGIN_LIMIT_PER_MINUTE": str(LOGIN_LIMIT),
                   "DATALAB_RATE_LIMIT_IP_PER_MINUTE": str(IP_LIMIT)},
    )
    p = Platform(config)
    p.start()
    try:
        yield p
    finally:
        p.stop()
        shutil.rmtree(home, ignore_errors=True)


@pytest.fixture(scope="module")
def admin_token(limited) -> str:
    with client_from(new_address(), limited.base_url) as http:
        resp = http.post("/api/v1/auth/token", data={"username": "admin", "password": ADMIN_PASSWORD})
        assert resp.status_code == 200, resp.text
        return resp.json()["access_token"]


# -- the Nomad topology: Traefik configured from the traefik job's templates ----------------

def _heredoc(data: str) -> str:
    body = data.split("\n", 1)[1].rsplit("\n", 1)[0]  # drop `<<-EOT` and `EOT`
    return textwrap.dedent(body)


def _job_tags(job_file: str) -> tuple[str, list[str]]:
    (job,) = load_hcl((ROOT / "jobs" / job_file).read_text())["job"][0].values()
    (group,) = job["group"][0].values()
    service = group["service"][0]
    return service["name"], service["tags"]


def _routers_from_tags(service: str, tags: list[str]) -> dict:
    """What Traefik's Consul Catalog provider makes of a job's tags (routers only)."""
    routers: dict[str, dict] = {}
    for tag in tags:
        m = re.fullmatch(r"traefik\.http\.routers\.([^.]+)\.(\w+)=(.*)", tag)
        if not m:
            continue
        name, field, value = m.groups()
        router = routers.setdefault(name, {"service": service})
        key = {"entrypoints": "entryPoints"}.get(field, field)
        router[key] = value.split(",") if key in ("middlewares", "entryPoints") else value
        if key == "priority":
            router[key] = int(value)
    return routers


def nomad_traefik_configs(root: Path, urls: dict[str, str], ports: dict[str, int]) -> Path:
    """The traefik job's two templates, rendered as Nomad would (ports, task dir), Consul's
    catalog replaced by the same routers in the file provider, every entrypoint on loopback."""
    (job,) = load_hcl((ROOT / "jobs" / "traefik.nomad.hcl").read_text())["job"][0].values()
    (task,) = job["group"][0]["traefik"]["task"][0].values()
    templates = {t["destination"]: _heredoc(t["data"]) for t in task["template"]}

    # raw_exec's web entrypoint (plain HTTP, routers join it), as make e2e runs it.
    values = {**ports, "web_role": "asDefault: true"}

    def render(text: str) -> str:
        text = re.sub(r"\$\{local\.(\w+)\}", lambda m: str(values[m.group(1)]), text)
        text = re.sub(r"\$\{split\([^}]*\}", "consul-unused", text)
        return text.replace('{{ env "CONSUL_HTTP_TOKEN" }}', "").replace('{{ env "NOMAD_SECRETS_DIR" }}', str(root))

    static = yaml.safe_load(render(templates["secrets/traefik.yml"]))
    # The dynamic file wraps everything in the edge certificate's `with pkiCert` (no Vault
    # here): without that block, and without the certificate (websecure is not used here).
    body = templates["secrets/dynamic.yml"].strip().splitlines()
    assert body[0].startswith("{{- with pkiCert ") and body[-1].strip() == "{{- end }}"
    body_text = "\n".join(body[1:-1]).replace("{{ .Cert | toJSON }}", '""').replace("{{ .Key | toJSON }}", '""')
    dynamic = yaml.safe_load(render(body_text))
    del dynamic["tls"]
    del static["providers"]["consulCatalog"]  # no Consul here: its routers go to the file below
    for entry in static["entryPoints"].values():
        if entry["address"].startswith(":"):
            entry["address"] = "127.0.0.1" + entry["address"]
    routers, services = {}, {}
    for job_file in ("gateway.nomad.hcl", "data.nomad.hcl"):
        service, tags = _job_tags(job_file)
        routers.update(_routers_from_tags(service, tags))
        services[service] = {"loadBalancer": {"servers": [{"url": urls[service]}]}}
    dynamic["http"]["routers"] = routers
    dynamic["http"]["services"] = services
    (root / "dynamic.yml").write_text(yaml.safe_dump(dynamic))
    static["providers"]["file"]["filename"] = str(root / "dynamic.yml")
    (root / "traefik.yml").write_text(yaml.safe_dump(static))
    return root / "traefik.yml"


@pytest.fixture(scope="module")
def nomad_edge(limited) -> str:
    """Base URL (websecure) of a Traefik run as the traefik job configures it."""
    root = limited.config.home / "nomad-traefik"
    root.mkdir()
    http, https, ping, auth = free_ports(4)
    ports = {"http_port": http, "https_port": https, "ping_port": ping, "auth_port": auth}
    static = nomad_traefik_configs(root, {n: limited.config.url(n) for n in ("gateway", "data")}, ports)
    proc = Process("traefik-nomad", [traefik_binary(), f"--configFile={static}"], limited.logs / "traefik-nomad.log")
    proc.start()
    base = f"https://127.0.0.1:{https}"
    try:
        def routed() -> bool:
            try:
                return httpx.get(f"{base}/api/v1/auth/me", verify=False, timeout=2).status_code == 401
            except httpx.HTTPError:
                return False

        wait_until(routed, 30, proc, "routing")
        yield base
    finally:
        proc.stop()


# -- the tests --------------------------------------------------------------------------------

def _until_429(send) -> httpx.Response:
    for _ in range(BOUND):
        resp = send()
        if resp.status_code == 429:
            return resp
        assert resp.status_code in (200, 401), resp.text
    pytest.fail(f"no 429 in {BOUND} requests")


def _assert_too_many(resp: httpx.Response) -> None:
    assert resp.status_code == 429
    assert 1 <= int(resp.headers["Retry-After"]) <= 61
    assert resp.headers["content-type"] == "application/problem+json"


def test_login_limit_per_client_ip_through_traefik(limited):
    with client_from(new_address(), limited.base_url) as attacker:
        _assert_too_many(_until_429(lambda: attacker.post(
            "/api/v1/auth/token", data={"username": "admin", "password": "wrong-password"})))
    with client_from(new_address(), limited.base_url) as other:  # another client is not limited
        resp = other.post("/api/v1/auth/token", data={"username": "admin", "password": ADMIN_PASSWORD})
        assert resp.status_code == 200, resp.text


@pytest.mark.parametrize("topology", ["embedded", "nomad"])
def test_forwardauth_ip_limit_per_client_ip(request, limited, admin_token, topology):
    base = limited.base_url if topology == "embedded" else request.getfixturevalue("nomad_edge")
    auth = {"Authorization": f"Bearer {admin_token}"}
    with client_from(new_address(), base) as busy:
        first = busy.get("/api/v1/data/datasets", headers=auth)
        assert first.status_code == 200, first.text
        _assert_too_many(_until_429(lambda: busy.get("/api/v1/data/datasets", headers=auth)))
    # The limit was that client's alone: the gateway saw each client's own address.
    with client_from(new_address(), base) as other:
        resp = other.get("/api/v1/data/datasets", headers=auth)
        assert resp.status_code == 200, resp.text


def test_nomad_forwardauth_sees_the_real_client_in_the_audit_trail(limited, admin_token, nomad_edge):
    import json

    address = new_address()
    auth = {"Authorization": f"Bearer {admin_token}"}
    with client_from(address, nomad_edge) as http:
        key = http.post("/api/v1/auth/api-keys", json={"name": "nomad-edge"}, headers=auth).json()
        assert http.get("/api/v1/data/datasets", headers={"X-API-Key": key["key"]}).status_code == 200
    lines = [json.loads(line) for line in (limited.logs / "gateway.log").read_text().splitlines()
             if line.startswith("{") and '"audit": true' in line]
    (used,) = [r for r in lines if r["action"] == "api_key.first_use" and r["object"] == f"api_key:{key['id']}"]
    assert used["client_ip"] == address  # through forwardAuth's own hop, not Traefik's 127.0.0.1


@pytest.mark.parametrize("topology", ["embedded", "nomad"])
def test_every_service_audits_the_real_client(request, limited, admin_token, topology):
    """Not the gateway alone: data's audit line for a refused access names the client's
    address (Traefik, a trusted proxy, sent it in X-Forwarded-For), not Traefik's 127.0.0.1."""
    import json

    base = limited.base_url if topology == "embedded" else request.getfixturevalue("nomad_edge")
    admin = {"Authorization": f"Bearer {admin_token}"}
    name, password = f"peer-{topology}", "peer-password-1"
    with client_from(new_address(), base) as http:
        created = http.post("/api/v1/auth/users", json={"username": name, "password": password}, headers=admin)
        assert created.status_code == 201, created.text
        token = http.post("/api/v1/auth/token", data={"username": name, "password": password}).json()["access_token"]
        upload = http.post("/api/v1/data/datasets", headers=admin, files={"file": ("a.csv", b"a\n1\n", "text/csv")})
        dataset = upload.json()["id"]
    address = new_address()
    with client_from(address, base) as http:  # another user's dataset: a 404, audited as denied
        resp = http.get(f"/api/v1/data/datasets/{dataset}", headers={"Authorization": f"Bearer {token}"})
        assert resp.status_code == 404, resp.text
    lines = [json.loads(line) for line in (limited.logs / "data.log").read_text().splitlines()
             if line.startswith("{") and '"audit": true' in line]
    (denied,) = [r for r in lines if r["action"] == "dataset.access" and r["object"] == dataset]
    assert denied["outcome"] == "denied" and denied["client_ip"] == address


def test_rotating_x_forwarded_for_straight_to_the_gateway_is_one_client(limited):
    """The gateway is reachable without Traefik (Nomad binds it to the node's address):
    a client's own X-Forwarded-For must not make it many clients."""
    fake = (f"203.0.113.{n}" for n in itertools.count(1))
    with client_from(new_address(), limited.config.url("gateway")) as direct:
        _assert_too_many(_until_429(lambda: direct.post(
            "/api/v1/auth/token", data={"username": "admin", "password": "wrong-password"},
            headers={"X-Forwarded-For": next(fake)})))


def test_forwardauth_answers_trusted_proxies_only(limited, admin_token):
    with client_from(new_address(), limited.config.url("gateway")) as direct:
        resp = direct.get("/internal/auth/verify", headers={"Authorization": f"Bearer {admin_token}"})
        assert resp.status_code == 403 and "authorization" not in resp.headers
        old = direct.get("/api/v1/auth/verify", headers={"Authorization": f"Bearer {admin_token}"})
        assert old.status_code == 404 and "authorization" not in old.headers  # no verify there either


async def test_limiter_allows_up_to_the_limit_then_refuses(limited):
    # As the gateway's own ACL user: the limiter's commands and keys are within its rights.
    client = redis.Redis(port=limited.config.redis_port, username="gateway",
                         password=limited.redis.passwords["gateway"])
    limiter = RateLimiter(client, window_seconds=60)
    verdicts = [await limiter.hit("test", "k1", 3) for _ in range(5)]
    assert [v.allowed for v in verdicts] == [True, True, True, False, False]
    assert 1 <= verdicts[-1].retry_after <= 60
    assert (await limiter.hit("test", "k2", 3)).allowed  # keys are independent
    assert (await limiter.hit("test", "k1", 0)).allowed  # 0 disables
    await client.aclose()
