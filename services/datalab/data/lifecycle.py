"""The data service's start-up: the dataset directory and the scan slots its routes use (deps.py)."""

from __future__ import annotations

from fastapi import FastAPI

from .datasets import DatasetFiles
from .scans import ScanSlots
from .settings import DataSettings


async def startup(app: FastAPI) -> None:
    settings: DataSettings = app.state.settings
    app.state.dataset_files = DatasetFiles(settings.home / "datasets")
    app.state.scan_slots = ScanSlots(settings.max_parallel_scans)
