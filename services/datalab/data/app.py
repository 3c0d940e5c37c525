"""Data service (port 8001): datasets in, queries out.

Uploads (CSV or Parquet) stream to disk under a size limit (upload.py), are checked and
converted to Parquet (ingest.py) and get a metadata row in PostgreSQL (datasets.py,
tables.py); queries (query.py) run lazily with polars off the event loop (scans.py) and
their results are cached in Redis until the dataset is deleted (query_cache.py).
"""

from __future__ import annotations

from fastapi import FastAPI

from datalab.core.app import ServiceSpec, create_app

from .lifecycle import startup
from .routes import router
from .settings import DataSettings
from .tables import Base

SPEC = ServiceSpec(name="data", routers=[router], metadata=Base.metadata, on_startup=[startup])


def build_app(settings: DataSettings | None = None) -> FastAPI:
    return create_app(SPEC, settings or DataSettings())
