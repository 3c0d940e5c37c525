"""What the data service's routes take and answer, beyond the dataset schemas it shares with
its callers (contracts.datasets: DatasetOut, DatasetSummary, DatasetPage) and the query
models (query.Query): the media types it answers in, and the upload body it parses itself."""

from __future__ import annotations

from typing import Any

JSON = "application/json"
PARQUET = "application/vnd.apache.parquet"

# The upload is parsed from the stream (upload.receive_file), not by FastAPI: its body is
# documented here. The name is stored as printable text (ingest.check_name: no control
# characters) and is a small form field (upload.MAX_FIELD_BYTES).
UPLOAD_BODY: dict[str, Any] = {
    "required": True,
    "content": {
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "required": ["file"],
                "properties": {
                    "file": {"type": "string", "format": "binary",
                             "description": "The dataset: CSV (UTF-8, a header row) or Parquet."},
                    "name": {"type": "string", "maxLength": 1024, "pattern": r"^[^\u0000-\u001f\u007f-\u009f]*$",
                             "description": "The dataset's name (cut to 255 characters); the file's name if none."},
                },
            },
            "encoding": {"file": {"contentType": f"text/csv, {PARQUET}"}},
        }
    },
}

CONTENT_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"description": "The dataset as Parquet.",
          "content": {PARQUET: {"schema": {"type": "string", "format": "binary"}}}},
}
