"""The forwarding pool (`Runtime.upstream`): an httpx transport the relay calls directly.

Two layers, both made for the one job of relaying a query:

- `UpstreamTransport`, the pool. httpx's default pool (httpcore's `AsyncConnectionPool`)
  re-examines every connection and every queued request whenever a request starts or ends: with
  32 callers in flight it answered ~350 requests/s on this machine, and fewer the larger the
  pool. This one keeps, per origin, a stack of idle HTTP/1.1 connections: checking one out looks
  at one connection, and a caller that finds the pool full waits in line for the next connection
  handed back. It follows no redirect and keeps no cookie (one process forwards for every
  tenant and user); timeouts come in the request's `timeout` extension, as httpx passes them.
- `_Connection`, one HTTP/1.1 connection: an asyncio protocol whose responses are parsed by
  llhttp (`httptools`, the parser uvicorn serves Warden's own requests with). httpcore's
  connection (h11 in pure Python over anyio streams, a cancel scope per read and write) cost
  ~600 µs of CPU per exchange on this machine; this costs a small fraction of that. Request
  headers are checked as h11 checked them (no line breaks or control characters: a value such
  as an identity header can never split the request), the connection is opened only to the
  addresses the outbound guard judged (`GuardedBackend.targets`), and reading stops while a
  body's consumer is behind (back-pressure, see `DEFAULT_RECEIVE_BUFFER`).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
import ssl
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httptools
import httpx

from app.core.outbound import GuardedBackend, OutboundRefused

_Key = tuple[bytes, bytes, int]  # (scheme, host, port)


def _key(url: httpx.URL) -> _Key:
    port = url.port or (443 if url.raw_scheme == b"https" else 80)
    return (url.raw_scheme, url.raw_host, port)


# The response extension naming the loop time by which the whole exchange must end (or None).
DEADLINE_EXTENSION = "warden.deadline"


class DeadlineExceeded(httpx.TimeoutException):
    """The whole exchange (waiting for a connection, connecting, sending, the answer and its
    body) outlasted the transport's deadline."""


def _deadline_error() -> DeadlineExceeded:
    return DeadlineExceeded("the upstream exchange outlasted its deadline")


# Back-pressure whatever the event loop. The relay reads the upstream only when the caller took
# the previous chunk, but a loop's transport reads whatever the kernel holds once it may read:
# uvloop (libuv) reads up to 32 times per readiness, megabytes into memory for a caller that
# stopped reading. A fixed receive buffer (the kernel doubles it; no autotuning) bounds both
# what the kernel holds for a stalled stream and what one read-ahead can take in; it also caps
# one connection's throughput at about twice the buffer per round trip. A connection stops
# reading once `PAUSE_AT` bytes of body wait for their consumer.
DEFAULT_RECEIVE_BUFFER = 128 * 1024
PAUSE_AT = 64 * 1024

# RFC 9110 field names are tokens; values carry no line breaks or other controls (HTAB aside).
_FIELD_NAME = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_FIELD_VALUE_BAD = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
_TARGET_BAD = re.compile(rb"[\x00-\x20\x7f]")


def _request_head(request: httpx.Request) -> bytes:
    """The request line and header block, refusing anything that would not be one header."""
    target = request.url.raw_path
    if _TARGET_BAD.search(target):
        raise httpx.LocalProtocolError("illegal request target")
    lines = [b"%s %s HTTP/1.1\r\n" % (request.method.encode("ascii"), target)]
    for name, value in request.headers.raw:
        if _FIELD_NAME.fullmatch(name) is None or _FIELD_VALUE_BAD.search(value):
            raise httpx.LocalProtocolError(f"illegal header {name!r}")
        lines.append(b"%s: %s\r\n" % (name, value))
    lines.append(b"\r\n")
    return b"".join(lines)


_NO_BODY_STATUS = frozenset({204, 304})


