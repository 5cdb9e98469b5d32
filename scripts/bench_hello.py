"""The references of `scripts/bench`, served like Warden (uvicorn, one worker):

- `app`: a bare FastAPI hello-world, the baseline every ratio refers to;
- `raw_app`: a raw ASGI hello-world, the floor of the server itself;
- `proxy_app`: a bare FastAPI + httpx proxy forwarding `POST /echo` to the upstream named by
  `BENCH_UPSTREAM_URL` (the same echo upstream as Warden's forwarded `/query`), the fair
  comparison for forwarding.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
from fastapi import FastAPI, Request, Response

app = FastAPI()


@app.get("/hello")
async def hello_get() -> dict[str, str]:
    """The cheapest possible FastAPI route."""
    return {"hello": "world"}


@app.post("/hello")
async def hello_post() -> dict[str, str]:
    """The same, for POST load."""
    return {"hello": "world"}


RAW_BODY = b'{"hello":"world"}'
RAW_HEADERS = [(b"content-type", b"application/json"), (b"content-length", b"17")]


async def raw_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """The cheapest possible ASGI answer: no framework at all."""
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": RAW_HEADERS})
    await send({"type": "http.response.body", "body": RAW_BODY})


HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "transfer-encoding", "content-length", "content-encoding"}
)
_proxy: dict[str, httpx.AsyncClient] = {}


@asynccontextmanager
async def proxy_lifespan(_app: FastAPI) -> AsyncIterator[None]:
    """One pooled client for the process, as a careful hand-written proxy would keep."""
    limits = httpx.Limits(max_connections=100, max_keepalive_connections=100)
    async with httpx.AsyncClient(timeout=10.0, limits=limits) as client:
        _proxy["client"] = client
        yield


proxy_app = FastAPI(lifespan=proxy_lifespan)


@proxy_app.post("/echo")
async def proxy_echo(request: Request) -> Response:
    """Forward the body and content type to the upstream; relay its answer."""
    upstream = await _proxy["client"].post(
        os.environ["BENCH_UPSTREAM_URL"] + "/echo",
        content=await request.body(),
        headers={"content-type": request.headers.get("content-type", "application/json")},
    )
    headers = {k: v for k, v in upstream.headers.items() if k.lower() not in HOP_BY_HOP}
    return Response(upstream.content, status_code=upstream.status_code, headers=headers)
