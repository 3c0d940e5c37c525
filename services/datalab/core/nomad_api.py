"""A python-nomad client configured the way the `nomad` CLI is, from its environment:
NOMAD_ADDR, NOMAD_TOKEN, NOMAD_CACERT (else NOMAD_CAPATH), NOMAD_CLIENT_CERT/KEY,
NOMAD_SKIP_VERIFY, NOMAD_TLS_SERVER_NAME (NOMAD_NAMESPACE and NOMAD_REGION python-nomad reads
itself). Used by `datalab deploy`/`status`/`cluster-test` and by compute to dispatch
compute-batch; `access_error` turns a failed call into the one line saying what to set."""

from __future__ import annotations

import os
from dataclasses import dataclass

import nomad

from .hashicorp_http import NOMAD, ClusterAccessError, go_bool, skipping_verify, tls_session
from .hashicorp_http import access_error as _access_error

DEFAULT_ADDR = "http://127.0.0.1:4646"


@dataclass(frozen=True)
class NomadEnv:
    address: str
    token: str | None = None
    cacert: str | None = None  # a file (NOMAD_CACERT) or a directory (NOMAD_CAPATH)
    client_cert: str | None = None
    client_key: str | None = None
    skip_verify: bool = False
    tls_server_name: str | None = None

    @classmethod
    def from_env(cls, address: str | None = None, token: str | None = None) -> NomadEnv:
        """What the CLI would use; an explicit address or token wins over the environment."""
        env = os.environ.get
        return cls(
            address=(address or env("NOMAD_ADDR") or DEFAULT_ADDR).rstrip("/"),
            token=token or env("NOMAD_TOKEN") or None,
            cacert=env("NOMAD_CACERT") or env("NOMAD_CAPATH") or None,
            client_cert=env("NOMAD_CLIENT_CERT") or None,
            client_key=env("NOMAD_CLIENT_KEY") or None,
            skip_verify=bool(go_bool(env("NOMAD_SKIP_VERIFY"))),
            tls_server_name=env("NOMAD_TLS_SERVER_NAME") or None,
        )

    @property
    def verify(self) -> bool | str:
        """requests' `verify`: the CA given, else the system's; off only by NOMAD_SKIP_VERIFY."""
        return False if self.skip_verify else (self.cacert or True)

    def client(self, timeout: int = 30) -> nomad.Nomad:
        if self.skip_verify:
            skipping_verify()
        return nomad.Nomad(
            # The whole URL: python-nomad would otherwise take NOMAD_ADDR over an explicit one.
            address=self.address,
            token=self.token,
            timeout=timeout,
            verify=self.verify,
            cert=(self.client_cert, self.client_key) if self.client_cert and self.client_key else (),
            session=tls_session(self.tls_server_name),
        )

    def access_error(self, exc: BaseException) -> ClusterAccessError | None:
        return _access_error(exc, NOMAD, self.address, bool(self.token))


def nomad_client(address: str | None = None, token: str | None = None) -> nomad.Nomad:
    return NomadEnv.from_env(address, token).client()


def access_error(exc: BaseException, api: nomad.Nomad) -> ClusterAccessError | None:
    """The one line for a call by `api` that could not be made (unreachable, TLS, ACL); None
    for any other failure."""
    return _access_error(exc, NOMAD, str(api.address or DEFAULT_ADDR), bool(api.token))
