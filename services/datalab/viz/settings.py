"""The viz service's settings, read from the environment (prefix DATALAB_)."""

from __future__ import annotations

from datalab.core.settings import BaseServiceSettings


class VizSettings(BaseServiceSettings):
    port: int = 8004
    chart_cache_ttl: int = 24 * 3600  # seconds an image (and its dataset's index) stays in Redis
    # Worker processes that draw: matplotlib holds the GIL, so threads would draw one at a
    # time and stall the event loop (bench/viz_cache.py measures both).
    render_processes: int = 2
