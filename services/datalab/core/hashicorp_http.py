"""What the HTTP clients of Nomad, Consul and Vault have in common, as their official CLIs
have it: Go's boolean syntax in the environment, a TLS server name other than the address's
host (`*_TLS_SERVER_NAME`), and one line saying why a call could not be made (the agent is
unreachable, TLS failed, the ACL token was refused) and what to set.

The clients themselves are built in one place per product: core/nomad_api.py (Nomad, used
by compute too), ops/hashicorp_env.py (Consul and Vault, for the operator commands).
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass

import httpx
import requests
import requests.adapters
import urllib3

_GO_TRUE = {"1", "t", "T", "TRUE", "true", "True"}
_GO_FALSE = {"0", "f", "F", "FALSE", "false", "False"}


def go_bool(value: str | None) -> bool | None:
    """A boolean as Go's strconv.ParseBool reads it (what the CLIs use); None when unset or
    not a boolean (the CLIs then ignore the variable)."""
    if value in _GO_TRUE:
        return True
    if value in _GO_FALSE:
        return False
    return None


class _ServerNameAdapter(requests.adapters.HTTPAdapter):
    """TLS to the address's host, but SNI and the certificate check for `server_name`."""

    def __init__(self, server_name: str):
        self.server_name = server_name
        super().__init__()

    def init_poolmanager(self, *args, **kwargs):
        kwargs["server_hostname"] = self.server_name
        kwargs["assert_hostname"] = self.server_name
        super().init_poolmanager(*args, **kwargs)


def tls_session(server_name: str | None) -> requests.Session | None:
    """A requests session checking the server's certificate against `server_name` (the
    `*_TLS_SERVER_NAME` variables); None without one (the client's own session will do)."""
    if not server_name:
        return None
    session = requests.Session()
    session.mount("https://", _ServerNameAdapter(server_name))
    return session


def skipping_verify() -> None:
    """The operator turned the certificate check off (`*_SKIP_VERIFY`): the CLIs say nothing
    more about it, so neither does urllib3 on every request."""
    urllib3.disable_warnings(urllib3.exceptions.InsecureRequestWarning)


@dataclass(frozen=True)
class Product:
    """The names an operator knows a product's settings by, for the one-line hints."""

    name: str  # "nomad"
    title: str  # "Nomad"
    address_var: str  # NOMAD_ADDR
    token_var: str  # NOMAD_TOKEN
    cacert_var: str  # NOMAD_CACERT
    client_cert_vars: str  # "NOMAD_CLIENT_CERT/NOMAD_CLIENT_KEY"
    server_name_var: str  # NOMAD_TLS_SERVER_NAME


NOMAD = Product("nomad", "Nomad", "NOMAD_ADDR", "NOMAD_TOKEN", "NOMAD_CACERT", "NOMAD_CLIENT_CERT/NOMAD_CLIENT_KEY",
                "NOMAD_TLS_SERVER_NAME")
CONSUL = Product("consul", "Consul", "CONSUL_HTTP_ADDR", "CONSUL_HTTP_TOKEN (or CONSUL_HTTP_TOKEN_FILE)",
                 "CONSUL_CACERT", "CONSUL_CLIENT_CERT/CONSUL_CLIENT_KEY", "CONSUL_TLS_SERVER_NAME")
VAULT = Product("vault", "Vault", "VAULT_ADDR", "VAULT_TOKEN", "VAULT_CACERT", "VAULT_CLIENT_CERT/VAULT_CLIENT_KEY",
                "VAULT_TLS_SERVER_NAME")


class ClusterAccessError(Exception):
    """A call to Nomad, Consul or Vault that could not be made: the agent is unreachable,
    TLS failed or the token was refused (`kind`). str() is the one line an operator needs."""

    def __init__(self, message: str, kind: str = "unreachable"):  # or "tls", "denied"
        super().__init__(message)
        self.kind = kind


def _chain(exc: BaseException) -> list[BaseException]:
    """exc and what it wraps (python-nomad keeps the requests error in nomad_resp)."""
    seen: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in seen:
        seen.append(current)
        wrapped = getattr(current, "nomad_resp", None)
        current = wrapped if isinstance(wrapped, BaseException) else (current.__cause__ or current.__context__)
    return seen


