"""A client that stops reading a relayed stream stops the relay reading the upstream, whatever
the event loop: the upstream's sends block, and what Warden took off the upstream socket beyond
what it handed on to the client stays within a small bound (uvloop used to read megabytes ahead
into memory per stalled stream).

Measured exactly from the sockets: bytes the upstream got out, less what still sits in its send
queue (SIOCOUTQ) and in Warden's receive queue (SIOCINQ), is what Warden read; less what the
relay passed to the server's `send`, is what it holds."""

from __future__ import annotations

import contextlib
import fcntl
import socket
import struct
import termios
import threading
import time
from collections.abc import Iterator

import httpx
import pytest
import uvicorn

from app.authz.relay import UpstreamStream
from app.authz.upstream import UpstreamTransport
from tests.support.servers import free_port

TOTAL = 1024 * 1024 * 1024  # what the upstream would send: far more than any buffer
MiB = 1024 * 1024


class Firehose:
    """A raw-socket upstream answering with a huge chunked body as fast as it is taken,
    counting the bytes its sends got out."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.sent = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        conn, _ = self.listener.accept()
        self.conn = conn
        conn.settimeout(0.2)
        with contextlib.suppress(OSError):
            while b"\r\n\r\n" not in conn.recv(65536):
                pass
        chunk = b"x" * 65536
        frame = b"%x\r\n" % len(chunk) + chunk + b"\r\n"
        try:
            conn.sendall(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
            while self.sent < TOTAL and not self._stop.is_set():
                try:
                    self.sent += conn.send(frame)  # (counts frame bytes; close enough)
                except TimeoutError:
                    continue  # blocked: nobody is reading
        except OSError:
            pass
        finally:
            conn.close()

    def unsent(self) -> int:
        return _queued(self.conn, termios.TIOCOUTQ)

    def close(self) -> None:
        self._stop.set()
        self.listener.close()
        self._thread.join(timeout=5)


def _queued(sock: socket.socket, request: int) -> int:
    return int(struct.unpack("i", fcntl.ioctl(sock.fileno(), request, b"\0" * 4))[0])


class Relayed:
    """What the relay app saw: the upstream socket, and the body bytes passed to `send`."""

    sock: socket.socket | None = None
    passed = 0


def relay_app(upstream_url: str, seen: Relayed):
    http: dict[str, httpx.AsyncClient] = {}

    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        if "client" not in http:
            http["client"] = httpx.AsyncClient(
                transport=UpstreamTransport(max_connections=32, deadline_seconds=60),
                timeout=httpx.Timeout(60.0),
            )
        client = http["client"]
        upstream = await client.send(client.build_request("GET", upstream_url), stream=True)
        seen.sock = upstream.extensions["network_stream"].get_extra_info("socket")

        async def counted(message):
            seen.passed += len(message.get("body", b""))
            await send(message)

        await UpstreamStream(upstream, {"content-type": "application/octet-stream"})(
            scope, receive, counted
        )

    return app


@contextlib.contextmanager
def serve(app, loop: str) -> Iterator[int]:
    port = free_port()
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, log_config=None, lifespan="off", loop=loop
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "relay server did not start"
        time.sleep(0.02)
    try:
        yield port
    finally:
        server.should_exit = True
        server.force_exit = True
        thread.join(timeout=10)


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_a_client_that_stops_reading_stops_the_upstream_read(loop):
    firehose = Firehose()
    seen = Relayed()
    try:
        with serve(relay_app(f"http://127.0.0.1:{firehose.port}/", seen), loop) as port:
            client = socket.socket()
            client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
            client.connect(("127.0.0.1", port))
            client.sendall(b"GET / HTTP/1.1\r\nhost: relay\r\n\r\n")
            got = 0
            while got < 256 * 1024:  # the stream flows ...
                got += len(client.recv(65536))
            # ... then the client stops reading, and stays connected.
            time.sleep(2.0)
            settled = firehose.sent
            time.sleep(1.0)
            assert firehose.sent == settled  # the upstream is blocked: no longer read
            assert seen.sock is not None
            read = firehose.sent - firehose.unsent() - _queued(seen.sock, termios.FIONREAD)
            held = read - seen.passed  # (chunk framing: 8 bytes in 64 KiB, negligible)
            print(f"{loop}: upstream sent {firehose.sent / MiB:.1f} MiB, held {held / MiB:.2f}")
            assert held < MiB // 2  # one read-ahead of a small receive buffer at most
            assert firehose.sent < 48 * MiB
            client.close()
    finally:
        firehose.close()