class _Connection(asyncio.Protocol):
    """One HTTP/1.1 connection to one origin: opened on its first exchange, then one exchange
    at a time. Idle means connected, between exchanges, and nothing unexpected arrived."""

    def __init__(
        self,
        key: _Key,
        *,
        backend: GuardedBackend | None,
        ssl_context: ssl.SSLContext | None,
        receive_buffer: int,
        keepalive_expiry: float,
    ) -> None:
        self.key = key
        self._backend = backend
        self._ssl = ssl_context
        self._receive_buffer = receive_buffer
        self._keepalive_expiry = keepalive_expiry
        self._transport: asyncio.Transport | None = None
        self._loop = asyncio.get_running_loop()
        self._closed = False
        self._busy = False  # an exchange is under way (from sending until the body is done)
        self._reusable = True
        self._idle_since = 0.0
        # The exchange's response, filled in by the parser's callbacks.
        self._parser: httptools.HttpResponseParser | None = None
        self._head_only = False
        self._informational = False
        self._extra = False  # bytes of a second answer arrived after this one
        self._status = 0
        self._reason = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._head_done = False
        self._until_close = False  # a body without length or chunking: it ends at EOF
        self._chunks: deque[bytes] = deque()
        self._buffered = 0
        self._paused = False
        self._body_done = False
        self._error: Exception | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._drain: asyncio.Future[None] | None = None
        self._write_paused = False

    # ------------------------------------------------------------------ the pool's questions

    def is_idle(self) -> bool:
        return not self._busy and not self._closed and self._transport is not None

    def is_closed(self) -> bool:
        return self._closed

    def has_expired(self) -> bool:
        if self._closed or self._transport is None or self._transport.is_closing():
            return True
        return not self._busy and self._loop.time() - self._idle_since > self._keepalive_expiry

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        """The socket's details (`socket`, `peername`, ...), as a network stream answers."""
        return default if self._transport is None else self._transport.get_extra_info(name, default)

    async def aclose(self) -> None:
        self._close()

    def _close(self) -> None:
        self._closed = True
        self._reusable = False
        if self._transport is not None:
            self._transport.close()

    # ------------------------------------------------------------------ connecting

    async def _connect(self, timeout: float | None) -> None:  # noqa: ASYNC109
        scheme, raw_host, port = self.key
        host = raw_host.decode("ascii")
        try:
            async with asyncio.timeout(timeout):
                targets = [host] if self._backend is None else await self._backend.targets(host)
                error: OSError | None = None
                for target in targets:
                    try:
                        sock = await _open_socket(target, port, self._receive_buffer)
                    except OSError as exc:
                        error = exc
                        continue
                    tls = scheme == b"https"
                    try:
                        await self._loop.create_connection(
                            lambda: self,
                            sock=sock,
                            ssl=self._ssl if tls else None,
                            server_hostname=host if tls else None,
                        )
                    except BaseException:
                        sock.close()  # (a failed TLS handshake leaves it to its owner)
                        raise
                    return
                assert error is not None  # noqa: S101  (targets is never empty)
                raise error
        except TimeoutError:
            self._close()
            raise httpx.ConnectTimeout(f"connecting to {host}:{port} timed out") from None
        except OutboundRefused as exc:
            self._close()
            raise httpx.ConnectError(f"refused by the outbound guard: {exc}") from exc
        except (OSError, ssl.SSLError) as exc:
            self._close()
            raise httpx.ConnectError(f"connecting to {host}:{port} failed: {exc}") from exc
        except BaseException:
            self._close()
            raise

    # ------------------------------------------------------------------ asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        parser = self._parser
        if parser is None or self._body_done:
            # Bytes nobody asked for (between exchanges, or after a complete answer): the
            # connection's framing can no longer be trusted.
            self._close()
            return
        try:
            parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(httpx.RemoteProtocolError(f"malformed upstream answer: {exc}"))
            self._close()

    def eof_received(self) -> bool | None:
        return None  # the transport closes itself; connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        self._reusable = False
        if self._busy and not self._body_done:
            if self._head_done and self._until_close and exc is None:
                self._body_done = True  # the body of an answer without a length ends here
            else:
                self._fail(
                    httpx.RemoteProtocolError("the upstream closed the connection mid-answer")
                )
        self._wake()
        if self._drain is not None and not self._drain.done():
            self._drain.set_exception(httpx.WriteError("the upstream closed the connection"))

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        if self._drain is not None and not self._drain.done():
            self._drain.set_result(None)

    # ------------------------------------------------------------------ llhttp's callbacks

    def on_message_begin(self) -> None:
        if self._body_done:  # a second answer to one request: framing is lost
            self._extra = True
            self._reusable = False

    def on_status(self, reason: bytes) -> None:
        if not self._extra:
            self._reason += reason

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self._extra:
            self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        assert self._parser is not None  # noqa: S101
        if self._extra:
            return
        status = self._parser.get_status_code()
        if status < 200:  # 100 Continue and friends: the answer is still to come
            self._informational = True
            return
        self._status = status
        self._reusable = self._reusable and self._parser.should_keep_alive()
        if self._head_only or status in _NO_BODY_STATUS:
            framed = True
        else:
            framed = any(
                name.lower() in (b"content-length", b"transfer-encoding")
                for name, _ in self._headers
            )
        self._until_close = not framed
        self._head_done = True
        if self._head_only:  # a HEAD answer has no body, whatever its length says
            self._body_done = True
            self._reusable = False  # (llhttp, not told, would wait for one)
        self._wake()

    def on_body(self, chunk: bytes) -> None:
        if self._informational or self._body_done:
            return
        self._chunks.append(chunk)
        self._buffered += len(chunk)
        if self._buffered >= PAUSE_AT and not self._paused and self._transport is not None:
            self._paused = True
            self._transport.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        if self._extra:
            return
        if self._informational:
            self._informational = False
            self._reason = b""
            self._headers = []
            return
        self._body_done = True
        self._wake()

    # ------------------------------------------------------------------ one exchange

    def _fail(self, error: Exception) -> None:
        if self._error is None:
            self._error = error
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def _wait(self, timeout: float | None) -> None:  # noqa: ASYNC109
        """Until the parser has news (head, body, end or error)."""
        self._waiter = self._loop.create_future()
        try:
            await self._until(self._waiter, timeout, httpx.ReadTimeout, "answer")
        finally:
            self._waiter = None

    async def _write(self, data: bytes, timeout: float | None) -> None:  # noqa: ASYNC109
        if self._closed or self._transport is None:
            raise httpx.WriteError("the upstream closed the connection")
        self._transport.write(data)
        if self._write_paused:  # until the upstream has taken enough of it
            self._drain = self._loop.create_future()
            try:
                await self._until(self._drain, timeout, httpx.WriteTimeout, "take the request")
            finally:
                self._drain = None

    async def _until(
        self,
        signal: asyncio.Future[None],
        timeout: float | None,  # noqa: ASYNC109
        error: type[httpx.TimeoutException],
        what: str,
    ) -> None:
        """`signal`, or the connection closed and `error` once `timeout` has passed."""
        try:
            async with asyncio.timeout(timeout):
                await signal
        except TimeoutError:
            self._close()
            raise error(f"the upstream did not {what} in time") from None

    async def exchange(
        self, request: httpx.Request
    ) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        """Send `request` and read the answer's head: (status, headers, reason phrase). The body
        is then `read`, and the exchange ended by `release`, before the connection is reused."""
        timeouts = request.extensions.get("timeout", {})
        if self._transport is None:
            await self._connect(timeouts.get("connect"))
        head = _request_head(request)
        self._busy = True
        self._parser = httptools.HttpResponseParser(self)
        self._head_only = request.method == "HEAD"
        self._informational = self._extra = False
        self._status, self._reason, self._headers = 0, b"", []
        self._head_done = self._until_close = self._body_done = False
        self._chunks.clear()
        self._buffered = 0
        self._error = None
        write_timeout = timeouts.get("write")
        if isinstance(request.stream, httpx.ByteStream):
            await self._write(head + request.content, write_timeout)
        else:
            await self._write(head, write_timeout)
            chunked = request.headers.get("transfer-encoding", "").lower() == "chunked"
            async for chunk in request.stream:  # type: ignore[union-attr]
                if chunk:
                    framed = b"%x\r\n%s\r\n" % (len(chunk), chunk) if chunked else chunk
                    await self._write(framed, write_timeout)
            if chunked:
                await self._write(b"0\r\n\r\n", write_timeout)
        read_timeout = timeouts.get("read")
        while not self._head_done:
            if self._error is not None:
                raise self._error
            await self._wait(read_timeout)
        return self._status, self._headers, self._reason

    async def read(self, timeout: float | None) -> bytes | None:  # noqa: ASYNC109
        """The next piece of the body, None at its end."""
        while True:
            if self._chunks:
                chunk = self._chunks.popleft()
                self._buffered -= len(chunk)
                if self._paused and self._buffered < PAUSE_AT and self._transport is not None:
                    self._paused = False
                    self._transport.resume_reading()
                return chunk
            if self._body_done:
                return None
            if self._error is not None:
                raise self._error
            await self._wait(timeout)

    def release(self) -> None:
        """The exchange is over: an answer read to its end on a keep-alive connection leaves it
        idle; anything else (an unread body, an error, `Connection: close`) closes it."""
        self._busy = False
        self._parser = None
        self._chunks.clear()
        self._buffered = 0
        if not (self._body_done and self._reusable and self._error is None) or self._closed:
            self._close()
            return
        if self._paused and self._transport is not None:
            self._paused = False
            self._transport.resume_reading()
        self._idle_since = self._loop.time()