def _status_and_text(exc: BaseException) -> tuple[int | None, str]:
    """The HTTP status and body of a refused call, as the three client libraries keep it."""
    response = getattr(exc, "nomad_resp", None)
    if response is None:  # (not `or`: a requests Response with an error status is falsy)
        response = getattr(exc, "response", None)
    status = getattr(response, "status_code", None)
    text = getattr(response, "text", None)
    if status is None:  # py-consul and hvac raise by status, with the body as the message
        status = {"ACLPermissionDenied": 403, "Forbidden": 403, "Unauthorized": 401}.get(type(exc).__name__)
    if not isinstance(text, str):
        errors = getattr(exc, "errors", None)  # hvac
        text = "; ".join(map(str, errors)) if errors else str(exc)
    return (status if isinstance(status, int) else None), " ".join(text.split())[:200]


def _tls_reason(text: str, product: Product, address: str) -> str:
    lowered = text.lower()
    if "hostname mismatch" in lowered or "ip address mismatch" in lowered:
        return (f"the certificate is not for the host in {address}: set {product.server_name_var} to a name it "
                "is for")
    if "certificate verify failed" in lowered or "self-signed" in lowered or "unable to get local issuer" in lowered:
        return (f"its certificate is not trusted: set {product.cacert_var} to the CA that signed it (or "
                f"{product.address_var} to the right agent)")
    if "wrong version number" in lowered or "record layer failure" in lowered or "unexpected eof" in lowered:
        return f"the agent does not speak TLS there: use http:// in {product.address_var}"
    if "certificate required" in lowered or "bad certificate" in lowered or "handshake failure" in lowered:
        return f"the agent wants a client certificate it accepts: set {product.client_cert_vars}"
    return f"check {product.address_var} and {product.cacert_var}"


def access_error(exc: BaseException, product: Product, address: str,
                 token_given: bool | None = None) -> ClusterAccessError | None:
    """The one-line ClusterAccessError for `exc` when it is one of: the agent unreachable
    (refused, timed out), TLS failed (untrusted certificate, http to an https listener or the
    reverse, a client certificate wanted), the ACL token refused (401/403). None for any
    other error (a bad job, a missing path): the caller reports those itself."""
    name = product.name
    for error in _chain(exc):
        if isinstance(error, (requests.exceptions.SSLError, ssl.SSLError)):
            text = str(error)
            return ClusterAccessError(f"{name}: TLS to {address} failed: {_tls_reason(text, product, address)} "
                                      f"[{_short_ssl(text)}]", "tls")
        if isinstance(error, (requests.exceptions.Timeout, httpx.TimeoutException)):
            return ClusterAccessError(f"{name}: cannot reach {product.title} at {address} (no answer in time): "
                                      f"is the agent up and {product.address_var} its address?")
        if isinstance(error, (requests.exceptions.ConnectionError, httpx.ConnectError, httpx.RemoteProtocolError,
                              httpx.ReadError)):
            text = str(error)
            if any(marker in text for marker in ("RemoteDisconnected", "Connection aborted", "reset by peer",
                                                 "Server disconnected")):
                return ClusterAccessError(
                    f"{name}: {address} closed the connection without an answer: if it is an HTTPS listener, use "
                    f"https:// in {product.address_var} (and {product.cacert_var} for its CA)", "tls")
            why = "connection refused" if "refused" in text.lower() else _short_connection(text)
            return ClusterAccessError(f"{name}: cannot reach {product.title} at {address} ({why}): start the "
                                      f"agent or set {product.address_var} to its address")
    status, text = _status_and_text(exc)
    if status == 400 and "http request to an https server" in text.lower():
        return ClusterAccessError(f"{name}: {address} is an HTTPS listener: use https:// in {product.address_var} "
                                  f"(and {product.cacert_var} for its CA)", "tls")
    if status in (401, 403):
        lowered = text.lower()
        if "not found" in lowered or "invalid" in lowered or "bad token" in lowered:
            hint = f"the token is not known there: set {product.token_var} to a valid token"
        elif token_given is False:
            hint = f"no token was given: set {product.token_var} to a token whose policy allows it"
        elif token_given:
            hint = (f"the token given is not known there or lacks the right: set {product.token_var} to a token "
                    "whose policy allows it")
        else:
            hint = f"set {product.token_var} to a token whose policy allows it"
        return ClusterAccessError(f"{name}: {address} refused the call ({status} {text or 'permission denied'}): "
                                  f"{hint}", "denied")
    return None


def _short_ssl(text: str) -> str:
    for marker in ("certificate verify failed: ", "SSL: ", "] "):
        if marker in text:
            text = text.split(marker, 1)[1]
            break
    return text.split(" (_ssl")[0].rstrip(")\"' ")[:120]


def _short_connection(text: str) -> str:
    for marker in ("Name or service not known", "No route to host", "Network is unreachable",
                   "Temporary failure in name resolution"):
        if marker in text:
            return marker.lower()
    return text.rsplit(": ", 1)[-1].rstrip(")\"' ")[:120]
