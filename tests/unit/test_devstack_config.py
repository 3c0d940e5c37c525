"""The embedded platform's generated Traefik config and its settings (`datalab up`)."""

from pathlib import Path

import pytest

from datalab.devstack.local_stack import PlatformConfig, traefik_static_config
from traefik_config import assert_entrypoint_timeouts, go_seconds


def test_every_entrypoint_has_timeouts_and_plain_http_serves():
    static = traefik_static_config(PlatformConfig(home=Path("/tmp/x")), Path("/tmp/x/dynamic.yaml"))
    assert_entrypoint_timeouts(static["entryPoints"])
    assert go_seconds(static["entryPoints"]["web"]["transport"]["respondingTimeouts"]["readTimeout"]) >= 600
    # HTTP only on loopback, no websecure: nothing to redirect to (config/traefik redirects)
    assert set(static["entryPoints"]) == {"web", "ping"} and "http" not in static["entryPoints"]["web"]


def test_timeouts_services_and_ports_are_settings(monkeypatch):
    for k, v in {"DATALAB_TRAEFIK_READ_TIMEOUT": "30s", "DATALAB_TRAEFIK_WRITE_TIMEOUT": "1m",
                 "DATALAB_TRAEFIK_IDLE_TIMEOUT": "20s", "DATALAB_SERVICES": "gateway,data",
                 "DATALAB_DATA_PORT": "18001", "DATALAB_WORKER_METRICS_PORT": "18005"}.items():
        monkeypatch.setenv(k, v)
    config = PlatformConfig.from_env()
    timeouts = traefik_static_config(config, Path("/d"))["entryPoints"]["web"]["transport"]["respondingTimeouts"]
    assert timeouts == {"readTimeout": "30s", "writeTimeout": "1m", "idleTimeout": "20s"}
    assert config.services == ["gateway", "data"] and config.service_ports["data"] == 18001
    assert config.service_ports["gateway"] == 8000 and config.worker_metrics_port == 18005
    monkeypatch.setenv("DATALAB_SERVICES", "data,nope")
    with pytest.raises(ValueError, match="nope"):
        PlatformConfig.from_env()
