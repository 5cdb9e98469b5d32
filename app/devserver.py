"""The echo upstream `warden dev` puts behind the demo tenant's `echo` endpoint: it answers every
forwarded query with what it received (the body and the identity headers Warden added)."""

from __future__ import annotations

import json

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

# What Warden adds to a forwarded query (the default FORWARD_IDENTITY_HEADERS); the upstream
# credential, if one is set, is never echoed.
_IDENTITY_HEADERS = ("x-user-id", "x-user-email", "x-tenant")


async def _echo(request: Request) -> JSONResponse:
    raw = await request.body()
    try:
        body: object = json.loads(raw) if raw else None
    except ValueError:
        body = raw.decode("utf-8", "replace")
    return JSONResponse(
        {
            "echo": body,
            "method": request.method,
            "identity": {name: request.headers.get(name) for name in _IDENTITY_HEADERS},
        }
    )


def echo_app() -> Starlette:
    """`POST /echo` (any method) → `{echo, method, identity}`."""
    return Starlette(
        routes=[Route("/echo", _echo, methods=["GET", "POST", "PUT", "PATCH", "DELETE"])]
    )