async def _open_socket(host: str, port: int, receive_buffer: int) -> socket.socket:
    """A TCP socket connected to `host` (an address, or an allow-listed name the system
    resolves), its receive buffer fixed before the handshake (see `DEFAULT_RECEIVE_BUFFER`)."""
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    error: OSError | None = None
    for family, kind, proto, _, address in infos:
        sock = socket.socket(family, kind, proto)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.setblocking(False)
            await loop.sock_connect(sock, address)
            return sock
        except OSError as exc:
            sock.close()
            error = exc
        except BaseException:
            sock.close()
            raise
    raise error or OSError(f"{host} has no address")


class _ResponseStream(httpx.AsyncByteStream):
    """The upstream's body; closing it hands the connection back to the pool. Every read ends
    by the exchange's deadline: a body trickled a byte at a time is cut, not waited out."""

    def __init__(
        self,
        connection: _Connection,
        release: Callable[[], Awaitable[None]],
        deadline: float | None,
        read_timeout: float | None,
    ):
        self._connection = connection
        self._release = release
        self._deadline = deadline
        self._read_timeout = read_timeout
        self._closed = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        while True:
            try:
                async with asyncio.timeout_at(self._deadline):
                    chunk = await self._connection.read(self._read_timeout)
            except TimeoutError:
                await self.aclose()  # mid-body: the connection cannot be reused, it is closed
                raise _deadline_error() from None
            if chunk is None:
                return
            yield chunk

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        await self._release()


