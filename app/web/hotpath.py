"""The enforcement hot path: `POST /authz/check`, `POST /endpoints/{slug}/query` and the
gateways' `/authz/forward` served in front of FastAPI's middleware stack, route matching,
dependency resolution and response validation. Measured on one uvicorn worker, that stack
costs about 75 µs a request (a bare FastAPI hello-world answers 10k req/s, a bare ASGI app
50k): more than a warm decision itself.

`HOT_ROUTES` is the one table of these routes: the hot path matches requests against it, and
`app.web.routes.authz` declares the FastAPI routes (the OpenAPI contract, and the server of any
request the hot path does not take) from the same rows, with the same `serve_*` functions
behind both. `WardenAPI` (`app.main`) hands matching requests to `DecisionRoutes` behind the same
edge middlewares as every other route (request context, CORS, global limit, built from one
list); FastAPI's optional native telemetry does not wrap them."""

from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass

from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from app.authz import service
from app.authz.schemas import CheckRequest, CheckResponse
from app.core.errors import (
    AppError,
    app_error_response,
    internal_error_response,
    validation_error_response,
)
from app.core.identity import Principal
from app.core.middleware import BodyTooLarge
from app.core.schemas import SLUG_PATTERN
from app.web.deps import current_principal
from app.web.state import Runtime

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


# nginx subrequests keep the client's method and Envoy's check request always does.
FORWARD_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


@dataclass(frozen=True)
class HotRoute:
    """One row of the table: `kind` names the `serve_*` function, `path` is FastAPI's template
    under the API prefix (`{slug}` and `{path:path}` are the parameters the hot path knows)."""

    kind: str  # check | query | forward
    path: str
    methods: tuple[str, ...]
    documented: bool = True

    def pattern(self, prefix: str) -> re.Pattern[str]:
        """The regular expression the hot path matches a request path with."""
        body = re.escape(prefix + self.path)
        body = body.replace(re.escape("{slug}"), "(?P<arg>" + SLUG_PATTERN[1:-1] + ")")
        body = body.replace(re.escape("{path:path}"), "(?P<arg>.*)")
        return re.compile(rf"\A{body}\Z")


HOT_ROUTES = (
    HotRoute("check", "/authz/check", ("POST",)),
    HotRoute("query", "/endpoints/{slug}/query", ("POST",)),
    HotRoute("forward", "/authz/forward", ("GET",)),
    HotRoute("forward", "/authz/forward", FORWARD_METHODS[1:], documented=False),
    # Envoy appends the original path to the check request's.
    HotRoute("forward", "/authz/forward/{path:path}", FORWARD_METHODS, documented=False),
)

Route = tuple[str, str | None]  # ("check", None), ("query", slug), ("forward", path suffix)


class HotPath:
    """The decision routes of `prefix` and the app that serves them (`DecisionRoutes` behind
    the edge middlewares); `WardenAPI.__call__` hands matching requests to it."""

    def __init__(self, app: ASGIApp, *, prefix: str, routes: tuple[HotRoute, ...] = HOT_ROUTES):
        self.app = app
        self.prefix = prefix
        self._table = [(frozenset(r.methods), r.pattern(prefix), r.kind) for r in routes]

    def route(self, scope: Scope) -> Route | None:
        """Which decision route a request is for, or None when it is not one of them."""
        if scope["type"] != "http":
            return None
        path: str = scope["path"]
        if not path.startswith(self.prefix):
            return None
        method: str = scope["method"]
        for methods, pattern, kind in self._table:
            if method in methods:
                match = pattern.match(path)
                if match is not None:
                    return (kind, match.groupdict().get("arg"))
        return None


async def serve_check(state: Runtime, principal: Principal, data: CheckRequest) -> CheckResponse:
    """`POST /authz/check`."""
    return await service.check(state.endpoints, state.pipeline, principal, data)


async def serve_query(
    state: Runtime, request: Request, principal: Principal, slug: str
) -> Response:
    """`POST /endpoints/{slug}/query`."""
    return await service.query(
        state.endpoints, state.pipeline, state.relay, request, principal, slug
    )


async def serve_forward(state: Runtime, request: Request, suffix: str | None) -> Response:
    """`/authz/forward` (and Envoy's `/authz/forward/<original path>`)."""
    return await state.gateway.forward_auth(request, suffix)


class DecisionRoutes:
    """The ASGI endpoint behind the edge middlewares; `HotPath` has matched the route."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind, arg = scope["path_params"].pop("route")
        request = Request(scope, receive)
        state: Runtime = scope["app"].state.runtime
        response: Response
        try:
            if kind == "check":
                principal = await current_principal(request, state)
                data = await _check_request(scope, receive)
                result = await serve_check(state, principal, data)
                await _send_json(send, result.model_dump_json().encode())
                return
            if kind == "forward":
                if arg is not None:
                    scope["path_params"]["path"] = arg
                response = await serve_forward(state, request, arg)
            else:
                assert arg is not None  # noqa: S101  (a query route always has its slug)
                scope["path_params"]["slug"] = arg
                principal = await current_principal(request, state)
                response = await serve_query(state, request, principal, arg)
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
