"""AI service (port 8002): train models on datasets, serve predictions.

routes.py is the API; trainer.py trains in the request or through a compute job;
serving.py keeps loaded models (LRU) and micro-batches their predictions; records.py is
the table of models; deletion_feed.py keeps every instance's cache in step with deletes.
"""

from __future__ import annotations

from fastapi import FastAPI

from datalab.core.app import ServiceSpec, create_app
from datalab.ml import training

from . import lifecycle
from .records import Base
from .routes import router
from .settings import AiSettings

__all__ = ["SPEC", "AiSettings", "build_app"]

SPEC = ServiceSpec(name="ai", routers=[router], metadata=Base.metadata,
                   on_startup=[lifecycle.start], on_shutdown=[lifecycle.stop])


def build_app(settings: AiSettings | None = None) -> FastAPI:
    settings = settings or AiSettings()
    # DATALAB_DEVICE=cuda without a usable GPU stops here, before anything starts, saying why.
    device = training.select_device(settings.device)
    app = create_app(SPEC, settings)
    app.state.device = device
    return app
