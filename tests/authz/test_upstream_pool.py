"""The forwarding client's pool (`app.authz.upstream`) against real servers on 127.0.0.1:
bounded, reused, fair to waiters, and never leaking a slot when an upstream misbehaves."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Iterator

import httpx
import pytest
from starlette.requests import ClientDisconnect

from app.authz.relay import UpstreamStream
from app.authz.upstream import UpstreamTransport
from tests.support.servers import free_port, serve_in_thread

PEERS: set[int] = set()


async def peer_app(scope, receive, send):  # the client port tells connections apart
    assert scope["type"] == "http"
    PEERS.add(scope["client"][1])
    if scope["path"] == "/slow":
        await asyncio.sleep(0.3)
    headers = [(b"content-type", b"text/plain"), (b"set-cookie", b"session=upstream-secret")]
    if scope["path"] == "/cookie":
        seen = [v for k, v in scope["headers"] if k == b"cookie"]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"|".join(seen) or b"none"})
        return
    if scope["path"] == "/stream":  # a body sent in pieces, without a length
        start = {"type": "http.response.start", "status": 200, "headers": headers}
        await send(start)
        for _ in range(50):
            await send({"type": "http.response.body", "body": b"x" * 1024, "more_body": True})
            await asyncio.sleep(0.01)
        await send({"type": "http.response.body", "body": b""})
        return
    if scope["path"] == "/close":
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": str(scope["client"][1]).encode()})


@pytest.fixture(scope="module")
def peer() -> Iterator[str]:
    with serve_in_thread(peer_app) as url:
        yield url


def client(size: int, **timeouts: float) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        transport=UpstreamTransport(max_connections=size),
        timeout=httpx.Timeout(5.0, **timeouts),
    )


async def test_an_upstream_cookie_is_never_replayed(peer):
    """The pool keeps no cookies: one process forwards for every tenant and user, so an
    upstream's Set-Cookie must never ride on someone else's request (the relay calls the pool
    directly, with no client and no cookie jar in front)."""
    transport = UpstreamTransport(max_connections=2)
    try:
        first = await transport.handle_async_request(httpx.Request("GET", f"{peer}/cookie"))
        await first.aread()
        assert first.headers["set-cookie"] == "session=upstream-secret"
        second = await transport.handle_async_request(httpx.Request("GET", f"{peer}/cookie"))
        assert (await second.aread()) == b"none"  # no Cookie header on the next request
    finally:
        await transport.aclose()


async def test_concurrent_requests_share_a_bounded_set_of_connections(peer):
    PEERS.clear()
    async with client(4) as http:
        answers = await asyncio.gather(*(http.get(f"{peer}/fast") for _ in range(64)))
        assert [r.status_code for r in answers] == [200] * 64
        assert 1 <= len(PEERS) <= 4  # 64 requests, at most 4 connections
        transport = http._transport
        assert isinstance(transport, UpstreamTransport)
        assert transport.open <= 4
        before = set(PEERS)
        await http.get(f"{peer}/fast")
        assert PEERS == before  # an idle connection was reused, not a new one opened


async def test_a_full_pool_makes_callers_wait_then_times_out(peer):
    async with client(1, pool=0.1) as http:
        slow = asyncio.create_task(http.post(f"{peer}/slow"))
        await asyncio.sleep(0.05)
        with pytest.raises(httpx.PoolTimeout):
            await http.get(f"{peer}/fast")
        assert (await slow).status_code == 200
        assert (await http.get(f"{peer}/fast")).status_code == 200  # the slot came back


async def test_waiters_are_served_when_a_connection_frees(peer):
    async with client(1) as http:
        answers = await asyncio.gather(
            http.post(f"{peer}/slow"), *(http.get(f"{peer}/fast") for _ in range(5))
        )
        assert [r.status_code for r in answers] == [200] * 6


async def test_connections_closed_by_the_upstream_are_replaced(peer):
    PEERS.clear()
    async with client(2) as http:
        for _ in range(3):
            assert (await http.get(f"{peer}/close")).status_code == 200
        assert len(PEERS) == 3  # `Connection: close` each time: a fresh connection each time
        assert http._transport.open == 0  # type: ignore[attr-defined]
        assert (await http.get(f"{peer}/fast")).status_code == 200


async def test_a_refused_connection_frees_its_slot(peer):
    dead = f"http://127.0.0.1:{free_port()}"
    async with client(1) as http:
        for _ in range(3):
            with pytest.raises(httpx.ConnectError):
                await http.get(dead)
        assert http._transport.open == 0  # type: ignore[attr-defined]
        assert (await http.get(f"{peer}/fast")).status_code == 200


async def test_an_upstream_that_drops_idle_connections_is_survived():
    port = free_port()
    listener = socket.create_server(("127.0.0.1", port))
    listener.setblocking(False)

    async def serve_once_then_hang_up() -> None:
        loop = asyncio.get_running_loop()
        for _ in range(2):
            conn, _ = await loop.sock_accept(listener)
            await loop.sock_recv(conn, 65536)
            await loop.sock_sendall(conn, b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
            await asyncio.sleep(0.05)
            conn.close()  # keep-alive promised, then the socket is closed while idle

    server = asyncio.create_task(serve_once_then_hang_up())
    try:
        async with client(1) as http:
            assert (await http.get(f"http://127.0.0.1:{port}/")).text == "ok"
            await asyncio.sleep(0.2)  # the idle connection is now closed by the peer
            assert (await http.get(f"http://127.0.0.1:{port}/")).text == "ok"
    finally:
        await asyncio.wait_for(server, 5)
        listener.close()


async def test_a_closed_pool_refuses_new_requests(peer):
    http = client(2)
    assert (await http.get(f"{peer}/fast")).status_code == 200
    await http.aclose()
    with pytest.raises(RuntimeError):  # httpx refuses a closed client before the transport
        await http.get(f"{peer}/fast")


@pytest.mark.parametrize("spec_version", ["2.3", "2.4"])
async def test_a_caller_hanging_up_mid_stream_gives_the_connection_back(peer, spec_version):
    async with client(1) as http:
        upstream = await http.send(http.build_request("GET", f"{peer}/stream"), stream=True)
        relay = UpstreamStream(upstream, {})
        sent = 0

        async def send(message):
            nonlocal sent
            sent += 1
            if sent == 3:  # the start line and one chunk went out, then the caller is gone
                raise OSError("connection reset by peer")

        async def receive():
            await asyncio.sleep(3600)  # (2.3: no disconnect message arrives in this test)

        scope = {"type": "http", "asgi": {"spec_version": spec_version}}
        with contextlib.suppress(ClientDisconnect, OSError):
            await relay(scope, receive, send)
        assert upstream.is_closed
        # The one pooled slot is free again: the next request is not left waiting for it.
        r = await asyncio.wait_for(http.get(f"{peer}/fast"), 2)
        assert r.status_code == 200
