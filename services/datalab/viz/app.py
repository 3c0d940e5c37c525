"""Viz service (port 8004): charts of dataset queries, as PNG or SVG.

Every request first asks data for the dataset's metadata with the caller's token: that is
the access check (404 for a dataset the caller may not see) and gives the column types and
the dataset version. Data then does the filtering and grouping; viz draws in worker
processes and caches the image in Redis under a hash of (normalized spec, format, dataset
id and version, renderer), which is also the strong ETag. A dataset delete (an event from
data) drops that dataset's charts.

routes (the endpoint), negotiation (Accept, If-None-Match), charts (cache or render, once),
chart_cache (Redis), render_pool (worker processes), render (matplotlib), spec (chart
specs and their queries), deletions (the delete events), lifecycle (start-up, shutdown).
"""

from __future__ import annotations

from fastapi import FastAPI

from datalab.core.app import ServiceSpec, create_app

from . import lifecycle
from .routes import chart_error_response, router
from .settings import VizSettings
from .spec import ChartError

SPEC = ServiceSpec(
    name="viz", routers=[router], on_startup=[lifecycle.start], on_shutdown=[lifecycle.stop],
    ready_checks={"renderer": lifecycle.renderer_ready},
)


def build_app(settings: VizSettings | None = None) -> FastAPI:
    app = create_app(SPEC, settings or VizSettings())
    app.add_exception_handler(ChartError, chart_error_response)
    return app
