"""Core pieces that need no server: secrets files, settings, packaging, Traefik config."""

import json
import stat
import tomllib
from pathlib import Path

from datalab.core.secret_files import SecretStore, write_secret
from datalab.core.settings import BaseServiceSettings
from datalab.devstack.local_stack import PlatformConfig, traefik_dynamic_config

ROOT = Path(__file__).resolve().parents[2]


def test_secret_files_are_owner_only(tmp_path):
    write_secret(tmp_path / "s" / "token", "value")
    mode = stat.S_IMODE((tmp_path / "s" / "token").stat().st_mode)
    assert mode == 0o600


def test_db_credential_is_reread_each_time(tmp_path):
    store = SecretStore(tmp_path)
    write_secret(tmp_path / "db.json", json.dumps({"username": "u1", "password": "p1"}))
    assert store.db_credential().username == "u1"
    write_secret(tmp_path / "db.json", json.dumps({"username": "u2", "password": "p2"}))
    cred = store.db_credential()
    assert (cred.username, cred.password) == ("u2", "p2")
    assert "p2" not in repr(cred)


def test_settings_come_from_the_environment(monkeypatch):
    monkeypatch.setenv("DATALAB_PORT", "9123")
    monkeypatch.setenv("DATALAB_STATIC_SERVICES", '{"data": ["http://h:1"]}')
    s = BaseServiceSettings()
    assert s.port == 9123 and s.static_services == {"data": ["http://h:1"]}


def test_every_module_folder_is_a_package_the_build_finds():
    # pyproject lets setuptools find the packages under services/: a folder of modules
    # without __init__.py would silently be left out of the wheel and the image.
    package = ROOT / "services" / "datalab"
    folders = {p.parent for p in package.rglob("*.py") if "__pycache__" not in p.parts}
    assert folders and all((f / "__init__.py").exists() for f in folders), folders
    assert "vault_policies/*.hcl" in tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"][
        "package-data"]["datalab.ops"]


def test_traefik_protects_every_route_but_login(tmp_path):
    config = PlatformConfig(home=tmp_path, services=["gateway", "data"])
    http = traefik_dynamic_config(config)["http"]
    assert "auth" not in http["routers"]["gateway"]["middlewares"]
    assert http["routers"]["data"]["middlewares"][0] == "auth"
    assert http["routers"]["data"]["rule"] == "PathPrefix(`/api/v1/data`)"
    fa = http["middlewares"]["auth"]["forwardAuth"]
    assert fa["address"].endswith("/internal/auth/verify")
    assert "Authorization" in fa["authResponseHeaders"]
