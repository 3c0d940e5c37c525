"""A python-nomad client configured the way the `nomad` CLI is: NOMAD_ADDR, NOMAD_TOKEN,
NOMAD_CACERT, NOMAD_CLIENT_CERT/KEY. Used by `datalab deploy`/`status` and by compute to
dispatch compute-batch."""

from __future__ import annotations

import os
from urllib.parse import urlsplit

import nomad


def nomad_client(address: str | None = None, token: str | None = None) -> nomad.Nomad:
    parts = urlsplit(address or os.environ.get("NOMAD_ADDR", "http://127.0.0.1:4646"))
    return nomad.Nomad(
        host=parts.hostname or "127.0.0.1",
        port=parts.port or 4646,
        secure=parts.scheme == "https",
        token=token or os.environ.get("NOMAD_TOKEN"),
        timeout=30,
        verify=os.environ.get("NOMAD_CACERT") or False,
        # Nomad's own variables for mutual TLS (verify_https_client on the agents)
        cert=tuple(filter(None, (os.environ.get("NOMAD_CLIENT_CERT"), os.environ.get("NOMAD_CLIENT_KEY")))),
    )
