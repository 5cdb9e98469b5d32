"""A revocation survives a Redis restart: Redis is a cache of the database, so a Redis that
comes back empty never lets a logged-out token in again — in the process that revoked it or in
another one, at once or after the mirrors resubscribe. The Redis is this test's own server,
killed (SIGKILL) and started again, empty, on the same port."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import AsyncExitStack
from typing import Any

import httpx
import pytest

from app.core.config import get_settings
from tests.conftest import make_tenant, random_ip
from tests.faults.services import _wait_for_port, require_binary
from tests.support.servers import free_port


class RestartableRedis:
    """A redis-server child without persistence that can be killed and started again empty."""

    def __init__(self) -> None:
        binary = require_binary(shutil.which("redis-server"), "redis-server")
        self.port = free_port()
        self.workdir = tempfile.mkdtemp(prefix="warden-fault-redis-")
        self.argv = [
            binary, "--port", str(self.port), "--bind", "127.0.0.1",
            "--save", "", "--appendonly", "no", "--dir", self.workdir,
        ]  # fmt: skip
        self.proc = self._start()

    def _start(self) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(self.argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _wait_for_port(self.port, time.monotonic() + 10)
        return proc

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def restart_empty(self) -> None:
        self.proc.kill()
        self.proc.wait()
        self.proc = self._start()

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait()
        shutil.rmtree(self.workdir, ignore_errors=True)


@pytest.fixture
def redis() -> Iterator[RestartableRedis]:
    server = RestartableRedis()
    try:
        yield server
    finally:
        server.stop()


def client_for(app: Any) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, client=(random_ip(), 40000))
    return httpx.AsyncClient(transport=transport, base_url="http://warden.test", timeout=30)


async def me(app: Any, token: str) -> int:
    async with client_for(app) as client:
        r = await client.get("/api/v1/auth/me", headers={"Authorization": f"Bearer {token}"})
        return r.status_code


async def test_a_logged_out_token_stays_out_through_a_redis_restart(
    database: str, redis: RestartableRedis
) -> None:
    from app.main import create_app

    settings = get_settings().model_copy(update={"redis_url": redis.url})
    async with AsyncExitStack() as stack:
        apps = []
        for _ in range(2):  # two Warden processes sharing the database and this Redis
            app = create_app(settings)
            await stack.enter_async_context(app.router.lifespan_context(app))
            apps.append(app)
        a, b = apps
        async with client_for(a) as client:
            tenant = await make_tenant(client)
            token = tenant.owner.access_token
            assert await me(b, token) == 200  # B has verified (and cached) the token
            r = await client.post(
                "/api/v1/auth/logout",
                json={"refresh_token": tenant.owner.refresh_token},
                headers=tenant.owner.headers,
            )
            assert r.status_code == 204
        assert (await me(a, token), await me(b, token)) == (401, 401)

        redis.restart_empty()
        # From the moment Redis is back, empty, through the resubscriptions and the refill from
        # the database, both processes refuse the token: never once a 200.
        answers: list[int] = []
        deadline = time.monotonic() + 4
        while time.monotonic() < deadline:
            answers += [await me(a, token), await me(b, token)]
            await asyncio.sleep(0.05)
        assert 200 not in answers, answers
        assert answers[-2:] == [401, 401], answers


async def test_an_emptied_redis_is_not_believed(redis: RestartableRedis, runtime: Any) -> None:
    # A process whose mirror is not trusted (here: never subscribed) and that never held the
    # revocation in memory reads Redis; once Redis lost its keys, "not in Redis" must not mean
    # "not revoked": the database answers, and Redis is refilled from it.
    from datetime import timedelta
    from uuid import uuid4

    from redis.asyncio import Redis

    from app.core.redis import redis_options
    from app.credentials.revocation import RevocationStore

    client = Redis.from_url(redis.url, **redis_options(1.0))  # as the app's: one retry
    lifetimes = {"token_lifetime": timedelta(minutes=5), "leeway": timedelta(0)}
    revoking = RevocationStore(runtime.sessionmaker, client, **lifetimes)
    reading = RevocationStore(runtime.sessionmaker, client, **lifetimes)
    tenant = str(uuid4())
    try:
        async with runtime.sessionmaker() as session, session.begin():
            await revoking.revoke_tenant(session, tenant)
        await revoking.load()  # Redis filled from the database
        check = {"jti": None, "user_id": None, "tenant_id": tenant, "version": 0}
        assert await reading.is_revoked(**check)

        redis.restart_empty()
        assert await reading.is_revoked(**check)  # asked the database, not the empty Redis
        for _ in range(50):  # and the refill puts it back into Redis
            if await client.get(f"warden:revoked:tenant:{tenant}") is not None:
                break
            await asyncio.sleep(0.05)
        assert await client.get(f"warden:revoked:tenant:{tenant}") is not None
        assert await reading.is_revoked(**check)
    finally:
        await reading.aclose()
        await revoking.aclose()
        await client.aclose()
