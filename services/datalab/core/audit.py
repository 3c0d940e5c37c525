"""The audit trail: one structured line per security-relevant action, apart from the
request log.

Lines go to the `datalab.audit` logger with `"audit": true`, so a log shipper (or a test)
can route them on their own. Fields: actor, action, object, outcome, client_ip, and the
request id the JSON formatter adds. Never pass a secret: the names of the fields that may
carry one are refused outright, so a careless call fails in tests instead of leaking.
"""

from __future__ import annotations

import logging
from typing import Any, Literal

from starlette.requests import Request

audit_log = logging.getLogger("datalab.audit")

Outcome = Literal["success", "failure", "denied"]
_FORBIDDEN = {"password", "token", "key", "api_key", "secret", "authorization", "access_token", "refresh_token"}


def client_ip(request: Request | None) -> str | None:
    """The client's address: every service's TrustedProxyMiddleware (core.proxy) rewrote the
    scope from X-Forwarded-For when the peer is a trusted proxy (Traefik), and only then."""
    if request is None or request.client is None:
        return None
    return request.client.host


def audit(
    action: str,
    outcome: Outcome,
    *,
    actor: str | None,
    object: str | None = None,
    request: Request | None = None,
    ip: str | None = None,
    **extra: Any,
) -> None:
    """Record one audit event, e.g. audit("login", "failure", actor="alice", request=req)."""
    leaked = _FORBIDDEN.intersection(k.lower() for k in extra)
    if leaked:
        raise ValueError(f"audit fields may not carry secrets: {sorted(leaked)}")
    audit_log.info(
        action,
        extra={
            "audit": True,
            "action": action,
            "outcome": outcome,
            "actor": actor,
            "object": object,
            "client_ip": ip if ip is not None else client_ip(request),
            **extra,
        },
    )
