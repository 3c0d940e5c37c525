"""Traefik's configuration from its one source, config/traefik/traefik.yml (static) and
dynamic.yml (the shared middlewares), as shipped for a cluster's Traefik outside Nomad.

The few values that differ between the places that run Traefik are filled in here, by
`static_config` and `dynamic_config`: the traefik Nomad job (rendered by
datalab.ops.job_templates, with Nomad interpolations as the values) and the embedded
platform (`datalab up`, datalab.devstack.local_stack, with its loopback ports). Everything
else (entrypoint timeouts, the Consul Catalog settings, the middlewares, logs) is the
source's. Read from a checkout, as the tools that use it run.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Literal

import yaml

CONFIG_DIR = Path(__file__).resolve().parents[3] / "config" / "traefik"

# What the web entrypoint does besides listening: "redirect" every request to websecure
# (a cluster's HTTPS edge, the source's), "default" carry the routers that name no
# entrypoint (one machine's plain-HTTP edge), or neither (None: its routers name it).
WebRole = Literal["redirect", "default"]


def source(name: str = "traefik.yml") -> dict[str, Any]:
    """config/traefik/<name> as data (the static config's YAML anchors resolved)."""
    return yaml.safe_load((CONFIG_DIR / name).read_text())


def web_role(role: WebRole) -> dict[str, Any]:
    """The web entrypoint's settings for `role` (the redirect: the source's own)."""
    if role == "redirect":
        return {"http": copy.deepcopy(source()["entryPoints"]["web"]["http"])}
    return {"asDefault": True}


def static_config(
    *,
    addresses: dict[str, str],
    dynamic_file: str,
    role: WebRole | None = "redirect",
    consul: dict[str, str] | None = None,
    timeouts: dict[str, str] | None = None,
) -> dict[str, Any]:
    """The source's static config with these values filled in.

    addresses: the entrypoints to keep, by name, and each one's listen address (the
    source's web, websecure, ping, auth; the ones left out are dropped). dynamic_file: the
    file provider's dynamic.yml. role: the web entrypoint's (see WebRole). consul: the
    Consul Catalog provider's endpoint (address, scheme, token), or None for no Consul
    Catalog provider (routers from the file alone). timeouts: respondingTimeouts values
    that replace the source's (readTimeout, writeTimeout, idleTimeout).
    """
    config = source()
    entry_points = config["entryPoints"]
    unknown = set(addresses) - set(entry_points)
    if unknown:
        raise ValueError(f"no entrypoint {sorted(unknown)} in {CONFIG_DIR / 'traefik.yml'}")
    kept = {}
    for name, address in addresses.items():
        # The source's one `transport` (a YAML anchor) stays one object, shared again.
        entry = {k: v if k == "transport" else copy.deepcopy(v) for k, v in entry_points[name].items()}
        entry["address"] = address
        entry["transport"]["respondingTimeouts"].update(timeouts or {})
        kept[name] = entry
    web = kept.get("web")
    if web is not None:
        web.pop("http", None)
        web.pop("asDefault", None)
        if role is not None:
            rest = {k: web.pop(k) for k in list(web) if k != "address"}
            web.update(web_role(role), **rest)  # address, the role's, then the rest
    config["entryPoints"] = kept
    providers = config["providers"]
    if consul is None:
        del providers["consulCatalog"]
    else:
        providers["consulCatalog"]["endpoint"] = dict(consul)
    providers["file"]["filename"] = dynamic_file
    return config


def dynamic_config(*, forward_auth: str, routers: dict | None = None, services: dict | None = None) -> dict:
    """The source's dynamic config (the shared middlewares) with forwardAuth's address
    `forward_auth`, plus the routers and services of a file-provider platform."""
    config = source("dynamic.yml")
    http = config["http"]
    http["middlewares"]["auth"]["forwardAuth"]["address"] = forward_auth
    if services is not None:
        http = {"services": services, **http}
    if routers is not None:
        http = {"routers": routers, **http}
    return {**config, "http": http}
