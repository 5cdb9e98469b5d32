"""A frozen Redis (SIGSTOP: connections stay open, nothing answers) turns requests that need it
into quick 503 `redis_unavailable` answers with Retry-After, instead of hanging them, and
Warden recovers by itself once Redis answers again. The Redis is this test's own server."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from app.core.config import get_settings
from tests.conftest import make_tenant, random_ip
from tests.faults.services import RedisServer, redis_server


@pytest.fixture
def redis() -> Any:
    with redis_server() as server:
        yield server


@pytest.fixture
async def warden(database: str, redis: RedisServer) -> AsyncIterator[Any]:
    """An app of its own whose Redis is the test's server (the database is the suite's)."""
    from app.main import create_app

    app = create_app(get_settings().model_copy(update={"redis_url": redis.url}))
    async with app.router.lifespan_context(app):
        yield app


def client_for(app: Any) -> httpx.AsyncClient:
    """A client with an address of its own: its first request opens a global-limit window,
    which is a Redis round trip."""
    transport = httpx.ASGITransport(app=app, client=(random_ip(), 40000))
    return httpx.AsyncClient(transport=transport, base_url="http://warden.test", timeout=30)


async def timed(request: Any) -> tuple[httpx.Response, float]:
    started = time.monotonic()
    response = await asyncio.wait_for(request, 10)  # a hang fails here, not the suite
    return response, time.monotonic() - started


async def test_frozen_redis_refuses_quickly_and_recovers(warden: Any, redis: RedisServer) -> None:
    async with client_for(warden) as client:
        tenant = await make_tenant(client)
        assert (await client.get("/api/v1/users", headers=tenant.owner.headers)).status_code == 200

    redis.freeze()
    try:
        for _ in range(2):
            async with client_for(warden) as client:
                r, took = await timed(client.get("/api/v1/users", headers=tenant.owner.headers))
            assert r.status_code == 503, r.text
            assert r.json()["error"]["code"] == "redis_unavailable"
            assert r.json()["error"]["request_id"] == r.headers["x-request-id"]
            assert int(r.headers["retry-after"]) >= 1
            assert took < 2.0, f"took {took:.2f}s"

        async with client_for(warden) as client:
            r, took = await timed(client.get("/ready"))
        assert r.status_code == 503, r.text
        assert r.json()["checks"] == {"database": "ok", "redis": "unavailable"}
        assert "retry-after" in r.headers
        assert took < 1.5, f"took {took:.2f}s"
    finally:
        redis.thaw()

    deadline = time.monotonic() + 10
    while True:
        async with client_for(warden) as client:
            r = await client.get("/api/v1/users", headers=tenant.owner.headers)
            ready = await client.get("/ready")
        if r.status_code == 200 and ready.status_code == 200:
            break
        assert time.monotonic() < deadline, f"no recovery: {r.status_code} {r.text}"
        await asyncio.sleep(0.2)
