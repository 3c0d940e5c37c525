"""The app factory's HTTP behaviour, on a service of its own (probe_app.py) served by uvicorn
as `datalab serve` does, directly and through a real Traefik: an unexpected exception is a
problem+json 500 that carries the request id (header, body, log line) on a connection that
stays usable; request bodies over the limit are a 413, stalled ones a 408."""

from __future__ import annotations

import http.client
import json
import socket
import sys
from pathlib import Path

import pytest
import yaml

from conftest import eventually
from datalab.devstack.servers import Process, free_ports, port_open, traefik_binary, wait_until

pytestmark = pytest.mark.integration

PROBLEM = "application/problem+json"
MAX_BODY = 4096
IDLE_TIMEOUT = 1  # seconds: the stalled-body test waits this long for its 408


@pytest.fixture(scope="module")
def probe(tmp_path_factory):
    """(uvicorn port, Traefik port, log path) of the probe service behind Traefik."""
    root = tmp_path_factory.mktemp("probe")
    app_port, web_port, ping_port = free_ports(3)
    env = {
        "PATH": "/usr/bin:/bin",
        "PYTHONUNBUFFERED": "1",
        "DATALAB_PORT": str(app_port),
        "DATALAB_HOME": str(root),
        "DATALAB_MAX_BODY_BYTES": str(MAX_BODY),
        "DATALAB_BODY_IDLE_TIMEOUT_SECONDS": str(IDLE_TIMEOUT),
    }
    log = root / "probe.log"
    app = Process("probe", [sys.executable, str(Path(__file__).with_name("probe_app.py"))], log, env=env)
    dynamic = root / "dynamic.yaml"
    # The platform's router shape (services/datalab/devstack/local_stack.py), retry middleware included.
    dynamic.write_text(yaml.safe_dump({"http": {
        "routers": {"probe": {"rule": "PathPrefix(`/api/v1/probe`)", "service": "probe",
                              "entryPoints": ["web"], "middlewares": ["retry"]}},
        "services": {"probe": {"loadBalancer": {"servers": [{"url": f"http://127.0.0.1:{app_port}"}]}}},
        "middlewares": {"retry": {"retry": {"attempts": 3, "initialInterval": "100ms"}}},
    }}))
    static = root / "traefik.yaml"
    static.write_text(yaml.safe_dump({
        "entryPoints": {"web": {"address": f"127.0.0.1:{web_port}"},
                        "ping": {"address": f"127.0.0.1:{ping_port}"}},
        "ping": {"entryPoint": "ping"},
        "providers": {"file": {"filename": str(dynamic)}},
        "log": {"level": "INFO", "format": "json"},
        "global": {"checkNewVersion": False, "sendAnonymousUsage": False},
    }))
    traefik = Process("traefik", [traefik_binary(), f"--configFile={static}"], root / "traefik.log")
    app.start()
    try:
        wait_until(lambda: port_open(app_port), 30, app, "listening")
        traefik.start()
        try:
            wait_until(lambda: _status(web_port, "/api/v1/probe/ok") == 200, 30, traefik, "routing")
            yield app_port, web_port, log
        finally:
            traefik.stop()
    finally:
        app.stop()


def _status(port: int, path: str) -> int | None:
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        conn.request("GET", path)
        return conn.getresponse().status
    except OSError:
        return None


def _get(conn: http.client.HTTPConnection, path: str) -> tuple[int, dict[str, str], bytes]:
    conn.request("GET", path)
    resp = conn.getresponse()
    return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()


def _log_lines(log: Path) -> list[dict]:
    out = []
    for line in log.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            pass  # uvicorn's start-up banner
    return out


@pytest.mark.parametrize("via", ["traefik", "uvicorn"])
def test_unhandled_error_is_a_problem_with_the_request_id_on_a_usable_connection(probe, via):
    app_port, web_port, log = probe
    conn = http.client.HTTPConnection("127.0.0.1", web_port if via == "traefik" else app_port, timeout=10)
    try:
        status, headers, body = _get(conn, "/api/v1/probe/boom")
        assert status == 500
        assert headers["content-type"] == PROBLEM
        problem = json.loads(body)
        rid = headers.get("x-request-id")
        assert rid and problem["request_id"] == rid, (headers, problem)
        assert "unexpected bug" not in body.decode()  # nothing of the exception reaches a client
        # The same keep-alive connection (client to Traefik, and Traefik's pooled one to the
        # service) answers the next request: no 502, no reset.
        for _ in range(3):
            status, _, body = _get(conn, "/api/v1/probe/ok")
            assert status == 200, body
    finally:
        conn.close()

    def logged() -> list[dict]:
        return [r for r in _log_lines(log) if r.get("message") == "unhandled error" and r.get("request_id") == rid]

    assert eventually(logged)
    (line,) = logged()
    assert line["level"] == "ERROR" and "RuntimeError" in line.get("exc_info", "")
    assert eventually(lambda: any(r.get("message") == "request" and r.get("request_id") == rid
                                  and r.get("status") == 500 for r in _log_lines(log)))


