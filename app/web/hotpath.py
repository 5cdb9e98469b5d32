"""The enforcement hot path: `POST /authz/check`, `POST /endpoints/{slug}/query` and the
gateways' `/authz/forward` served in front of FastAPI's middleware stack, route matching,
dependency resolution and response validation. Measured on one uvicorn worker, that stack
costs about 75 µs a request (a bare FastAPI hello-world answers 10k req/s, a bare ASGI app
50k): more than a warm decision itself.

`WardenAPI` (`app.main`) hands these routes to `DecisionRoutes` behind the same edge
middlewares as every other route (request context, CORS, global limit, built from one list);
everything else goes to FastAPI. FastAPI's optional native telemetry does not wrap them.
`DecisionRoutes` calls the same functions as the FastAPI routes in `router.py`
(authentication, `service.check`, `service.query`, `gateway.forward_auth`) and the same error
renderers as the app's handlers, so behaviour is one piece of code. The FastAPI routes remain
the documented contract (OpenAPI) and serve every request these do not take."""

from __future__ import annotations

import contextlib
import re

from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from app.authz import gateway, service
from app.authz.schemas import CheckRequest
from app.core.errors import (
    AppError,
    app_error_response,
    internal_error_response,
    validation_error_response,
)
from app.core.middleware import BodyTooLarge
from app.core.schemas import SLUG_PATTERN
from app.web.deps import current_principal
from app.web.routes.authz import FORWARD_METHODS

_SLUG = re.compile(SLUG_PATTERN)
_QUERY_SUFFIX = "/query"
_NOT_JSON = [
    {
        "type": "model_attributes_type",
        "loc": ("body",),
        "msg": "expected a JSON object (Content-Type: application/json)",
        "input": None,
    }
]


def _is_json(scope: Scope) -> bool:
    """As FastAPI reads bodies: no content type, `application/json` or `application/*+json`."""
    for name, value in scope["headers"]:
        if name == b"content-type":
            kind = value.split(b";", 1)[0].strip().lower()
            return kind == b"application/json" or (
                kind.startswith(b"application/") and kind.endswith(b"+json")
            )
    return True


Route = tuple[str, str | None]  # ("check", None), ("query", slug), ("forward", path suffix)


class HotPath:
    """The decision routes of `prefix` and the app that serves them (`DecisionRoutes` behind
    the edge middlewares); `WardenAPI.__call__` hands matching requests to it."""

    def __init__(self, app: ASGIApp, *, prefix: str) -> None:
        self.app = app
        self.check_path = f"{prefix}/authz/check"
        self.endpoints_prefix = f"{prefix}/endpoints/"
        self.forward_path = f"{prefix}/authz/forward"

    def route(self, scope: Scope) -> Route | None:
        """Which decision route a request is for, or None when it is not one of them."""
        if scope["type"] != "http":
            return None
        method: str = scope["method"]
        path: str = scope["path"]
        if method == "POST":
            if path == self.check_path:
                return ("check", None)
            if path.startswith(self.endpoints_prefix) and path.endswith(_QUERY_SUFFIX):
                slug = path[len(self.endpoints_prefix) : -len(_QUERY_SUFFIX)]
                if _SLUG.match(slug):  # anything else gets FastAPI's 404/422
                    return ("query", slug)
        if method in FORWARD_METHODS and path.startswith(self.forward_path):
            rest = path[len(self.forward_path) :]
            if not rest:
                return ("forward", None)
            if rest.startswith("/"):  # Envoy appends the original path
                return ("forward", rest[1:])
        return None


class DecisionRoutes:
    """The ASGI endpoint behind the edge middlewares; `HotPath` has matched the route."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind, arg = scope["path_params"].pop("route")
        request = Request(scope, receive)
        runtime = scope["app"].state.runtime
        response: Response
        try:
            if kind == "check":
                principal = await current_principal(request, runtime)
                data = await _check_request(scope, receive)
                result = await service.check(runtime, principal, data)
                await _send_json(send, result.model_dump_json().encode())
                return
            if kind == "forward":
                if arg is not None:
                    scope["path_params"]["path"] = arg
                response = await gateway.forward_auth(runtime, request, suffix=arg)
            else:
                assert arg is not None  # noqa: S101  (a query route always has its slug)
                scope["path_params"]["slug"] = arg
                principal = await current_principal(request, runtime)
                response = await service.query(runtime, request, principal, arg)
        except AppError as exc:
            response = app_error_response(request, exc)
        except RequestValidationError as exc:
            response = validation_error_response(request, exc)
        except BodyTooLarge:
            raise  # the request-context middleware answers 413
        except ClientDisconnect:
            return  # nobody to answer; not a server error
        except Exception as exc:
            response = internal_error_response(request, exc)
        with contextlib.suppress(ClientDisconnect):  # the caller left mid-answer: nobody to tell
            await response(scope, receive, send)


async def _send_json(send: Send, body: bytes) -> None:
    """A 200 JSON answer, without building a Starlette response."""
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _read_body(receive: Receive) -> bytes:
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnect()
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


async def _check_request(scope: Scope, receive: Receive) -> CheckRequest:
    """The body of `/authz/check`, validated as FastAPI would (422 naming the field)."""
    if not _is_json(scope):
        raise RequestValidationError(_NOT_JSON)
    body = await _read_body(receive)
    try:
        return CheckRequest.model_validate_json(body)
    except ValidationError as exc:
        raise RequestValidationError(exc.errors(include_url=False)) from None
