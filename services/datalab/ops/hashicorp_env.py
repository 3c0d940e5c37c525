"""Consul and Vault clients for the operator commands, configured from the environment the
`consul` and `vault` CLIs read (Nomad's is core/nomad_api.py, shared with compute).

Consul: CONSUL_HTTP_ADDR (host:port, or with http:// / https://), CONSUL_HTTP_SSL,
CONSUL_HTTP_TOKEN_FILE (wins over CONSUL_HTTP_TOKEN, as in Consul's API client),
CONSUL_CACERT (else CONSUL_CAPATH), CONSUL_CLIENT_CERT/KEY, CONSUL_HTTP_SSL_VERIFY,
CONSUL_TLS_SERVER_NAME.
Vault/OpenBao: VAULT_ADDR, VAULT_TOKEN, VAULT_CACERT (else VAULT_CAPATH),
VAULT_CLIENT_CERT/KEY, VAULT_SKIP_VERIFY, VAULT_TLS_SERVER_NAME.
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import consul
import hvac

from datalab.core.hashicorp_http import (
    CONSUL,
    VAULT,
    ClusterAccessError,
    access_error,
    go_bool,
    skipping_verify,
    tls_session,
)

CONSUL_DEFAULT_ADDR = "127.0.0.1:8500"
VAULT_DEFAULT_ADDR = "http://127.0.0.1:8200"


def _ssl_context(verify: bool | str, cert: tuple[str, str] | None) -> ssl.SSLContext:
    """The TLS settings as one context, for httpx (which takes no CA directory as `verify`)."""
    if verify is False:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    elif isinstance(verify, str):
        is_dir = Path(verify).is_dir()
        context = ssl.create_default_context(cafile=None if is_dir else verify, capath=verify if is_dir else None)
    else:
        context = ssl.create_default_context()
    if cert:
        context.load_cert_chain(*cert)
    return context


@dataclass(frozen=True)
class ConsulEnv:
    url: str  # scheme://host:port
    token: str | None = None
    verify: bool | str = True
    cert: tuple[str, str] | None = None
    tls_server_name: str | None = None

    @classmethod
    def from_env(cls, address: str | None = None) -> ConsulEnv:
        env = os.environ.get
        raw = (address or env("CONSUL_HTTP_ADDR") or CONSUL_DEFAULT_ADDR).rstrip("/")
        tls = bool(go_bool(env("CONSUL_HTTP_SSL")))
        scheme, _, hostport = raw.rpartition("://")
        # As Consul's client: https:// in the address turns TLS on, http:// never turns it off.
        scheme = "https" if tls or scheme == "https" else "http"
        token = env("CONSUL_HTTP_TOKEN") or None
        if token_file := env("CONSUL_HTTP_TOKEN_FILE"):
            try:
                token = Path(token_file).read_text().strip() or token
            except OSError as exc:
                raise ClusterAccessError(f"consul: cannot read CONSUL_HTTP_TOKEN_FILE {token_file} "
                                         f"({exc.strerror})") from None
        cacert = env("CONSUL_CACERT") or env("CONSUL_CAPATH") or None
        client_cert, client_key = env("CONSUL_CLIENT_CERT"), env("CONSUL_CLIENT_KEY")
        return cls(
            url=f"{scheme}://{hostport}",
            token=token,
            verify=False if go_bool(env("CONSUL_HTTP_SSL_VERIFY")) is False else (cacert or True),
            cert=(client_cert, client_key) if client_cert and client_key else None,
            tls_server_name=env("CONSUL_TLS_SERVER_NAME") or None,
        )

    def client(self) -> consul.Consul:
        if self.verify is False:
            skipping_verify()
        parts = urlsplit(self.url)
        c = consul.Consul(host=parts.hostname, port=parts.port or 8500, scheme=parts.scheme, verify=self.verify,
                          cert=self.cert)
        c.token = self.token  # py-consul would take CONSUL_HTTP_TOKEN over this one
        session = tls_session(self.tls_server_name)
        if session is not None:
            c.http.session = session  # the requests-based client's
        return c

    def ssl_context(self) -> ssl.SSLContext:
        return _ssl_context(self.verify, self.cert)

    def access_error(self, exc: BaseException) -> ClusterAccessError | None:
        return access_error(exc, CONSUL, self.url, bool(self.token))

    def filtered_error(self, headers: Mapping[str, str], empty: bool) -> ClusterAccessError | None:
        return acl_filtered_error(headers, empty, self.url, self.token)


def acl_filtered_error(headers: Mapping[str, str], empty: bool, url: str,
                       token: str | None) -> ClusterAccessError | None:
    """Consul with ACLs answers a token without read rights with an empty list, not a 403.
    An answer is taken as hidden when Consul says it filtered it (X-Consul-Results-Filtered-
    By-ACLs), or when it is empty, no token was given and the default policy is deny
    (X-Consul-Default-Acl-Policy): then this is the one line; else None."""
    filtered = str(headers.get("X-Consul-Results-Filtered-By-ACLs", "")).lower() == "true"
    anonymous_denied = not token and empty and str(headers.get("X-Consul-Default-Acl-Policy", "")).lower() == "deny"
    if not (filtered or anonymous_denied):
        return None
    which = "the token given" if token else "no token (anonymous, default policy deny)"
    return ClusterAccessError(f"consul: {url} hid results from {which}: set {CONSUL.token_var} to a token "
                              "with service:read and node:read", "denied")


@dataclass(frozen=True)
class VaultEnv:
    url: str
    token: str | None = None
    verify: bool | str = True
    cert: tuple[str, str] | None = None
    tls_server_name: str | None = None

    @classmethod
    def from_env(cls, address: str | None = None, token: str | None = None, cacert: str | None = None) -> VaultEnv:
        """An explicit address, token or CA (the commands' flags) wins over the environment."""
        env = os.environ.get
        client_cert, client_key = env("VAULT_CLIENT_CERT"), env("VAULT_CLIENT_KEY")
        ca = cacert or env("VAULT_CACERT") or env("VAULT_CAPATH") or None
        return cls(
            url=(address or env("VAULT_ADDR") or VAULT_DEFAULT_ADDR).rstrip("/"),
            token=token or env("VAULT_TOKEN") or None,
            verify=False if go_bool(env("VAULT_SKIP_VERIFY")) else (ca or True),
            cert=(client_cert, client_key) if client_cert and client_key else None,
            tls_server_name=env("VAULT_TLS_SERVER_NAME") or None,
        )

    def client(self) -> hvac.Client:
        if self.verify is False:
            skipping_verify()
        return hvac.Client(url=self.url, token=self.token, verify=self.verify, cert=self.cert,
                           session=tls_session(self.tls_server_name))

    def access_error(self, exc: BaseException) -> ClusterAccessError | None:
        return access_error(exc, VAULT, self.url, bool(self.token))
