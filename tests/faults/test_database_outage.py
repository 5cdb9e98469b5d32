"""PostgreSQL killed, then frozen (SIGSTOP: sockets open, nothing answers): admin reads and
writes and logins get a bounded 503 `database_unavailable` with Retry-After, /ready says the
database is down within its probe deadline, and Warden recovers without a restart once the
database is back. The cluster is this test's own (initdb in a temporary directory), whatever
database the rest of the suite runs on."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
from sqlalchemy import exc as sa_errors
from sqlalchemy import text

from app.core.config import get_settings
from app.core.errors import DatabaseUnavailable, outage_of
from tests.conftest import PASSWORD, TenantHandle, make_endpoint, make_tenant, random_ip
from tests.faults.services import PostgresCluster, postgres_cluster


@pytest.fixture
def cluster() -> Iterator[PostgresCluster]:
    with postgres_cluster() as pg:
        yield pg


@pytest.fixture
async def warden(cluster: PostgresCluster) -> AsyncIterator[Any]:
    """An app of its own on the test's cluster (migrated), without Redis, with short bounds."""
    from app.cli import run_migrations
    from app.main import create_app

    await asyncio.to_thread(run_migrations, cluster.url)
    settings = get_settings().model_copy(
        update={
            "database_url": cluster.url,
            "redis_url": None,
            "database_connect_timeout_seconds": 2,
            "database_statement_timeout_seconds": 1.0,
            "database_pool_timeout_seconds": 1.0,
        }
    )
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        yield app


def client_for(app: Any) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, client=(random_ip(), 40000))
    return httpx.AsyncClient(transport=transport, base_url="http://warden.test", timeout=30)


async def timed(request: Any) -> tuple[httpx.Response, float]:
    started = time.monotonic()
    response = await asyncio.wait_for(request, 15)  # a hang fails here, not the suite
    return response, time.monotonic() - started


async def assert_refused(
    client: httpx.AsyncClient, tenant: TenantHandle, endpoint: str, bound: float
) -> None:
    """Admin read, admin write, login and a cold decision (the hot path, never decided before,
    so nothing is cached): each a bounded 503 naming the database."""
    user = {"email": f"new@{tenant.slug}.example", "password": PASSWORD, "role": "member"}
    login = {"email": tenant.owner.email, "password": PASSWORD, "tenant": tenant.slug}
    requests = {
        "admin read": client.get("/api/v1/users", headers=tenant.owner.headers),
        "admin write": client.post("/api/v1/users", json=user, headers=tenant.owner.headers),
        "login": client.post("/api/v1/auth/login", json=login),
        "cold decision": client.post(
            "/api/v1/authz/check", json={"endpoint": endpoint}, headers=tenant.owner.headers
        ),
    }
    for name, request in requests.items():
        r, took = await timed(request)
        assert r.status_code == 503, (name, r.text)
        assert r.json()["error"]["code"] == "database_unavailable", name
        assert r.json()["error"]["request_id"] == r.headers["x-request-id"]
        assert int(r.headers["retry-after"]) >= 1, name
        assert "Traceback" not in r.text
        assert took < bound, f"{name} took {took:.2f}s"
    r, took = await timed(client.get("/ready"))
    assert r.status_code == 503, r.text
    assert r.json()["checks"] == {"database": "unavailable"}
    assert took < 1.5, f"/ready took {took:.2f}s"


async def assert_recovered(client: httpx.AsyncClient, tenant: TenantHandle) -> None:
    deadline = time.monotonic() + 10
    while True:
        r = await client.get("/api/v1/users", headers=tenant.owner.headers)
        if r.status_code == 200:
            break
        assert time.monotonic() < deadline, f"no recovery: {r.status_code} {r.text}"
        await asyncio.sleep(0.2)
    assert (await client.get("/ready")).status_code == 200
    await tenant.login(tenant.owner.email)


async def test_engine_bounds_statements(warden: Any) -> None:
    """Every connection carries the server-side statement timeout from the settings."""
    async with warden.state.runtime.engine.connect() as conn:
        assert (await conn.execute(text("SHOW statement_timeout"))).scalar() == "1s"
        with pytest.raises(sa_errors.OperationalError) as cancelled:
            await conn.execute(text("SELECT pg_sleep(3)"))
    assert isinstance(outage_of(cancelled.value), DatabaseUnavailable)


async def test_database_killed_then_frozen(warden: Any, cluster: PostgresCluster) -> None:
    async with client_for(warden) as client:
        tenant = await make_tenant(client)
        endpoint = (await make_endpoint(tenant))["slug"]
        assert (await client.get("/api/v1/users", headers=tenant.owner.headers)).status_code == 200

        cluster.kill()  # connections reset, new ones refused: refused at once
        await assert_refused(client, tenant, endpoint, bound=1.5)
        cluster.start()
        await assert_recovered(client, tenant)

        cluster.freeze()  # nothing answers: refused within the configured bounds
        try:
            # First, with idle pooled connections whose ping will never be answered.
            r, took = await timed(client.get("/ready"))
            assert r.status_code == 503, r.text
            assert took < 1.5, f"/ready took {took:.2f}s"
            # client grace (statement 1 s + 1 s) for a pooled connection, + connect (2 s)
            await assert_refused(client, tenant, endpoint, bound=6.0)
        finally:
            cluster.thaw()
        await assert_recovered(client, tenant)
