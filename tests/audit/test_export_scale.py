"""The export streams any number of events with flat memory (100k events, SQLite or PostgreSQL)."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import gc
import json
import re
import time
import tracemalloc
from typing import Any
from urllib.parse import urlencode

from tests.audit.helpers import bulk_append

EVENTS = 100_000


async def stream_through_asgi(
    app: Any, path: str, params: dict[str, str], headers: dict[str, str]
) -> dict[str, Any]:
    """Call the app as a server would and consume the body chunk by chunk, keeping none of it.

    (httpx's ASGI transport buffers whole bodies, which would measure the client, not us.)"""
    done = asyncio.Event()
    result: dict[str, Any] = {"lines": 0, "bytes": 0, "chunks": 0, "first": b"", "last": b""}
    scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.4"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": urlencode(params).encode(),
        "root_path": "",
        "headers": [(b"host", b"warden.test")]
        + [(k.lower().encode(), v.encode()) for k, v in headers.items()],
        "client": ("127.0.0.1", 40123),
        "server": ("warden.test", 80),
    }
    sent_request = False

    async def receive() -> dict[str, Any]:
        nonlocal sent_request
        if not sent_request:
            sent_request = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await done.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            result["status"] = message["status"]
            result["headers"] = {k.decode(): v.decode() for k, v in message["headers"]}
        elif message["type"] == "http.response.body":
            body = message.get("body", b"")
            if body:
                result["chunks"] += 1
                result["lines"] += body.count(b"\n")
                result["bytes"] += len(body)
                if not result["first"]:
                    result["first"] = body[: body.find(b"\n") + 1]
                result["last"] = body[body.rfind(b"\n", 0, len(body) - 1) + 1 :]
            if not message.get("more_body", False):
                done.set()

    await app(scope, receive, send)
    return result


class PeakMemory:
    """How far the process's memory peaked above where it stood when the block began.

    Linux keeps the peak resident size (VmHWM) for free and lets a process reset it, so a
    100k-event export is measured at full speed; freed heap is handed back first so that memory
    left over from building the data cannot hide growth. Where the reset is not available,
    tracemalloc measures the same thing (several times slower)."""

    def __enter__(self) -> PeakMemory:
        gc.collect()
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        try:
            with open("/proc/self/clear_refs", "w") as handle:
                handle.write("5")  # resets VmHWM to the current resident size
            self.traced = False
            self.start = _status("VmRSS")
        except OSError:
            self.traced = True
            tracemalloc.start()
            self.start = tracemalloc.get_traced_memory()[0]
        return self

    def __exit__(self, *exc: object) -> None:
        if self.traced:
            self.growth = tracemalloc.get_traced_memory()[1] - self.start
            tracemalloc.stop()
        else:
            self.growth = _status("VmHWM") - self.start


def _status(field: str) -> int:
    with open("/proc/self/status") as handle:
        match = re.search(rf"^{field}:\s+(\d+) kB", handle.read(), re.M)
    assert match is not None
    return int(match.group(1)) * 1024


async def test_100k_events_stream_with_flat_memory(app, runtime, tenant):
    started = time.monotonic()
    await bulk_append(runtime.sessionmaker, tenant.id, EVENTS)
    inserted = time.monotonic()

    with PeakMemory() as memory:
        result = await stream_through_asgi(
            app,
            "/api/v1/audit-events/export",
            {"format": "jsonl", "action": "test.bulk"},
            tenant.owner.headers,
        )
    exported = time.monotonic()

    assert result["status"] == 200
    assert result["headers"]["content-disposition"].startswith("attachment;")
    assert result["lines"] == EVENTS
    first, last = json.loads(result["first"]), json.loads(result["last"])
    assert first["details"] == {"n": 0}  # oldest first
    assert last["details"] == {"n": EVENTS - 1}
    # ~30 MB went through; holding it (or a list of its rows) would add at least that much.
    assert result["bytes"] > 25_000_000
    assert memory.growth < 8_000_000, f"peak memory grew by {memory.growth} bytes"
    print(
        f"insert {inserted - started:.1f}s, export {exported - inserted:.1f}s, "
        f"{result['bytes']} bytes in {result['chunks']} chunks, peak growth {memory.growth} bytes"
    )
