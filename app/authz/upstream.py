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
import socket
from collections import deque
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterator
from http.cookiejar import CookieJar

import httpcore
import httpx

from app.core.outbound import httpcore_request


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


# The response extension naming the loop time by which the whole exchange must end (or None).
DEADLINE_EXTENSION = "warden.deadline"


class DeadlineExceeded(httpx.TimeoutException):
    """The whole exchange (waiting for a connection, connecting, sending, the answer and its
    body) outlasted the transport's deadline."""


def _deadline_error() -> DeadlineExceeded:
    return DeadlineExceeded("the upstream exchange outlasted its deadline")


class _ResponseStream(httpx.AsyncByteStream):
    """The upstream's body; closing it hands the connection back to the pool. Every read ends
    by the exchange's deadline: a body trickled a byte at a time is cut, not waited out."""

    def __init__(
        self,
        stream: AsyncIterable[bytes],
        release: Callable[[], Awaitable[None]],
        deadline: float | None,
    ):
        self._stream = stream
        self._release = release
        self._deadline = deadline
        self._closed = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        chunks = aiter(self._stream)
        while True:
            try:
                with _as_httpx_errors():
                    async with asyncio.timeout_at(self._deadline):
                        chunk = await anext(chunks)
            except StopAsyncIteration:
                return
            except TimeoutError:
                await self.aclose()  # mid-body: the connection cannot be reused, it is closed
                raise _deadline_error() from None
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


# Back-pressure whatever the event loop. The relay reads the upstream only when the caller took
# the previous chunk, but a loop's transport reads whatever the kernel holds once it may read:
# uvloop (libuv) reads up to 32 times per readiness, megabytes into memory for a caller that
# stopped reading. A fixed receive buffer (the kernel doubles it; no autotuning) bounds both
# what the kernel holds for a stalled stream and what one read-ahead can take in; it also caps
# one connection's throughput at about twice the buffer per round trip.
DEFAULT_RECEIVE_BUFFER = 128 * 1024


# What a waiter is handed: an idle connection of its origin, or a slot reserved for a new one.
_RESERVED = None
_Handoff = httpcore.AsyncHTTPConnection | None


