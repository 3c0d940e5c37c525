"""Streamed multipart upload: the file part goes straight to disk, with a size limit.

Starlette's form parser would spool the whole body before our handler runs; parsing the
stream ourselves lets us stop at the limit and never hold an upload in memory.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import Request

from datalab.core.errors import Problem

MAX_FIELD_BYTES = 4096  # plain form fields (the dataset name) are small


@dataclass
class ReceivedFile:
    path: Path
    filename: str
    content_type: str
    size: int
    fields: dict[str, str] = field(default_factory=dict)


def _too_large(limit: int) -> Problem:
    return Problem(413, f"The upload exceeds the limit of {limit} bytes.")


async def receive_file(
    request: Request, destination: Path, limit: int, field_name: str = "file"
) -> ReceivedFile:
    """Stream the multipart part `field_name` to `destination`. Removes it on any failure.

    The app factory's BodyLimitMiddleware refuses the whole body first when its declared
    length passes the upload limit (413) and when it stops arriving (408); here the file's
    own bytes are counted exactly."""
    content_type, params = parse_options_header(request.headers.get("content-type", ""))
    if content_type != b"multipart/form-data" or b"boundary" not in params:
        raise Problem(415, "Send the dataset as multipart/form-data with a 'file' part.")
    state = _PartState()
    # The parser's callbacks are synchronous: the file is opened, written and removed in
    # place (a local disk, chunk by chunk), not through a thread per call.
    out = open(destination, "wb")  # noqa: SIM115, ASYNC230 - closed in finally
    size = 0

    def on_part_begin() -> None:
        state.reset()

    def on_header_field(data: bytes, start: int, end: int) -> None:
        state.header_name += data[start:end]

    def on_header_value(data: bytes, start: int, end: int) -> None:
        state.header_value += data[start:end]

    def on_header_end() -> None:
        state.headers[state.header_name.decode("latin-1").lower()] = state.header_value
        state.header_name, state.header_value = b"", b""

    def on_headers_finished() -> None:
        _, disp = parse_options_header(state.headers.get("content-disposition", b""))
        state.name = disp.get(b"name", b"").decode("utf-8", "replace")
        if b"filename" in disp and state.name == field_name:
            state.is_file = True
            state.files_seen += 1
            if state.files_seen == 1:
                state.filename = disp[b"filename"].decode("utf-8", "replace")
                state.content_type = state.headers.get("content-type", b"").decode("latin-1")

    def on_part_data(data: bytes, start: int, end: int) -> None:
        nonlocal size
        chunk = data[start:end]
        if state.is_file:
            if state.files_seen > 1:
                raise Problem(400, "Send exactly one file part.")
            size += len(chunk)
            if size > limit:
                raise _too_large(limit)
            out.write(chunk)
        else:
            state.value += chunk
            if len(state.value) > MAX_FIELD_BYTES:
                raise Problem(400, f"Form field {state.name!r} is too long.")

    def on_part_end() -> None:
        if not state.is_file and state.name:
            state.fields[state.name] = state.value.decode("utf-8", "replace")

    def on_end() -> None:
        state.complete = True

    parser = MultipartParser(
        params[b"boundary"],
        {
            "on_part_begin": on_part_begin,
            "on_header_field": on_header_field,
            "on_header_value": on_header_value,
            "on_header_end": on_header_end,
            "on_headers_finished": on_headers_finished,
            "on_part_data": on_part_data,
            "on_part_end": on_part_end,
            "on_end": on_end,
        },
    )
    ok = False
    try:
        async for chunk in request.stream():
            parser.write(chunk)
        parser.finalize()
        # The parser accepts a body that stops mid-part; only the closing boundary says
        # the client sent all of it (a cut connection is not a complete dataset).
        if not state.complete:
            raise Problem(400, "The multipart body ended before its closing boundary: the upload is incomplete.")
        if state.files_seen == 0:
            raise Problem(400, f"No file part named {field_name!r} in the upload.")
        ok = True
    except Problem:
        raise
    except Exception as exc:  # the parser's errors: a broken multipart body
        raise Problem(400, f"The multipart body is malformed: {type(exc).__name__}.") from None
    finally:
        out.close()
        if not ok:
            destination.unlink(missing_ok=True)  # noqa: ASYNC240
    return ReceivedFile(destination, state.filename, state.content_type, size, dict(state.fields))


class _PartState:
    def __init__(self) -> None:
        self.fields: dict[str, str] = {}
        self.files_seen = 0
        self.complete = False  # the closing boundary was seen
        self.filename = ""  # of the file part (kept across later parts)
        self.content_type = ""
        self.reset()

    def reset(self) -> None:
        self.headers: dict[str, bytes] = {}
        self.header_name = b""
        self.header_value = b""
        self.name = ""
        self.is_file = False
        self.value = b""


def detect_format(filename: str, content_type: str) -> str:
    """"csv" or "parquet", from the file part's name or content type; else a 415."""
    name = filename.lower()
    ctype = content_type.split(";")[0].strip().lower()
    if name.endswith((".parquet", ".pq")) or ctype in ("application/vnd.apache.parquet", "application/x-parquet"):
        return "parquet"
    if name.endswith((".csv", ".txt")) or ctype in ("text/csv", "application/csv"):
        return "csv"
    raise Problem(
        415,
        f"Unsupported file type (name {filename[:100]!r}, content type {ctype[:100] or 'none'}): "
        "send CSV or Parquet.",
    )


def client_basename(filename: str) -> str:
    """The client's file name without any directories it sent (`../../x.csv` -> `x.csv`)."""
    return filename.replace("\\", "/").rsplit("/", 1)[-1]


def fsync_replace(src: Path, dst: Path) -> None:
    """Move a finished file into place atomically (same filesystem)."""
    with open(src, "rb") as fh:
        os.fsync(fh.fileno())
    os.replace(src, dst)
