"""Secrets from a directory of files.

One layout for every way DataLab runs: Nomad `template` blocks render Vault's KV secrets
and `database/creds/<service>` into the task's `secrets/` dir; `datalab up`
(devstack.local_stack) writes the same files under DATALAB_HOME. Files are read on every call (they are tiny), so a
re-rendered credential is picked up by the next connection without a restart.

Files:
  jwt_private_key.pem   gateway only
  jwt_public_key.pem    every service
  db.json               {"username": ..., "password": ...}
  redis.json            {"username": ..., "password": ...}: the process's own Redis ACL user
                        (core/cache.py; embedded: redis-<user>.json, named by DATALAB_REDIS_SECRET)
  admin_password        gateway, first start only
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path


class SecretMissing(RuntimeError):
    """A secret the service needs is not there. The message names the file, never a value."""


@dataclass(frozen=True)
class DbCredential:
    username: str
    password: str

    def __repr__(self) -> str:  # never print the password
        return f"DbCredential(username={self.username!r}, password=***)"


class SecretStore:
    def __init__(self, directory: Path | None):
        self.directory = directory

    def path(self, name: str) -> Path | None:
        return self.directory / name if self.directory else None

    def read(self, name: str) -> str | None:
        path = self.path(name)
        if path is None:
            return None
        try:
            return path.read_text().strip()
        except FileNotFoundError:
            return None

    def require(self, name: str) -> str:
        value = self.read(name)
        if not value:
            raise SecretMissing(f"secret {name!r} not found in {self.directory}")
        return value

    def db_credential(self, user: str | None = None, password: str | None = None) -> DbCredential:
        """The current PostgreSQL credential: db.json when present, else the given pair."""
        raw = self.read("db.json")
        if raw:
            data = json.loads(raw)
            return DbCredential(data["username"], data["password"])
        if user is not None and password is not None:
            return DbCredential(user, password)
        raise SecretMissing(f"no database credential: db.json not found in {self.directory}")


def write_secret(path: Path, value: str) -> None:
    """Write a secret file readable by its owner only, atomically."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(value)
    os.replace(tmp, path)
