"""Typed dependencies for the data service's routes: its settings, what its start-up built
(lifecycle.py), and the query cache over the service's Redis client."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends

from datalab.core.deps import RedisDep, from_state, settings_dependency

from .datasets import DatasetFiles
from .query_cache import QueryCache
from .scans import ScanSlots
from .settings import DataSettings

SettingsDep = Annotated[DataSettings, Depends(settings_dependency(DataSettings))]




def get_query_cache(redis: RedisDep, settings: SettingsDep) -> QueryCache:
    return QueryCache(redis, settings.query_cache_ttl)


DatasetFilesDep = Annotated[DatasetFiles, Depends(from_state("dataset_files", DatasetFiles))]
ScanSlotsDep = Annotated[ScanSlots, Depends(from_state("scan_slots", ScanSlots))]
QueryCacheDep = Annotated[QueryCache, Depends(get_query_cache)]
