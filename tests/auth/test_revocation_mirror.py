"""Revocations with Redis (`RevocationStore` + `InvalidationBus`): a process answers from its
mirror only while the mirror is provably complete, and reads Redis whenever that is in doubt.
Two stores on one Redis stand for two Warden processes."""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import timedelta

import pytest
from redis.asyncio import Redis

from app.core.errors import ServiceUnavailable
from app.core.invalidation import InvalidationBus
from app.credentials.revocation import RevocationStore
from tests.support.services import REDIS, needs_redis

pytestmark = needs_redis


class Process:
    """A revocation store with its own Redis client and bus, as in one Warden process."""

    def __init__(self, sessionmaker) -> None:
        self.redis = Redis.from_url(REDIS)
        self.bus = InvalidationBus(self.redis)
        self.store = RevocationStore(
            sessionmaker, self.redis, token_lifetime=timedelta(minutes=5), leeway=timedelta(0)
        )
        self.store.attach(self.bus)
        self.reads = 0
        mget = self.redis.mget

        async def counted(*args, **kwargs):
            self.reads += 1
            return await mget(*args, **kwargs)

        self.redis.mget = counted  # type: ignore[method-assign]

    async def start(self) -> None:
        self.bus.start()
        await until(self.store._mirror_trusted)

    async def revoked(self, tenant: str, user: str | None = None, version: int = 0) -> bool:
        return await self.store.is_revoked(
            jti=None, user_id=user, tenant_id=tenant, version=version
        )

    async def stop(self) -> None:
        await self.bus.stop()
        await self.store.aclose()
        await self.redis.aclose()


async def until(condition, within: float = 3.0) -> None:
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.01)


@pytest.fixture
async def processes(runtime):
    pair = (Process(runtime.sessionmaker), Process(runtime.sessionmaker))
    try:
        for process in pair:
            await process.start()
        yield pair
    finally:
        for process in pair:
            await process.stop()


async def announce(process: Process, subject: str, min_version: int = 0) -> None:
    await process.store._publish(subject, min_version, timedelta(minutes=5).total_seconds())


async def test_a_revocation_reaches_the_other_mirror_without_reads(processes):
    a, b = processes
    tenant = str(uuid.uuid4())
    assert not await b.revoked(tenant)
    await announce(a, f"tenant:{tenant}")
    await until(lambda: f"tenant:{tenant}" in b.store._memory, within=1.0)
    assert await b.revoked(tenant)
    user = str(uuid.uuid4())
    await announce(a, f"user:{user}", min_version=3)
    await until(lambda: f"user:{user}" in b.store._memory, within=1.0)
    assert await b.revoked(str(uuid.uuid4()), user=user, version=2)
    assert not await b.revoked(str(uuid.uuid4()), user=user, version=3)
    assert b.reads == 0  # every answer came from the mirror


async def test_a_silent_subscription_makes_the_check_read_redis(processes):
    a, b = processes
    tenant = str(uuid.uuid4())
    assert b.bus._task is not None
    b.bus._task.cancel()  # b hears nothing any more, but does not know it yet
    await asyncio.sleep(RevocationStore.TRUST_SECONDS + 0.3)
    await announce(a, f"tenant:{tenant}")  # b's mirror misses this
    assert f"tenant:{tenant}" not in b.store._memory
    assert await b.revoked(tenant)  # ...and still answers right, from Redis
    assert b.reads == 1


async def test_a_resubscription_refills_the_mirror_from_redis(processes):
    _, b = processes
    tenant = str(uuid.uuid4())
    # Written by a process whose announcement b never got (e.g. while b was reconnecting).
    await b.redis.set(f"warden:revoked:tenant:{tenant}", "0", ex=300)
    await b.redis.set("warden:revocations:filled", "1")  # a Redis filled from the database
    b.bus._dispatch("revocation", None)  # what the bus does on every (re)subscription
    assert not b.store._mirror_trusted()
    assert await b.revoked(tenant)  # not trusted yet: read from Redis
    await until(b.store._mirror_trusted)
    reads = b.reads
    assert await b.revoked(tenant)  # refilled: answered from memory
    assert b.reads == reads


async def test_without_redis_the_check_fails_closed(runtime):
    dead = "redis://127.0.0.1:1/0"
    store = RevocationStore(
        runtime.sessionmaker,
        Redis.from_url(dead, socket_connect_timeout=0.2),
        token_lifetime=timedelta(minutes=5),
        leeway=timedelta(0),
    )
    store.attach(InvalidationBus(store.redis))  # never subscribed: never trusted
    with pytest.raises(ServiceUnavailable):
        await store.is_revoked(jti=None, user_id=None, tenant_id="t", version=0)
