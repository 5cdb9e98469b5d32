"""Pure ASGI middleware: request id, log context, security headers, body size cap, access log."""

from __future__ import annotations

import itertools
import json
import logging
import re
import time
import uuid

import structlog
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.core.context import RequestContext, set_request_context
from app.core.logging import REQUEST_LOG_KEYS

log = structlog.get_logger("warden.access")
_access_log = logging.getLogger("warden.access")
# Request ids need to be unique, not secret: a random per-process prefix and a counter cost
# far less than a uuid4 per request.
_ID_PREFIX = uuid.uuid4().hex[:12]
_ID_COUNTER = itertools.count(1)


def new_request_id() -> str:
    """A request id unique across processes and restarts."""
    return f"{_ID_PREFIX}{next(_ID_COUNTER):012x}"


_SAFE_ID = re.compile(r"\A[A-Za-z0-9._-]{1,64}\Z")
MAX_BODY_BYTES = 1024 * 1024


def _client_ip(scope: Scope, forwarded_for: str | None) -> str | None:
    """The caller's address: the first X-Forwarded-For hop when given (only from a trusted
    proxy), else the peer."""
    if forwarded_for:
        first = forwarded_for.split(",")[0].strip()
        if first:
            return first[:64]
    client = scope.get("client")
    return client[0] if client else None


def _forwarded_hosts(values: list[str]) -> set[str]:
    """Every host an X-Forwarded-For list names, parsed as a server's proxy-header support
    parses it (`1.2.3.4`, `1.2.3.4:80`, `[::1]`, `[::1]:80`, `::1`)."""
    hosts: set[str] = set()
    for entry in ",".join(values).split(","):
        entry = entry.strip()
        if not entry:
            continue
        hosts.add(entry)
        if entry.startswith("["):
            hosts.add(entry[1:].split("]", 1)[0])
        elif entry.count(":") == 1:
            hosts.add(entry.split(":", 1)[0])
    return hosts


def peer_is_rewritten(scope: Scope, forwarded_for: list[str]) -> bool:
    """True when `scope["client"]` may not be the TCP peer but a value taken from the request's
    own X-Forwarded-For, as a server's proxy-header support does before Warden runs.

    A bare `uvicorn app.main:app` enables `proxy_headers` and trusts `FORWARDED_ALLOW_IPS`
    (127.0.0.1 and ::1 by default): for those peers its middleware replaces `scope["client"]`
    with an X-Forwarded-For entry, in place, and keeps nothing of the real peer. Warden cannot
    switch that off from inside the app, nor see the original peer, but it can see the mark
    the rewrite always leaves: the client address is one of the X-Forwarded-For entries. A
    genuine peer almost never names itself there; if it does, it only loses its own address."""
    client = scope.get("client")
    return bool(forwarded_for and client and str(client[0]) in _forwarded_hosts(forwarded_for))


# Added to every response unless the route set them (cache-control included: no-store).
_HEADERS = (
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
    (b"cache-control", b"no-store"),
)
_SECURE_HEADERS = (*_HEADERS, (b"strict-transport-security", b"max-age=63072000"))


class RequestContextMiddleware:
    """Assigns the request id, binds log context and adds the headers every response carries."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        trust_forwarded_for: bool = False,
        hsts: bool = False,
        max_body_bytes: int = MAX_BODY_BYTES,
    ) -> None:
        self.app = app
        self.trust_forwarded_for = trust_forwarded_for
        self.hsts = hsts
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = user_agent = declared = None
        forwarded: list[str] = []
        for name, value in scope["headers"]:  # one pass; the first of repeated headers counts
            if name == b"x-request-id":
                incoming = incoming or value.decode("latin-1")
            elif name == b"user-agent":
                user_agent = user_agent or value.decode("latin-1")
            elif name == b"content-length":
                declared = declared or value.decode("latin-1")
            elif name == b"x-forwarded-for":
                forwarded.append(value.decode("latin-1"))
        request_id = incoming if incoming and _SAFE_ID.match(incoming) else new_request_id()
        if self.trust_forwarded_for:
            ip = _client_ip(scope, forwarded[0] if forwarded else None)
        elif peer_is_rewritten(scope, forwarded):
            # Only TRUST_FORWARDED_FOR decides whether forwarded headers count, whatever serves
            # Warden. `warden serve` runs uvicorn without proxy headers; under a bare `uvicorn
            # app.main:app` (proxy headers on by default) a rewritten peer is recognised here
            # and the request gets no address at all: the real peer is lost, and the
            # header's value is the caller's choice. Every such request then shares one
            # per-IP bucket ("unknown") instead of picking a fresh one per request, and a
            # policy on the client address fails closed. Run uvicorn with
            # `--no-proxy-headers` (or set TRUST_FORWARDED_FOR behind a proxy) to keep it.
            ip = None
            scope["client"] = None
        else:
            ip = _client_ip(scope, None)
        scope.setdefault("state", {})["request_id"] = request_id
        set_request_context(RequestContext(request_id=request_id, ip=ip, user_agent=user_agent))
        # Not clear_contextvars(), which walks the whole context: a server gives each request a
        # fresh copy anyway; these keys cover a caller that reuses one (in-process clients).
        structlog.contextvars.bind_contextvars(request_id=request_id)
        structlog.contextvars.unbind_contextvars(*REQUEST_LOG_KEYS)
        started = time.perf_counter()
        status = 500
        path: str = scope.get("path", "")
        https = scope.get("scheme") == "https" or self.hsts

        if declared is not None and declared.isdigit() and int(declared) > self.max_body_bytes:
            await _too_large(send, request_id)
            return

        # With a Content-Length (checked above) the server delivers no more than that many bytes;
        # only a chunked body has to be counted as it arrives.
        guarded = (
            receive
            if declared is not None and declared.isdigit()
            else _counted(receive, self.max_body_bytes)
        )
        extra = ((b"x-request-id", request_id.encode()), *(_SECURE_HEADERS if https else _HEADERS))

        async def send_with_headers(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = list(message.get("headers", ()))
                names = {name.lower() for name, _ in headers}
                headers.extend(h for h in extra if h[0] not in names)
                message["headers"] = headers
            await send(message)

        try:
            await self.app(scope, guarded, send_with_headers)
        except BodyTooLarge:
            await _too_large(send, request_id)
            status = 413
        finally:
            if _access_log.isEnabledFor(logging.INFO):
                log.info(
                    "request",
                    method=scope.get("method"),
                    path=path,
                    status=status,
                    duration_ms=round((time.perf_counter() - started) * 1000, 2),
                    ip=ip,
                )


class BodyTooLarge(Exception):
    """Raised from `receive` once a body outgrows the cap; this middleware answers 413."""


def _counted(receive: Receive, cap: int) -> Receive:
    """`receive` for a body without a Content-Length: counted as it arrives, `BodyTooLarge`
    past `cap` bytes."""
    received = 0

    async def counted() -> Message:
        nonlocal received
        message = await receive()
        if message["type"] == "http.request":
            received += len(message.get("body", b""))
            if received > cap:
                raise BodyTooLarge
        return message

    return counted


async def _too_large(send: Send, request_id: str) -> None:
    body = json.dumps(
        {
            "error": {
                "code": "payload_too_large",
                "message": "Request body too large.",
                "request_id": request_id,
            }
        }
    ).encode()
    headers: list[tuple[bytes, bytes]] = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"x-request-id", request_id.encode()),
    ]
    await send({"type": "http.response.start", "status": 413, "headers": headers})
    await send({"type": "http.response.body", "body": body})
