"""Forwarding an allowed query to the endpoint's upstream."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator, Collection
from dataclasses import dataclass, field
from typing import Any

import httpx
from fastapi import Request
from starlette.responses import Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from app.authz.compiled import CompiledEndpoint
from app.authz.upstream import DEADLINE_EXTENSION, UpstreamTransport
from app.core.context import current_request
from app.core.errors import UpstreamError, UpstreamTimeout
from app.core.identity import Principal
from app.core.outbound import OutboundRefused, check_outbound_url

# Only these request headers travel upstream; credentials of the caller never do.
USER_AGENT = "warden"
FORWARDED_REQUEST_HEADERS = ("content-type", "accept", "accept-encoding", "content-encoding")
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "content-length",
        "set-cookie",
    }
)


def upstream_headers(
    request: Request, endpoint: CompiledEndpoint, principal: Principal
) -> dict[str, str]:
    """Headers sent upstream: content negotiation, identity, and the injected credential."""
    headers = {
        name: value
        for name in FORWARDED_REQUEST_HEADERS
        if (value := request.headers.get(name)) is not None
    }
    headers["User-Agent"] = USER_AGENT  # the caller's own never travels
    headers["X-User-ID"] = principal.id
    headers["X-User-Email"] = principal.email or ""
    headers["X-Tenant"] = principal.tenant_slug
    request_id = current_request().request_id
    if request_id:
        headers["X-Request-ID"] = request_id
    if endpoint.credential is not None:
        header, value = endpoint.credential
        headers[header] = value
    return headers


@dataclass(frozen=True)
class Relay:
    """The process's forwarding pool, its timeouts, and the hosts it may reach although
    private. Requests go to the pool directly: an httpx client in front of it would add only
    what forwarding never uses (redirects, auth, cookies, default headers) at ~200 µs a query."""

    transport: UpstreamTransport
    timeout: httpx.Timeout
    allowed_hosts: Collection[str]
    _extensions: dict[str, Any] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_extensions", {"timeout": self.timeout.as_dict()})

    async def send(
        self, request: Request, endpoint: CompiledEndpoint, principal: Principal
    ) -> tuple[Response, int]:
        """Forward an allowed query; returns the response to relay and the upstream status."""
        return await relay(self, request, endpoint, principal)


@functools.lru_cache(maxsize=4096)
def _parsed(url: str) -> httpx.URL:
    """An upstream URL parsed once (an endpoint's URL is fixed until it is edited)."""
    return httpx.URL(url)


async def relay(
    via: Relay,
    request: Request,
    endpoint: CompiledEndpoint,
    principal: Principal,
) -> tuple[Response, int]:
    """Stream the body to the upstream and its answer back; 502/504 on failure."""
    assert endpoint.upstream_url is not None  # noqa: S101  (callers check)
    try:
        # Re-checked at call time: DNS may have changed since the URL was stored.
        await check_outbound_url(endpoint.upstream_url, via.allowed_hosts)
    except OutboundRefused as exc:
        raise UpstreamError(f"Upstream refused by the outbound guard: {exc}.") from exc

    async def body() -> AsyncIterator[bytes]:
        async for chunk in request.stream():
            if chunk:
                yield chunk

    # Small bodies (the usual query) travel whole; large or unsized ones are streamed both ways.
    content = await request.body() if _small(request.headers.get("content-length")) else body()
    upstream_request = httpx.Request(
        "POST",
        _parsed(endpoint.upstream_url),
        # UTF-8 on the wire: an identity with non-ASCII characters (`Zoë`) is not an error.
        headers=httpx.Headers(upstream_headers(request, endpoint, principal), encoding="utf-8"),
        content=content,
        extensions=via._extensions,
    )
    try:
        upstream = await via.transport.handle_async_request(upstream_request)
    except httpx.TimeoutException as exc:
        raise UpstreamTimeout() from exc
    except httpx.HTTPError as exc:
        raise UpstreamError() from exc
    headers = {
        name: value for name, value in upstream.headers.items() if name.lower() not in HOP_BY_HOP
    }
    if _small(upstream.headers.get("content-length")):
        try:
            raw = b"".join([chunk async for chunk in upstream.aiter_raw()])  # still encoded
        except httpx.TimeoutException as exc:
            raise UpstreamTimeout() from exc
        except httpx.HTTPError as exc:
            raise UpstreamError() from exc
        finally:
            await upstream.aclose()
        return Response(
            raw, status_code=upstream.status_code, headers=headers
        ), upstream.status_code
    return UpstreamStream(upstream, headers), upstream.status_code


class UpstreamStream(StreamingResponse):
    """An upstream's answer relayed as it arrives. The upstream response (and with it the pooled
    connection) is closed however the relay ends: a background task would not run when the
    caller hangs up mid-stream, and each such hang-up would keep a connection out of the pool."""

    def __init__(self, upstream: httpx.Response, headers: dict[str, str]) -> None:
        super().__init__(upstream.aiter_raw(), status_code=upstream.status_code, headers=headers)
        self.upstream = upstream

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # The exchange's deadline bounds the relay too: a caller that stops reading holds the
        # upstream connection until then, not for as long as it likes.
        deadline = self.upstream.extensions.get(DEADLINE_EXTENSION)
        try:
            async with asyncio.timeout_at(deadline):
                await super().__call__(scope, receive, send)
        except TimeoutError:
            raise UpstreamStreamCut("the relayed stream outlasted the upstream deadline") from None
        finally:
            await self.upstream.aclose()


class UpstreamStreamCut(httpx.TimeoutException):
    """A relayed stream cut at the exchange's deadline (the answer had already started)."""


BUFFERED_BODY_BYTES = 64 * 1024


def _small(content_length: str | None) -> bool:
    """A declared length small enough to hold in memory (no length: stream it)."""
    return (
        content_length is not None
        and content_length.isdigit()
        and (int(content_length) <= BUFFERED_BODY_BYTES)
    )
