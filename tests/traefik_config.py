"""Checks every Traefik static config the project ships or generates must pass."""

from __future__ import annotations

import re


def go_seconds(value) -> float:
    """A Go duration as Traefik reads it ("10m", "90s", "1h30m"; a bare number is seconds)."""
    if re.fullmatch(r"\d+(\.\d+)?", str(value)):
        return float(value)
    units = {"h": 3600, "m": 60, "s": 1, "ms": 0.001}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)", value)
    assert parts and "".join(n + u for n, u in parts) == value, value
    return sum(float(n) * units[u] for n, u in parts)


def assert_entrypoint_timeouts(entry_points: dict) -> None:
    """Every entrypoint: read, write and idle timeouts set and never 0 (a slowloris client
    holds a connection forever); write >= read (Go's write deadline runs from the end of the
    headers, through the upload, to the end of the response)."""
    for name, entry in entry_points.items():
        t = entry["transport"]["respondingTimeouts"]
        read, write, idle = (go_seconds(t[k]) for k in ("readTimeout", "writeTimeout", "idleTimeout"))
        assert read > 0 and write > 0 and idle > 0, (name, t)
        assert write >= read, (name, t)