class UpstreamTransport(httpx.AsyncBaseTransport):
    """HTTP/1.1 keep-alive pool: at most `max_connections` open, at most
    `max_connections_per_origin` of them to one origin, idle ones reused newest first and
    closed after `keepalive_expiry` seconds unused.

    Callers that cannot have a connection wait in one line per origin. A connection or slot
    that comes free goes to the origins' lines in turn (round robin), and only to an origin
    below its own limit: one slow upstream holds at most its share of the pool, and a caller
    of a healthy upstream never waits behind a slow one's line.

    `deadline_seconds` bounds a whole exchange, from the wait for a connection to the last byte
    of the body (httpx's own timeouts bound each operation only). `receive_buffer` is each
    upstream socket's receive buffer (see `DEFAULT_RECEIVE_BUFFER`)."""

    def __init__(
        self,
        *,
        max_connections: int,
        max_connections_per_origin: int | None = None,
        deadline_seconds: float | None = None,
        keepalive_expiry: float = 5.0,
        network_backend: httpcore.AsyncNetworkBackend | None = None,
        receive_buffer: int = DEFAULT_RECEIVE_BUFFER,
    ) -> None:
        self.max_connections = max_connections
        self._socket_options = [(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)]
        self.max_per_origin = min(max_connections_per_origin or max_connections, max_connections)
        self.deadline_seconds = deadline_seconds
        # The outbound guard's backend judges the address each connection is opened to.
        self.network_backend = network_backend
        self.keepalive_expiry = keepalive_expiry
        self.open = 0  # connections counted against the limit: busy, idle or connecting
        self.open_by_origin: dict[_Key, int] = {}
        self._idle: dict[_Key, list[httpcore.AsyncHTTPConnection]] = {}
        # One line per origin; the dict's order is the round-robin order.
        self._waiters: dict[_Key, deque[asyncio.Future[_Handoff]]] = {}
        self._closed = False

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        core = httpcore_request(request)
        origin = core.url.origin
        loop = asyncio.get_running_loop()
        deadline = None if self.deadline_seconds is None else loop.time() + self.deadline_seconds
        timeouts = request.extensions.get("timeout", {})
        try:
            async with asyncio.timeout_at(deadline):
                connection = await self._checkout(origin, pool_timeout=timeouts.get("pool"))
        except TimeoutError:
            raise _deadline_error() from None
        try:
            with _as_httpx_errors():
                async with asyncio.timeout_at(deadline):
                    response = await connection.handle_async_request(core)
        except TimeoutError:
            await self._checkin(origin, connection)  # mid-exchange: closed, not reused
            raise _deadline_error() from None
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
            stream=_ResponseStream(response.stream, release, deadline),
            # (the relay bounds its sends to the caller by the same deadline)
            extensions={**response.extensions, DEADLINE_EXTENSION: deadline},
        )

    def _new_connection(self, origin: httpcore.Origin) -> httpcore.AsyncHTTPConnection:
        return httpcore.AsyncHTTPConnection(
            origin=origin,
            keepalive_expiry=self.keepalive_expiry,
            network_backend=self.network_backend,
            socket_options=self._socket_options,
        )

    async def _checkout(
        self, origin: httpcore.Origin, *, pool_timeout: float | None
    ) -> httpcore.AsyncHTTPConnection:
        if self._closed:
            raise httpx.TransportError("the upstream pool is closed")
        key = _key(origin)
        if not self._waiters.get(key):  # never ahead of callers already waiting for this origin
            stale: list[httpcore.AsyncHTTPConnection] = []
            got, handoff = self._take(key, stale)
            await self._close_all(stale)
            if got:
                return handoff or self._new_connection(origin)
        handoff = await self._wait(key, pool_timeout)
        if self._closed:
            if handoff is not None:
                await self._close_all([handoff])
            raise httpx.TransportError("the upstream pool is closed")
        return handoff or self._new_connection(origin)

    def _take(self, key: _Key, stale: list[httpcore.AsyncHTTPConnection]) -> tuple[bool, _Handoff]:
        """(True, an idle connection of this origin or `_RESERVED`: a slot counted for a new
        one), or (False, None): the origin or the pool is at its limit. Connections found
        unusable, or evicted to make room, are counted out and put in `stale` to be closed."""
        idle = self._idle.get(key)
        while idle:
            connection = idle.pop()
            # One connection examined (one poll of its socket), not the whole pool.
            if connection.is_idle() and not connection.has_expired():
                return True, connection
            self._count_out(key, connection, stale)
        if self.open_by_origin.get(key, 0) >= self.max_per_origin:
            return False, None
        if self.open >= self.max_connections:
            self._evict_one_idle(stale)
        if self.open >= self.max_connections:
            return False, None
        self.open += 1
        self.open_by_origin[key] = self.open_by_origin.get(key, 0) + 1
        return True, _RESERVED

    async def _wait(self, key: _Key, pool_timeout: float | None) -> _Handoff:
        waiter: asyncio.Future[_Handoff] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(key, deque()).append(waiter)
        try:
            return await asyncio.wait_for(asyncio.shield(waiter), pool_timeout)
        except BaseException as exc:
            if waiter.done() and not waiter.cancelled():
                # Handed a connection or a slot in the same instant: give it back.
                handoff = waiter.result()
                if handoff is not None:
                    await self._checkin_key(key, handoff)
                else:
                    await self._release_slot(key)
            else:
                waiter.cancel()
            if isinstance(exc, TimeoutError):
                raise httpx.PoolTimeout("no upstream connection became free in time") from None
            raise
        finally:
            line = self._waiters.get(key)
            if line is not None:
                with contextlib.suppress(ValueError):
                    line.remove(waiter)
                if not line:
                    del self._waiters[key]

    async def _checkin(
        self, origin: httpcore.Origin, connection: httpcore.AsyncHTTPConnection
    ) -> None:
        await self._checkin_key(_key(origin), connection)

    async def _checkin_key(self, key: _Key, connection: httpcore.AsyncHTTPConnection) -> None:
        stale: list[httpcore.AsyncHTTPConnection] = []
        # (httpcore calls a connection that failed to connect both idle and closed)
        if connection.is_idle() and not connection.is_closed() and not self._closed:
            self._idle.setdefault(key, []).append(connection)
        else:  # closed by either side, or left mid-exchange by an error
            self._count_out(key, connection, stale)
        self._hand_out(stale)
        await self._close_all(stale)

    async def _release_slot(self, key: _Key) -> None:
        """A reserved slot not used after all."""
        self.open -= 1
        self._uncount(key)
        stale: list[httpcore.AsyncHTTPConnection] = []
        self._hand_out(stale)
        await self._close_all(stale)

    def _hand_out(self, stale: list[httpcore.AsyncHTTPConnection]) -> None:
        """Serve the origins' lines in turn while connections or slots can be had."""
        progress = True
        while progress and self._waiters and not self._closed:
            progress = False
            for key in list(self._waiters):
                line = self._waiters[key]
                while line and line[0].done():  # timed out or cancelled meanwhile
                    line.popleft()
                if not line:
                    del self._waiters[key]
                    continue
                got, handoff = self._take(key, stale)
                if not got:
                    continue
                line.popleft().set_result(handoff)
                # This origin was served: it goes to the back of the turn.
                del self._waiters[key]
                if line:
                    self._waiters[key] = line
                progress = True
                break

    def _uncount(self, key: _Key) -> None:
        left = self.open_by_origin.get(key, 0) - 1
        if left > 0:
            self.open_by_origin[key] = left
        else:
            self.open_by_origin.pop(key, None)

    def _count_out(
        self,
        key: _Key,
        connection: httpcore.AsyncHTTPConnection,
        stale: list[httpcore.AsyncHTTPConnection],
    ) -> None:
        self.open -= 1
        self._uncount(key)
        stale.append(connection)

    async def _close_all(self, connections: list[httpcore.AsyncHTTPConnection]) -> None:
        for connection in connections:
            with contextlib.suppress(Exception):
                await connection.aclose()

    def _evict_one_idle(self, stale: list[httpcore.AsyncHTTPConnection]) -> None:
        """The pool is full: count out the oldest idle connection to another origin, if any."""
        for key, idle in self._idle.items():
            if idle:
                self._count_out(key, idle.pop(0), stale)
                return

    async def aclose(self) -> None:
        self._closed = True
        stale: list[httpcore.AsyncHTTPConnection] = []
        for key, idle in self._idle.items():
            while idle:
                self._count_out(key, idle.pop(), stale)
        for line in self._waiters.values():
            for waiter in line:
                if not waiter.done():
                    waiter.set_result(_RESERVED)  # woken to find the pool closed
        await self._close_all(stale)
