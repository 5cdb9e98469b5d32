"""Real HTTP servers on 127.0.0.1 for tests: an upstream that echoes what it received."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route


def free_port() -> int:
    """An unused TCP port on 127.0.0.1."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def _echo(request: Request) -> Response:
    body = await request.body()
    return JSONResponse(
        {
            "method": request.method,
            "path": request.url.path,
            "headers": {k.lower(): v for k, v in request.headers.items()},
            "body": body.decode("utf-8", "replace"),
            "size": len(body),
        },
        status_code=int(request.query_params.get("status", "200")),
        headers={"X-Upstream": "yes", "Set-Cookie": "upstream=1"},
    )


async def _slow(request: Request) -> Response:
    await asyncio.sleep(float(request.query_params.get("seconds", "5")))
    return JSONResponse({"slow": True})


async def _teapot(request: Request) -> Response:
    return JSONResponse({"error": "teapot"}, status_code=418)


def upstream_app() -> Starlette:
    """The echo upstream."""
    return Starlette(
        routes=[
            Route("/echo", _echo, methods=["GET", "POST"]),
            Route("/slow", _slow, methods=["POST"]),
            Route("/teapot", _teapot, methods=["POST"]),
        ]
    )


@contextlib.contextmanager
def serve_in_thread(app: Any, port: int | None = None) -> Iterator[str]:
    """Run an ASGI app with uvicorn on 127.0.0.1 in a thread; yields its base URL."""
    port = port or free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, lifespan="off")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline:
            raise RuntimeError("test server did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


RawHandler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@contextlib.asynccontextmanager
async def serve_raw(
    handler: RawHandler, *, tls: ssl.SSLContext | None = None, host: str = "127.0.0.1"
) -> AsyncIterator[str]:
    """A TCP server on 127.0.0.1 in this event loop running `handler` per connection (an
    upstream that speaks HTTP by hand, to misbehave exactly); yields its base URL (https with
    `tls`, named `host`). A peer that hangs up ends its handler quietly; the connection is
    closed when the handler returns."""

    async def run(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await handler(reader, writer)
        except (ConnectionError, OSError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(run, "127.0.0.1", 0, ssl=tls)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"{'https' if tls else 'http'}://{host}:{port}"
    finally:
        server.close()
        await server.wait_closed()


@contextlib.asynccontextmanager
async def serve_warden_with_page(
    port: int, page: str | None = None, path: str = "/app", **overrides: Any
) -> AsyncIterator[Any]:
    """Warden (lifespan and all) with uvicorn in a thread, PUBLIC_URL its own address and, with
    `page`, that HTML served at `path` from Warden's own origin (the BFF's page). Yields the app
    (its `state.runtime` is the server's)."""
    from app.core.config import Settings
    from app.main import create_app

    settings = Settings(
        public_url=f"http://127.0.0.1:{port}", session_cookie_secure=False, **overrides
    )
    application = create_app(settings)
    if page is not None:
        html = page

        async def serve_page(request: Request) -> Response:
            return HTMLResponse(html)

        application.add_route(path, serve_page, methods=["GET"], include_in_schema=False)
    config = uvicorn.Config(
        application, host="127.0.0.1", port=port, log_config=None, lifespan="on"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        # Waiting without blocking this loop: its runtime shares the SQLite file with the server.
        while not server.started:
            if time.monotonic() > deadline or not thread.is_alive():
                raise RuntimeError("warden did not start")
            await asyncio.sleep(0.05)
        yield application
    finally:
        server.should_exit = True
        await asyncio.to_thread(thread.join, 20)
