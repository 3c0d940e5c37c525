"""A service built by the real app factory with routes that misbehave on purpose, for the
core tests (test_core_http.py): run as `python probe_app.py`, configured like any service
from DATALAB_* variables, and served by uvicorn exactly as `datalab serve` does."""

from __future__ import annotations

import asyncio

import uvicorn
from fastapi import APIRouter, Request
from pydantic import BaseModel

from datalab.core.app import ServiceSpec, create_app
from datalab.core.settings import BaseServiceSettings

router = APIRouter(prefix="/api/v1/probe")


class Echo(BaseModel):
    text: str


@router.get("/ok")
async def ok() -> dict:
    return {"ok": True}


@router.get("/boom")
async def boom() -> dict:
    raise RuntimeError("an unexpected bug")


@router.post("/echo")
async def echo(body: Echo) -> dict:
    return {"length": len(body.text)}


@router.get("/echo")  # a second route on the path: a 405 there names both methods
async def echo_usage() -> dict:
    return {"usage": "POST a JSON body"}


@router.get("/items/{item_id}")
async def item(item_id: str) -> dict:
    from datalab.core.errors import Problem

    raise Problem(404, f"No item {item_id!r}.")


@router.post("/raw")
async def raw(request: Request) -> dict:
    """Reads the body itself and turns any error into its own, as the data upload does."""
    size = 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
    except Exception:
        from datalab.core.errors import Problem

        raise Problem(400, "The body is malformed.") from None
    await asyncio.sleep(0)
    return {"size": size}


def main() -> None:
    settings = BaseServiceSettings(service_name="probe")
    app = create_app(ServiceSpec(name="probe", routers=[router]), settings)
    uvicorn.run(app, host=settings.host, port=settings.port, log_config=None, access_log=False,
                proxy_headers=False, server_header=False)


if __name__ == "__main__":
    main()
