"""`datalab deploy`, `status`, `vault bootstrap` and `cluster-test` against agents they
cannot use: a closed port, and a real TLS server (Python's ssl, a certificate made here)
whose certificate the client does not trust. Each must end with ONE line on stderr naming
the address and what to set, exit status 1, no traceback. The same server, trusted through
NOMAD_CACERT/NOMAD_TLS_SERVER_NAME, shows those variables are honoured.

ACL-enabled agents (Nomad, Consul, OpenBao) are in tests/integration/test_cli_acl.py."""

from __future__ import annotations

import datetime
import json
import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from cli_run import one_line, probe_job, run_cli
from datalab.devstack.servers import free_port

SERVER_NAME = "nomad.test"  # the certificate's only name: 127.0.0.1 is not in it


@pytest.fixture
def closed() -> str:
    return f"http://127.0.0.1:{free_port()}"  # free: nothing listens there


# ---- (a) nothing listens --------------------------------------------------------------------

def test_status_against_a_closed_port_says_so_in_one_line(closed):
    one_line(run_cli("status", NOMAD_ADDR=closed), "datalab status: nomad:", closed, "NOMAD_ADDR",
             "connection refused")


def test_nomad_addr_flag_wins_over_the_environment(closed):
    other = f"http://127.0.0.1:{free_port()}"
    one_line(run_cli("status", "--nomad-addr", closed, NOMAD_ADDR=other), closed)


def test_deploy_against_a_closed_port_says_so_once_not_refused_to_parse(closed, tmp_path):
    result = run_cli("deploy", str(probe_job(tmp_path)), str(probe_job(tmp_path)), "--keep-going", NOMAD_ADDR=closed)
    line = one_line(result, "datalab deploy: nomad:", closed, "NOMAD_ADDR")
    assert "refused to parse" not in result.stdout + line


def test_vault_bootstrap_against_a_closed_port(closed):
    one_line(run_cli("vault", "bootstrap", VAULT_ADDR=closed, VAULT_TOKEN="t",
                     DATALAB_PG_ADMIN_URL="postgresql://postgres@127.0.0.1:1/datalab"),
             "vault bootstrap failed", "cannot reach Vault at " + closed, "VAULT_ADDR")


def test_cluster_test_against_a_closed_port(closed):
    one_line(run_cli("cluster-test", NOMAD_ADDR=closed, CONSUL_HTTP_ADDR=closed, VAULT_ADDR=closed,
                     DATALAB_ADMIN_PASSWORD="x"), "datalab cluster-test: nomad:", closed, "NOMAD_ADDR")


# ---- (b) TLS that the client does not trust ---------------------------------------------------

class _Answers(BaseHTTPRequestHandler):
    """An empty cluster: no jobs, no services (enough for status to finish)."""

    def do_GET(self):
        body = json.dumps({} if self.path.startswith("/v1/catalog") else []).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("X-Consul-Index", "1")  # py-consul wants one on catalog reads
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory):
    """A real HTTPS listener on loopback, its self-signed certificate naming SERVER_NAME only."""
    root = tmp_path_factory.mktemp("tls")
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, SERVER_NAME)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(SERVER_NAME)]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    (root / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (root / "key.pem").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                     serialization.NoEncryption()))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(root / "cert.pem", root / "key.pem")
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Answers)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield {"port": server.server_address[1], "ca": str(root / "cert.pem")}
    finally:
        server.shutdown()
        server.server_close()


def test_status_over_untrusted_tls_names_nomad_cacert(tls_server):
    address = f"https://127.0.0.1:{tls_server['port']}"
    one_line(run_cli("status", NOMAD_ADDR=address), "datalab status: nomad: TLS", address, "NOMAD_CACERT")


def test_deploy_over_untrusted_tls_names_nomad_cacert(tls_server, tmp_path):
    address = f"https://127.0.0.1:{tls_server['port']}"
    one_line(run_cli("deploy", str(probe_job(tmp_path)), NOMAD_ADDR=address), "datalab deploy: nomad: TLS", address,
             "NOMAD_CACERT")


def test_a_certificate_for_another_name_names_tls_server_name(tls_server):
    address = f"https://127.0.0.1:{tls_server['port']}"
    one_line(run_cli("status", NOMAD_ADDR=address, NOMAD_CACERT=tls_server["ca"]), address, "NOMAD_TLS_SERVER_NAME")


def test_plain_http_to_the_https_listener_says_use_https(tls_server):
    address = f"http://127.0.0.1:{tls_server['port']}"
    one_line(run_cli("status", NOMAD_ADDR=address), address, "https://", "NOMAD_ADDR")


def test_nomad_cacert_and_server_name_are_honoured(tls_server, closed):
    address = f"https://127.0.0.1:{tls_server['port']}"
    env = {"NOMAD_ADDR": address, "NOMAD_CACERT": tls_server["ca"], "NOMAD_TLS_SERVER_NAME": SERVER_NAME}
    result = run_cli("status", **env, CONSUL_HTTP_ADDR=address, CONSUL_CACERT=tls_server["ca"],
                     CONSUL_TLS_SERVER_NAME=SERVER_NAME)
    assert result.returncode == 0 and not result.stderr, result.stderr
    skip = run_cli("status", NOMAD_ADDR=address, NOMAD_SKIP_VERIFY="true", CONSUL_HTTP_ADDR=address,
                   CONSUL_HTTP_SSL_VERIFY="false")
    assert skip.returncode == 0 and not skip.stderr, skip.stderr
    # Nomad answers; Consul does not: Nomad's view, then Consul's one line, exit 1.
    one_line(run_cli("status", **env, CONSUL_HTTP_ADDR=closed.removeprefix("http://")),
             "datalab status: consul:", closed, "CONSUL_HTTP_ADDR")


def test_consul_over_untrusted_tls_names_consul_cacert(tls_server):
    address = f"https://127.0.0.1:{tls_server['port']}"
    env = {"NOMAD_ADDR": address, "NOMAD_CACERT": tls_server["ca"], "NOMAD_TLS_SERVER_NAME": SERVER_NAME}
    # host:port with CONSUL_HTTP_SSL, as Consul's CLI takes it
    one_line(run_cli("status", **env, CONSUL_HTTP_ADDR=address.removeprefix("https://"), CONSUL_HTTP_SSL="true"),
             "datalab status: consul: TLS", address, "CONSUL_CACERT")


def test_vault_over_untrusted_tls_names_vault_cacert(tls_server):
    address = f"https://127.0.0.1:{tls_server['port']}"
    one_line(run_cli("vault", "bootstrap", VAULT_ADDR=address, VAULT_TOKEN="t",
                     DATALAB_PG_ADMIN_URL="postgresql://postgres@127.0.0.1:1/datalab"),
             "vault bootstrap failed: vault: TLS", address, "VAULT_CACERT")
