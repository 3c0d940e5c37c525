"""The data service's settings (environment, prefix DATALAB_): upload and dataset caps, the
conversion child's limits, parallel scans, the query cache's lifetime."""

from __future__ import annotations

from datalab.core.settings import BaseServiceSettings

from .ingest import Limits


class DataSettings(BaseServiceSettings):
    port: int = 8001
    max_upload_bytes: int = 512 * 1024 * 1024
    # Caps on what an upload decodes to, checked before decoding (a compressed Parquet of
    # constant values is tiny on the wire). They bound conversion, describe and queries: a
    # sort over every cell peaks near 20 bytes a cell (measured: +380 MB at 20 M cells), so
    # 10 M cells stay inside the job's 512 MB. Raise them with the job's memory.
    max_dataset_rows: int = 5_000_000
    max_dataset_columns: int = 1_000
    max_dataset_cells: int = 10_000_000  # rows x columns
    max_dataset_bytes: int = 256 * 2**20  # decoded (strings measured): what a query may hold
    # The conversion runs in a child process limited to this much memory and time: values
    # that decode far beyond their file (a repeated 10 MB string) are refused, not held.
    decode_memory_bytes: int = 2**30
    decode_timeout_seconds: float = 300.0
    # Conversions, describes and queries decoding data at once; more wait their turn. Each
    # may peak near the caps' memory, so this multiplies it.
    max_parallel_scans: int = 2
    query_cache_ttl: int = 300

    def dataset_limits(self) -> Limits:
        return Limits(self.max_dataset_rows, self.max_dataset_columns, self.max_dataset_cells,
                      self.max_dataset_bytes)
