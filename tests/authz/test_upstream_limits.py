"""The forwarding pool against hostile upstreams on 127.0.0.1: a slow upstream cannot starve
another origin (per-origin limits, origins served in turn), and `UPSTREAM_TIMEOUT_SECONDS` is a
deadline for the whole exchange, not for each read (a body trickled a byte at a time is cut)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import statistics
import time
from collections.abc import AsyncIterator

import httpx
import pytest

from app.authz.relay import UpstreamStream
from app.authz.upstream import UpstreamTransport
from tests.support.servers import serve_in_thread, serve_raw


async def slow_app(scope, receive, send):
    assert scope["type"] == "http"
    await asyncio.sleep(2.0)
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"slow"})


async def fast_app(scope, receive, send):
    assert scope["type"] == "http"
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"fast"})


def pool_client(**transport: float) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        transport=UpstreamTransport(**transport),  # type: ignore[arg-type]
        timeout=httpx.Timeout(3.0),
    )


async def test_a_slow_upstream_does_not_starve_a_healthy_one():
    with serve_in_thread(slow_app) as slow, serve_in_thread(fast_app) as fast:
        async with pool_client(
            max_connections=64, max_connections_per_origin=16, deadline_seconds=3.0
        ) as http:
            transport = http._transport
            assert isinstance(transport, UpstreamTransport)
            # 96 callers pile up on the slow upstream (as one tenant's slow endpoint would).
            stuck = [asyncio.create_task(http.get(f"{slow}/")) for _ in range(96)]
            await asyncio.sleep(0.3)
            assert transport.open <= 16  # its share, not the pool

            async def timed() -> float:
                started = time.monotonic()
                r = await http.get(f"{fast}/")
                assert r.status_code == 200
                return time.monotonic() - started

            took = [await timed() for _ in range(10)]
            took += await asyncio.gather(*(timed() for _ in range(40)))
            # Generous: the slow upstream answers after 2 s; a caller queued behind it would
            # wait that long (or time out). A healthy origin is served at once.
            assert statistics.median(took) < 0.5
            assert max(took) < 1.5
            for task in stuck:
                task.cancel()
            await asyncio.gather(*stuck, return_exceptions=True)


async def test_origins_waiting_at_a_full_pool_are_served_in_turn():
    with serve_in_thread(slow_app) as slow, serve_in_thread(fast_app) as fast:
        async with pool_client(
            max_connections=2, max_connections_per_origin=2, deadline_seconds=10.0
        ) as http:
            # The pool is full with slow calls and more slow callers wait in line ...
            stuck = [asyncio.create_task(http.get(f"{slow}/")) for _ in range(8)]
            await asyncio.sleep(0.2)
            # ... a caller of another origin gets the first slot that comes free, not the
            # place after every slow caller already waiting (that would be 8 s).
            started = time.monotonic()
            r = await http.get(f"{fast}/")
            assert r.status_code == 200
            assert time.monotonic() - started < 3.5
            for task in stuck:
                task.cancel()
            await asyncio.gather(*stuck, return_exceptions=True)
            transport = http._transport
            assert isinstance(transport, UpstreamTransport)
            assert transport.open <= 2
            assert not transport._waiters  # cancelled callers leave no place in line


@contextlib.asynccontextmanager
async def trickling_upstream(chunked: bool) -> AsyncIterator[tuple[str, list[socket.socket]]]:
    """Answers at once with headers, then the body one byte every 0.2 s (about 12 s in all)."""
    body = b"x" * 60
    conns: list[socket.socket] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conns.append(writer.get_extra_info("socket"))
        await reader.readuntil(b"\r\n\r\n")
        length = b"transfer-encoding: chunked" if chunked else b"content-length: 60"
        writer.write(b"HTTP/1.1 200 OK\r\n" + length + b"\r\n\r\n")
        for byte in body:
            piece = bytes([byte])
            writer.write(b"1\r\n" + piece + b"\r\n" if chunked else piece)
            await writer.drain()
            await asyncio.sleep(0.2)
        if chunked:
            writer.write(b"0\r\n\r\n")
        await writer.drain()

    async with serve_raw(handle) as url:
        yield url, conns


async def test_a_trickled_body_is_cut_at_the_deadline():
    async with trickling_upstream(chunked=False) as (url, _):
        async with pool_client(max_connections=1, deadline_seconds=1.0) as http:
            started = time.monotonic()
            with pytest.raises(httpx.TimeoutException):  # the relay answers 504 to it
                await http.post(f"{url}/")
            assert time.monotonic() - started < 2.0  # not the 12 s the upstream would take
            assert http._transport.open == 0  # type: ignore[attr-defined]  # closed, not pooled


async def test_a_trickled_stream_is_cut_at_the_deadline_and_its_connection_closed():
    async with trickling_upstream(chunked=True) as (url, _):
        async with pool_client(max_connections=1, deadline_seconds=1.0) as http:
            started = time.monotonic()
            upstream = await http.send(http.build_request("POST", f"{url}/"), stream=True)
            relay = UpstreamStream(upstream, {})
            sent: list[bytes] = []

            async def send(message):
                sent.append(message.get("body", b""))

            async def receive():
                await asyncio.sleep(3600)
                return {"type": "http.disconnect"}

            scope = {"type": "http", "asgi": {"spec_version": "2.4"}}
            with pytest.raises(httpx.TimeoutException):
                await relay(scope, receive, send)
            assert time.monotonic() - started < 2.0
            assert 0 < len(b"".join(sent)) < 60  # a part went out, then the stream was cut
            assert upstream.is_closed
            assert http._transport.open == 0  # type: ignore[attr-defined]


async def test_a_query_to_a_trickling_upstream_is_504_by_the_deadline(client, tenant, runtime):
    from tests.conftest import make_endpoint

    assert runtime.settings.upstream_timeout_seconds == 1.5  # the suite's setting
    async with trickling_upstream(chunked=False) as (url, _):
        ep = await make_endpoint(tenant, upstream_url=f"{url}/")
        started = time.monotonic()
        r = await client.post(f"/api/v1/endpoints/{ep['slug']}/query", headers=tenant.owner.headers)
        assert r.status_code == 504
        assert r.json()["error"]["code"] == "upstream_timeout"
        assert time.monotonic() - started < 3.0  # about the deadline, not the 12 s body


async def test_a_caller_that_stops_reading_holds_the_connection_only_until_the_deadline():
    async def endless(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": []})
        while True:
            await send({"type": "http.response.body", "body": b"x" * 4096, "more_body": True})
            await asyncio.sleep(0.01)

    with serve_in_thread(endless) as url:
        async with pool_client(max_connections=1, deadline_seconds=1.0) as http:
            started = time.monotonic()
            upstream = await http.send(http.build_request("GET", f"{url}/"), stream=True)
            relay = UpstreamStream(upstream, {})
            sent = 0

            async def send(message):
                nonlocal sent
                sent += 1
                if sent > 2:  # the caller stopped reading: its sends block
                    await asyncio.sleep(3600)

            async def receive():
                await asyncio.sleep(3600)
                return {"type": "http.disconnect"}

            scope = {"type": "http", "asgi": {"spec_version": "2.4"}}
            with pytest.raises(httpx.TimeoutException):
                await relay(scope, receive, send)
            assert time.monotonic() - started < 2.0
            assert upstream.is_closed
            assert http._transport.open == 0  # type: ignore[attr-defined]