def _raw(port: int, head: bytes, body: bytes = b"") -> tuple[int, dict[str, str], bytes]:
    """Send `head` (and `body`) on a fresh socket and read the answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(head + body)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            assert chunk, f"connection closed without an answer: {data!r}"
            data += chunk
        head_bytes, _, rest = data.partition(b"\r\n\r\n")
        lines = head_bytes.decode("latin-1").split("\r\n")
        headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
        length = int(headers.get("content-length", 0))
        while len(rest) < length:
            chunk = sock.recv(65536)
            if not chunk:
                break
            rest += chunk
        return int(lines[0].split()[1]), headers, rest


def _post_head(path: str, length: int | None = None, content_type: str = "application/json") -> bytes:
    framing = f"Content-Length: {length}" if length is not None else "Transfer-Encoding: chunked"
    return (f"POST {path} HTTP/1.1\r\nHost: probe\r\nContent-Type: {content_type}\r\n"
            f"{framing}\r\n\r\n").encode()


def _chunked(data: bytes, size: int = 1000) -> bytes:
    parts = [f"{len(data[i:i + size]):x}\r\n".encode() + data[i:i + size] + b"\r\n"
             for i in range(0, len(data), size)]
    return b"".join(parts) + b"0\r\n\r\n"


@pytest.mark.parametrize("via", ["traefik", "uvicorn"])
def test_declared_body_over_the_limit_is_413_before_it_is_sent(probe, via):
    app_port, web_port, _ = probe
    if via == "uvicorn":  # the service answers on the head alone, never reading the body
        answer = _raw(app_port, _post_head("/api/v1/probe/echo", 10**9))
    else:
        # Traefik passes an answer on only once the client's body has ended (its access log
        # shows the service's 413 within milliseconds of the head): send a whole one.
        answer = _raw(web_port, _post_head("/api/v1/probe/echo", MAX_BODY * 4), b"x" * (MAX_BODY * 4))
    status, headers, body = answer
    assert status == 413 and headers["content-type"] == PROBLEM
    problem = json.loads(body)
    assert problem["status"] == 413 and str(MAX_BODY) in problem["detail"]
    assert problem["request_id"] == headers["x-request-id"]


@pytest.mark.parametrize("path", ["/api/v1/probe/echo", "/api/v1/probe/raw"])
def test_streamed_body_over_the_limit_is_413(probe, path):
    """Chunked, so no Content-Length to judge by: counted as it streams. /raw reads the
    body itself and wraps errors in its own 400 (as the data upload does): still a 413."""
    _, web_port, _ = probe
    text = json.dumps({"text": "x" * (MAX_BODY * 3)}).encode()
    status, headers, body = _raw(web_port, _post_head(path), _chunked(text))
    assert status == 413 and headers["content-type"] == PROBLEM, body
    assert json.loads(body)["status"] == 413


def test_bodies_within_the_limit_pass(probe):
    _, web_port, _ = probe
    text = json.dumps({"text": "x" * (MAX_BODY - 100)}).encode()
    for head, body in ((_post_head("/api/v1/probe/echo", len(text)), text),
                       (_post_head("/api/v1/probe/echo"), _chunked(text))):
        status, _, answer = _raw(web_port, head, body)
        assert status == 200 and json.loads(answer) == {"length": MAX_BODY - 100}


def test_a_body_that_stops_arriving_is_408_and_the_connection_closes(probe):
    app_port, _, _ = probe
    with socket.create_connection(("127.0.0.1", app_port), timeout=30) as sock:
        sock.sendall(_post_head("/api/v1/probe/echo", 1000) + b'{"text": "')  # and no more
        data = b""
        while chunk := sock.recv(65536):  # read until the service closes the connection
            data += chunk
    assert data.startswith(b"HTTP/1.1 408"), data
    assert b"application/problem+json" in data and b"connection: close" in data.lower()


def test_the_openapi_documents_problem_responses(probe):
    _, web_port, _ = probe
    conn = http.client.HTTPConnection("127.0.0.1", web_port, timeout=10)
    status, _, body = _get(conn, "/api/v1/probe/openapi.json")
    assert status == 200
    schema = json.loads(body)
    assert "HTTPValidationError" not in schema["components"]["schemas"]
    problem = schema["components"]["schemas"]["ProblemDetails"]
    assert set(problem["required"]) == {"type", "title", "status", "detail"}
    echo = schema["paths"]["/api/v1/probe/echo"]["post"]["responses"]
    assert {"400", "408", "413", "422", "500"} <= set(echo)
    for code in ("413", "422", "500"):
        assert echo[code]["content"] == {PROBLEM: {"schema": {"$ref": "#/components/schemas/ProblemDetails"}}}
    assert "413" not in schema["paths"]["/api/v1/probe/ok"]["get"]["responses"]  # it takes no body


def test_405_names_every_method_of_the_path(probe):
    """FastAPI makes a route per method; Starlette's 405 named only the first one's."""
    _, web_port, _ = probe
    conn = http.client.HTTPConnection("127.0.0.1", web_port, timeout=10)
    conn.request("DELETE", "/api/v1/probe/echo")
    resp = conn.getresponse()
    assert resp.status == 405 and resp.getheader("content-type") == PROBLEM
    assert resp.getheader("allow") == "GET, POST"


def test_metrics_label_routes_by_template_not_raw_path(probe):
    """Every distinct path a client (or a fuzzer) sends must not become a time series."""
    app_port, web_port, _ = probe
    conn = http.client.HTTPConnection("127.0.0.1", web_port, timeout=10)
    for odd in ("/api/v1/probe/items/odd-1", "/api/v1/probe/items/odd-2", "/api/v1/probe/nothing-here"):
        _get(conn, odd)
    _, _, metrics = _get(http.client.HTTPConnection("127.0.0.1", app_port, timeout=10), "/metrics")
    text = metrics.decode()
    assert 'route="/api/v1/probe/items/{item_id}"' in text and 'route="unmatched"' in text
    assert "odd-1" not in text and "nothing-here" not in text