# What a waiter is handed: an idle connection of its origin, or a slot reserved for a new one.
_RESERVED = None
_Handoff = _Connection | None


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
    upstream socket's receive buffer (see `DEFAULT_RECEIVE_BUFFER`); `ssl_context` verifies
    https upstreams (default: httpx's, certifi's roots)."""

    def __init__(
        self,
        *,
        max_connections: int,
        max_connections_per_origin: int | None = None,
        deadline_seconds: float | None = None,
        keepalive_expiry: float = 5.0,
        network_backend: GuardedBackend | None = None,
        receive_buffer: int = DEFAULT_RECEIVE_BUFFER,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.max_connections = max_connections
        self.receive_buffer = receive_buffer
        # https upstreams: httpx's defaults (certifi's roots, the host name checked).
        self._ssl = ssl_context or httpx.create_ssl_context()
        self.max_per_origin = min(max_connections_per_origin or max_connections, max_connections)
        self.deadline_seconds = deadline_seconds
        # The outbound guard's backend judges the address each connection is opened to.
        self.network_backend = network_backend
        self.keepalive_expiry = keepalive_expiry
        self.open = 0  # connections counted against the limit: busy, idle or connecting
        self.open_by_origin: dict[_Key, int] = {}
        self._idle: dict[_Key, list[_Connection]] = {}
        # One line per origin; the dict's order is the round-robin order.
        self._waiters: dict[_Key, deque[asyncio.Future[_Handoff]]] = {}
        self._closed = False

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        key = _key(request.url)
        loop = asyncio.get_running_loop()
        deadline = None if self.deadline_seconds is None else loop.time() + self.deadline_seconds
        timeouts = request.extensions.get("timeout", {})
        try:
            async with asyncio.timeout_at(deadline):
                connection = await self._checkout(key, pool_timeout=timeouts.get("pool"))
        except TimeoutError:
            raise _deadline_error() from None
        try:
            async with asyncio.timeout_at(deadline):
                status, headers, reason = await connection.exchange(request)
        except TimeoutError:
            connection.release()  # mid-exchange: closed, not reused
            await self._checkin_key(key, connection)
            raise _deadline_error() from None
        except BaseException:
            connection.release()
            await self._checkin_key(key, connection)
            raise

        async def release() -> None:
            connection.release()
            await self._checkin_key(key, connection)

        return httpx.Response(
            status_code=status,
            headers=headers,
            stream=_ResponseStream(connection, release, deadline, timeouts.get("read")),
            extensions={
                "http_version": b"HTTP/1.1",
                "reason_phrase": reason,
                "network_stream": connection,
                # (the relay bounds its sends to the caller by the same deadline)
                DEADLINE_EXTENSION: deadline,
            },
        )

    def _new_connection(self, key: _Key) -> _Connection:
        return _Connection(
            key,
            backend=self.network_backend,
            ssl_context=self._ssl,
            receive_buffer=self.receive_buffer,
            keepalive_expiry=self.keepalive_expiry,
        )

    async def _checkout(self, key: _Key, *, pool_timeout: float | None) -> _Connection:
        if self._closed:
            raise httpx.TransportError("the upstream pool is closed")
        if not self._waiters.get(key):  # never ahead of callers already waiting for this origin
            stale: list[_Connection] = []
            got, handoff = self._take(key, stale)
            await self._close_all(stale)
            if got:
                return handoff or self._new_connection(key)
        handoff = await self._wait(key, pool_timeout)
        if self._closed:
            if handoff is not None:
                await self._close_all([handoff])
            raise httpx.TransportError("the upstream pool is closed")
        return handoff or self._new_connection(key)

    def _take(self, key: _Key, stale: list[_Connection]) -> tuple[bool, _Handoff]:
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

    async def _checkin_key(self, key: _Key, connection: _Connection) -> None:
        stale: list[_Connection] = []
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
        stale: list[_Connection] = []
        self._hand_out(stale)
        await self._close_all(stale)

    def _hand_out(self, stale: list[_Connection]) -> None:
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
        connection: _Connection,
        stale: list[_Connection],
    ) -> None:
        self.open -= 1
        self._uncount(key)
        stale.append(connection)

    async def _close_all(self, connections: list[_Connection]) -> None:
        for connection in connections:
            with contextlib.suppress(Exception):
                await connection.aclose()

    def _evict_one_idle(self, stale: list[_Connection]) -> None:
        """The pool is full: count out the oldest idle connection to another origin, if any."""
        for key, idle in self._idle.items():
            if idle:
                self._count_out(key, idle.pop(0), stale)
                return

    async def aclose(self) -> None:
        self._closed = True
        stale: list[_Connection] = []
        for key, idle in self._idle.items():
            while idle:
                self._count_out(key, idle.pop(), stale)
        for line in self._waiters.values():
            for waiter in line:
                if not waiter.done():
                    waiter.set_result(_RESERVED)  # woken to find the pool closed
        await self._close_all(stale)
