"""The connection pool behind the one forwarding `httpx.AsyncClient` (`Runtime.http`).

httpx's default transport (httpcore's `AsyncConnectionPool`) re-examines every connection and
every queued request whenever a request starts or ends, polling each idle socket: with 32
callers in flight it answered ~350 requests/s on this machine, and fewer the larger the pool.
This transport keeps, per origin, a stack of idle HTTP/1.1 connections (httpcore's own
`AsyncHTTPConnection`, which speaks the protocol): checking one out looks at one connection,
and a caller that finds the pool full waits in line for the next connection handed back.
Redirects, timeouts and cookies stay the client's business; timeouts reach httpcore through
the request's extensions as with the default transport."""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterator
from http.cookiejar import CookieJar

import httpcore
import httpx


@contextlib.contextmanager
def _as_httpx_errors() -> Iterator[None]:
    """httpcore's exceptions as the httpx ones of the same name (as httpx's own transport)."""
    try:
        yield
    except httpcore.PoolTimeout as exc:
        raise httpx.PoolTimeout(str(exc)) from exc
    except Exception as exc:
        mapped = getattr(httpx, type(exc).__name__, None)
        if type(exc).__module__.startswith("httpcore") and isinstance(mapped, type):
            if issubclass(mapped, httpx.TransportError):
                raise mapped(str(exc)) from exc
        raise


class NoCookies(CookieJar):
    """The forwarding client's cookie jar: one client serves every tenant and user, so an
    upstream's Set-Cookie must never be replayed on someone else's request. Nothing is parsed,
    stored or sent (a jar that merely refused every cookie still parsed each response's)."""

    def extract_cookies(self, response: object, request: object) -> None:
        return None

    def add_cookie_header(self, request: object) -> None:
        return None


_Key = tuple[bytes, bytes, int]


def _key(origin: httpcore.Origin) -> _Key:
    return (origin.scheme, origin.host, origin.port)


class _ResponseStream(httpx.AsyncByteStream):
    """The upstream's body; closing it hands the connection back to the pool."""

    def __init__(self, stream: AsyncIterable[bytes], release: Callable[[], Awaitable[None]]):
        self._stream = stream
        self._release = release
        self._closed = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        with _as_httpx_errors():
            async for chunk in self._stream:
                yield chunk

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            with _as_httpx_errors():
                aclose = getattr(self._stream, "aclose", None)
                if aclose is not None:
                    await aclose()
        finally:
            await self._release()


class UpstreamTransport(httpx.AsyncBaseTransport):
    """HTTP/1.1 keep-alive pool: at most `max_connections` open, idle ones reused newest first,
    closed after `keepalive_expiry` seconds unused."""

    def __init__(
        self,
        *,
        max_connections: int,
        keepalive_expiry: float = 5.0,
        network_backend: httpcore.AsyncNetworkBackend | None = None,
    ) -> None:
        self.max_connections = max_connections
        # The outbound guard's backend judges the address each connection is opened to.
        self.network_backend = network_backend
        self.keepalive_expiry = keepalive_expiry
        self.open = 0  # connections counted against the limit: busy, idle or connecting
        self._idle: dict[_Key, list[httpcore.AsyncHTTPConnection]] = {}
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._closed = False

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if not isinstance(request.stream, httpx.AsyncByteStream):
            raise TypeError("the upstream transport needs an async request body")
        core = httpcore.Request(
            method=request.method,
            url=httpcore.URL(
                scheme=request.url.raw_scheme,
                host=request.url.raw_host,
                port=request.url.port,
                target=request.url.raw_path,
            ),
            headers=request.headers.raw,
            content=request.stream,
            extensions=request.extensions,
        )
        origin = core.url.origin
        timeouts = request.extensions.get("timeout", {})
        connection = await self._checkout(origin, pool_timeout=timeouts.get("pool"))
        try:
            with _as_httpx_errors():
                response = await connection.handle_async_request(core)
        except BaseException:
            await self._checkin(origin, connection)
            raise
        if not isinstance(response.stream, AsyncIterable):
            raise TypeError("httpcore answered with a synchronous stream")

        async def release() -> None:
            await self._checkin(origin, connection)

        return httpx.Response(
            status_code=response.status,
            headers=response.headers,
            stream=_ResponseStream(response.stream, release),
            extensions=response.extensions,
        )

    async def _checkout(
        self, origin: httpcore.Origin, *, pool_timeout: float | None
    ) -> httpcore.AsyncHTTPConnection:
        loop = asyncio.get_running_loop()
        deadline = None if pool_timeout is None else loop.time() + pool_timeout
        while True:
            if self._closed:
                raise httpx.TransportError("the upstream pool is closed")
            idle = self._idle.get(_key(origin))
            while idle:
                connection = idle.pop()
                # One connection examined (one poll of its socket), not the whole pool.
                if connection.is_idle() and not connection.has_expired():
                    return connection
                await self._discard(connection)
            if self.open >= self.max_connections:
                await self._evict_one_idle()
            if self.open < self.max_connections:
                self.open += 1
                return httpcore.AsyncHTTPConnection(
                    origin=origin,
                    keepalive_expiry=self.keepalive_expiry,
                    network_backend=self.network_backend,
                )
            await self._wait(loop, deadline)

    async def _wait(self, loop: asyncio.AbstractEventLoop, deadline: float | None) -> None:
        waiter: asyncio.Future[None] = loop.create_future()
        self._waiters.append(waiter)
        try:
            remaining = None if deadline is None else max(deadline - loop.time(), 0)
            await asyncio.wait_for(waiter, remaining)
        except TimeoutError:
            raise httpx.PoolTimeout("no upstream connection became free in time") from None
        finally:
            if not waiter.done():
                waiter.cancel()
            with contextlib.suppress(ValueError):
                self._waiters.remove(waiter)

    async def _checkin(
        self, origin: httpcore.Origin, connection: httpcore.AsyncHTTPConnection
    ) -> None:
        # (httpcore calls a connection that failed to connect both idle and closed)
        if connection.is_idle() and not connection.is_closed() and not self._closed:
            self._idle.setdefault(_key(origin), []).append(connection)
        else:  # closed by either side, or left mid-exchange by an error
            await self._discard(connection)
        self._wake_one()

    async def _discard(self, connection: httpcore.AsyncHTTPConnection) -> None:
        self.open -= 1
        with contextlib.suppress(Exception):
            await connection.aclose()

    async def _evict_one_idle(self) -> None:
        """The pool is full: close the oldest idle connection to another origin, if any."""
        for idle in self._idle.values():
            if idle:
                await self._discard(idle.pop(0))
                return

    def _wake_one(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    async def aclose(self) -> None:
        self._closed = True
        for idle in self._idle.values():
            while idle:
                await self._discard(idle.pop())
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
