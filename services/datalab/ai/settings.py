"""The ai service's settings (environment prefix DATALAB_, as every service's)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from datalab.core.settings import BaseServiceSettings


class AiSettings(BaseServiceSettings):
    port: int = 8002
    device: Literal["auto", "cpu", "cuda"] = "auto"
    sync_train_max_rows: int = Field(100_000, ge=0)  # larger datasets train as a compute job
    train_concurrency: int = Field(2, ge=1)  # synchronous fits at once
    model_cache_size: int = Field(32, ge=1)
    batch_max_size: int = Field(256, ge=1)  # rows per predict call; 1 turns micro-batching off
    batch_max_wait_ms: float = Field(2.0, ge=0)
    predict_max_rows: int = Field(10_000, ge=1)
    max_body_bytes: int = Field(16 * 1024 * 1024, ge=0)  # a predict call of predict_max_rows rows
