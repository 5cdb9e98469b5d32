"""The forwarding pool's own HTTP/1.1 connection (`app.authz.upstream._Connection`) on the wire,
against raw-socket upstreams on 127.0.0.1: what it writes can never be more than one request,
what it reads is framed as the upstream framed it, and an upstream that breaks the protocol
costs a 502-style error and its connection, never a slot or a wrong answer to the next caller."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import httpx
import pytest

from app.authz.upstream import UpstreamTransport
from tests.support.servers import RawHandler, serve_raw


@contextlib.asynccontextmanager
async def raw_upstream(handler: RawHandler) -> AsyncIterator[tuple[str, list[bytes]]]:
    """`serve_raw` whose handler reads request heads through `reader.head()`; yields the URL
    and every head read so far."""
    heads: list[bytes] = []

    async def recording(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await handler(_Recorder(reader, heads), writer)  # type: ignore[arg-type]

    async with serve_raw(recording) as url:
        yield url, heads


class _Recorder:
    """A stream reader that keeps every request head read through `head()`."""

    def __init__(self, reader: asyncio.StreamReader, heads: list[bytes]) -> None:
        self.reader = reader
        self.heads = heads

    async def head(self) -> bytes:
        head = await self.reader.readuntil(b"\r\n\r\n")
        self.heads.append(head)
        return head

    def __getattr__(self, name: str):
        return getattr(self.reader, name)


def pool(size: int = 2) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        transport=UpstreamTransport(max_connections=size, deadline_seconds=5.0),
        timeout=httpx.Timeout(3.0),
    )


def open_slots(http: httpx.AsyncClient) -> int:
    transport = http._transport
    assert isinstance(transport, UpstreamTransport)
    return transport.open


OK = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"


async def answer_ok_forever(reader, writer) -> None:
    while True:
        await reader.head()
        writer.write(OK)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("x-user-email", "a@b.example\r\nx-injected: 1"),
        ("x-user-email", "a@b.example\nx-injected: 1"),
        ("x-user-email", "a@b.example\rGET /admin HTTP/1.1"),
        ("x-user-email", "nul\x00byte"),
        ("x-bad name", "v"),
        ("x-bad:name", "v"),
    ],
)
async def test_a_header_that_would_split_the_request_is_never_sent(name, value):
    async with raw_upstream(answer_ok_forever) as (url, heads), pool() as http:
        with pytest.raises(httpx.LocalProtocolError):
            await http.get(f"{url}/", headers={name: value})
        assert all(b"x-injected" not in head and b"/admin" not in head for head in heads)
        assert open_slots(http) == 0
        assert (await http.get(f"{url}/")).text == "ok"  # the pool is unharmed


async def test_identity_with_non_ascii_characters_travels_as_utf8():
    async with raw_upstream(answer_ok_forever) as (url, heads), pool() as http:
        headers = httpx.Headers({"x-user-email": "zoë@example.test"}, encoding="utf-8")
        assert (await http.get(f"{url}/", headers=headers)).text == "ok"
        assert "x-user-email: zoë@example.test".encode() in heads[-1]


async def test_a_streamed_request_body_is_sent_chunked():
    seen: list[bytes] = []

    async def read_chunked(reader, writer) -> None:
        head = await reader.head()
        assert b"transfer-encoding: chunked" in head.lower()
        body = await reader.readuntil(b"0\r\n\r\n")
        seen.append(body)
        writer.write(OK)

    async def parts() -> AsyncIterator[bytes]:
        yield b"hello "
        yield b""
        yield b"world"

    async with raw_upstream(read_chunked) as (url, _), pool() as http:
        assert (await http.post(f"{url}/", content=parts())).text == "ok"
    assert seen == [b"6\r\nhello \r\n5\r\nworld\r\n0\r\n\r\n"]


async def test_an_answer_without_a_length_ends_when_the_upstream_closes():
    async def until_close(reader, writer) -> None:
        await reader.head()
        writer.write(b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\nall of ")
        await asyncio.sleep(0.05)
        writer.write(b"this")

    async with raw_upstream(until_close) as (url, _), pool() as http:
        r = await http.get(f"{url}/")
        assert r.text == "all of this"
        assert open_slots(http) == 0  # not reused: it is closed


async def test_informational_answers_are_skipped():
    async def continue_then_ok(reader, writer) -> None:
        await reader.head()
        writer.write(
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\ncontent-length: 4\r\n\r\ndone"
        )
        await reader.head()
        writer.write(OK)

    async with raw_upstream(continue_then_ok) as (url, _), pool(1) as http:
        r = await http.post(f"{url}/", content=b"x")
        assert (r.status_code, r.text) == (201, "done")
        assert (await http.get(f"{url}/")).text == "ok"  # the same connection, still in step


async def test_a_head_answer_has_no_body_whatever_its_length_says():
    async def head_answer(reader, writer) -> None:
        await reader.head()
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\n")
        await asyncio.sleep(5)

    async with raw_upstream(head_answer) as (url, _), pool() as http:
        r = await asyncio.wait_for(http.head(f"{url}/"), 2)
        assert (r.status_code, r.content) == (200, b"")
        assert open_slots(http) == 0


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ntransfer-encoding: chunked\r\n\r\n"
        b"2\r\nok\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 3\r\n\r\nok!",
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\nok\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nbad header line\r\n\r\n",
        b"SMTP ready\r\n\r\n",
    ],
)
async def test_a_malformed_or_ambiguous_answer_is_an_error_and_costs_its_connection(answer):
    async def broken(reader, writer) -> None:
        await reader.head()
        writer.write(answer)
        await asyncio.sleep(1)

    async with raw_upstream(broken) as (url, _), pool(1) as http:
        with pytest.raises(httpx.RemoteProtocolError):
            await http.get(f"{url}/")
        assert open_slots(http) == 0


async def test_bytes_after_a_complete_answer_make_the_connection_unusable():
    """An upstream that answers twice to one request (or smuggles a second answer into the
    first) must not have its extra answer handed to the next caller."""
    connections = 0

    async def answers_twice(reader, writer) -> None:
        nonlocal connections
        connections += 1
        await reader.head()
        writer.write(OK + b"HTTP/1.1 200 OK\r\ncontent-length: 6\r\n\r\nforged")
        with contextlib.suppress(asyncio.IncompleteReadError):
            while True:
                await reader.head()
                writer.write(OK)

    async with raw_upstream(answers_twice) as (url, _), pool(1) as http:
        assert (await http.get(f"{url}/")).text == "ok"
        await asyncio.sleep(0.1)
        assert (await http.get(f"{url}/")).text == "ok"  # never "forged"
        assert connections == 2


async def test_an_upstream_closing_mid_answer_is_an_error():
    async def cut(reader, writer) -> None:
        await reader.head()
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nonly part")

    async with raw_upstream(cut) as (url, _), pool(1) as http:
        with pytest.raises(httpx.RemoteProtocolError):
            await http.get(f"{url}/")
        assert open_slots(http) == 0


async def test_an_upstream_that_never_answers_is_a_read_timeout():
    async def silent(reader, writer) -> None:
        await reader.head()
        await asyncio.sleep(5)

    async with raw_upstream(silent) as (url, _):
        async with httpx.AsyncClient(
            transport=UpstreamTransport(max_connections=1), timeout=httpx.Timeout(0.3)
        ) as http:
            with pytest.raises(httpx.ReadTimeout):
                await http.get(f"{url}/")
            assert open_slots(http) == 0
