"""Settings: one base for every service, read from the environment (prefix DATALAB_).

Nothing reads the environment at import time: a service builds its Settings in its app
factory, so tests and `datalab up` can set the environment first.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class BaseServiceSettings(BaseSettings):
    """What every service needs. A service subclasses it and adds its own fields."""

    model_config = SettingsConfigDict(env_prefix="DATALAB_", extra="ignore")

    host: str = "127.0.0.1"
    port: int = 8000
    home: Path = Path(".datalab")
    log_level: str = "INFO"

    # Secrets: a directory of files (Nomad renders them into the task's secrets/ dir;
    # `datalab up` writes them under DATALAB_HOME). Re-read on use, so rotations land.
    secrets_dir: Path | None = None

    # PostgreSQL: the URL carries no credentials; they come from the secrets dir
    # (db.json, re-read for every new connection) or from db_user/db_password in dev.
    database_url: str = "postgresql+asyncpg://127.0.0.1:5432/datalab"
    db_user: str | None = None
    db_password: str | None = None
    db_pool_size: int = 5
    # When PostgreSQL rejects the current credential (Vault revoked the lease), a new
    # connection waits this long for Nomad to render the next one into db.json.
    db_credential_wait_seconds: float = 30.0

    redis_url: str = "redis://127.0.0.1:6379/0"
    # This process's Redis ACL user, a file in the secrets dir: {"username", "password"}.
    redis_secret: str = "redis.json"

    # JWT: the gateway signs with an Ed25519 private key; every service verifies with the
    # public key, so no service but the gateway can mint a token.
    jwt_issuer: str = "datalab-gateway"
    jwt_audience: str = "datalab"

    # Discovery of the other services: a static table, or Consul's passing instances.
    discovery: Literal["static", "consul"] = "static"
    # {"data": ["http://127.0.0.1:8001"], ...}; missing names fall back to
    # core.services.SERVICE_PORTS.
    static_services: dict[str, list[str]] = Field(default_factory=dict)
    consul_addr: str = "http://127.0.0.1:8500"

    shutdown_grace_seconds: float = 10.0

    # Peers whose X-Forwarded-For is believed (IPs or CIDRs, comma-separated, as uvicorn's
    # forwarded_allow_ips): Traefik's addresses (core.proxy). The gateway's forwardAuth
    # answers only them.
    trusted_proxies: str = "127.0.0.1,::1"
    trusted_proxies_file: Path | None = None  # more of them, one file re-read (Nomad: from Consul)

    # Request bodies (core.middleware.BodyLimitMiddleware): any body up to max_body_bytes;
    # a service that takes uploads sets max_upload_bytes, which then governs multipart
    # bodies. A body whose next chunk takes longer than body_idle_timeout_seconds is a 408.
    max_body_bytes: int = Field(1024 * 1024, ge=0)
    max_upload_bytes: int | None = Field(None, ge=0)
    body_idle_timeout_seconds: float = Field(30.0, gt=0)


def ensure_dir(path: Path, mode: int = 0o750) -> Path:
    path.mkdir(parents=True, exist_ok=True, mode=mode)
    return path
