"""The gateway's settings (environment, prefix DATALAB_): token lifetimes, rate limits, and
the two accounts it creates on first start."""

from __future__ import annotations

from datalab.core.settings import BaseServiceSettings


class GatewaySettings(BaseServiceSettings):
    port: int = 8000
    access_token_ttl: int = 900
    refresh_token_ttl: int = 7 * 24 * 3600
    # The JWT minted for an API-key call (forwardAuth, service token): it bounds how long a
    # token derived from a revoked key can live upstream, so seconds, not minutes.
    internal_token_ttl: int = 15
    api_key_cache_ttl: int = 300  # revocation overwrites the entry at once (key_cache)
    rate_limit_user_per_minute: int = 600
    rate_limit_ip_per_minute: int = 1200
    login_limit_per_minute: int = 30
    admin_user: str = "admin"
    service_account: str = "svc-datalab"
