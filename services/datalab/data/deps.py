"""Typed dependencies for the data service's routes: its settings, what its start-up built
(lifecycle.py), and the query cache over the service's Redis client."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from datalab.core.deps import RedisDep, settings_dependency

from .datasets import DatasetFiles
from .query_cache import QueryCache
from .scans import ScanSlots
from .settings import DataSettings

SettingsDep = Annotated[DataSettings, Depends(settings_dependency(DataSettings))]


def get_dataset_files(request: Request) -> DatasetFiles:
    return request.app.state.dataset_files


def get_scan_slots(request: Request) -> ScanSlots:
    return request.app.state.scan_slots


def get_query_cache(redis: RedisDep, settings: SettingsDep) -> QueryCache:
    return QueryCache(redis, settings.query_cache_ttl)


DatasetFilesDep = Annotated[DatasetFiles, Depends(get_dataset_files)]
ScanSlotsDep = Annotated[ScanSlots, Depends(get_scan_slots)]
QueryCacheDep = Annotated[QueryCache, Depends(get_query_cache)]
