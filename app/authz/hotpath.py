"""The enforcement hot path: `POST /authz/check` and `POST /endpoints/{slug}/query` served
straight from ASGI, without FastAPI's route matching, dependency resolution and response
validation (about half of a warm decision's CPU, measured with py-spy).

The middleware sits inside the request-context and global-limit middlewares and calls the same
functions as the FastAPI routes in `router.py` (authentication, `service.check`,
`service.query`), so behaviour is one piece of code. The routes stay the documented contract
(OpenAPI) and serve whatever the fast path does not take: a body that is not JSON or does not
validate is replayed to them unchanged, so validation errors keep their usual shape."""

from __future__ import annotations

import re

from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.auth.deps import current_principal
from app.authz import service
from app.authz.schemas import CheckRequest
from app.core.errors import AppError, app_error_response
from app.core.schemas import SLUG_PATTERN

_SLUG = re.compile(SLUG_PATTERN)
_JSON = b"application/json"


def _is_json(scope: Scope) -> bool:
    """FastAPI reads a body without a content type as JSON too; anything else goes its way."""
    for name, value in scope["headers"]:
        if name == b"content-type":
            return value.split(b";", 1)[0].strip().lower() == _JSON
    return True


def _replay(body: bytes) -> Receive:
    """A `receive` that hands an already-read body to the app once more."""
    sent = False

    async def receive() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return {"type": "http.disconnect"}

    return receive


class HotPathMiddleware:
    """Serves the two decision routes of `prefix` directly; everything else passes through."""

    def __init__(self, app: ASGIApp, *, prefix: str) -> None:
        self.app = app
        self.check_path = f"{prefix}/authz/check"
        self.endpoints_prefix = f"{prefix}/endpoints/"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            path: str = scope["path"]
            if path == self.check_path:
                await self._check(scope, receive, send)
                return
            if path.startswith(self.endpoints_prefix) and path.endswith("/query"):
                slug = path[len(self.endpoints_prefix) : -len("/query")]
                if _SLUG.match(slug):
                    await self._query(scope, receive, send, slug)
                    return
        await self.app(scope, receive, send)

    async def _check(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not _is_json(scope):
            await self.app(scope, receive, send)
            return
        request = Request(scope, receive)
        body = await request.body()
        try:
            data = CheckRequest.model_validate_json(body)
        except ValidationError:
            await self.app(scope, _replay(body), send)
            return
        runtime = scope["app"].state.runtime
        try:
            principal = await current_principal(request, runtime)
            result = await service.check(runtime, principal, data)
            response = Response(result.model_dump_json(), media_type="application/json")
        except AppError as exc:
            response = app_error_response(request, exc)
        await response(scope, receive, send)

    async def _query(self, scope: Scope, receive: Receive, send: Send, slug: str) -> None:
        request = Request(scope, receive)
        runtime = scope["app"].state.runtime
        try:
            principal = await current_principal(request, runtime)
            response = await service.query(runtime, request, principal, slug)
        except AppError as exc:
            response = app_error_response(request, exc)
        await response(scope, receive, send)
