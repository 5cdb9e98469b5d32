"""The global per-IP limit with Redis (`SharedFixedWindows`): counted in Redis in batches, exact
within a process, the other processes' hits seen within one flush, fail closed without Redis."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from limits import RateLimitItemPerSecond
from redis.asyncio import Redis

from app.core.errors import ServiceUnavailable
from app.core.ratelimit import AsyncLimiter, SharedFixedWindows
from tests.support.services import REDIS, needs_redis

pytestmark = needs_redis


@pytest.fixture
async def redis():
    client = Redis.from_url(REDIS)
    yield client
    await client.aclose()


async def test_exact_within_one_process(redis):
    limiter = AsyncLimiter(REDIS, redis)
    item = RateLimitItemPerSecond(5, 60)
    ip = f"ip-{uuid.uuid4().hex}"
    try:
        states = [await limiter.hit_fixed(item, "global", ip) for _ in range(7)]
        assert [s.allowed for s in states] == [True] * 5 + [False] * 2
        assert states[-1].headers()["X-RateLimit-Remaining"] == "0"
    finally:
        await limiter.aclose()


async def test_two_processes_share_one_count_within_a_flush(redis):
    # Two limiters stand for two Warden processes: separate local state, one Redis.
    first, second = AsyncLimiter(REDIS, redis), AsyncLimiter(REDIS, Redis.from_url(REDIS))
    item = RateLimitItemPerSecond(10, 60)
    ip = f"ip-{uuid.uuid4().hex}"
    try:
        for _ in range(6):
            assert (await first.hit_fixed(item, "global", ip)).allowed
        await asyncio.sleep(SharedFixedWindows.FLUSH_SECONDS * 3)  # the first one's hits land
        allowed = [(await second.hit_fixed(item, "global", ip)).allowed for _ in range(6)]
        assert allowed == [True] * 4 + [False] * 2  # 6 + 4 = the limit of 10
        key = item.key_for("global", ip)
        await asyncio.sleep(SharedFixedWindows.FLUSH_SECONDS * 3)
        assert int(await redis.get(key)) == 12  # every hit counted, refused ones too
        assert 0 < await redis.ttl(key) <= 60
        # The first process decides its next hit on what it knew, then learns the total with
        # the flush that carries it: the overshoot is bounded by one flush of its own hits.
        await first.hit_fixed(item, "global", ip)
        await asyncio.sleep(SharedFixedWindows.FLUSH_SECONDS * 3)
        assert not (await first.hit_fixed(item, "global", ip)).allowed
    finally:
        await first.aclose()
        await second.aclose()


async def test_an_unreachable_redis_fails_closed():
    dead = "redis://127.0.0.1:1/0"
    limiter = AsyncLimiter(dead, Redis.from_url(dead, socket_connect_timeout=0.2))
    try:
        with pytest.raises(ServiceUnavailable):
            await limiter.hit_fixed(RateLimitItemPerSecond(5, 60), "global", "10.0.0.1")
        with pytest.raises(ServiceUnavailable):  # still refused: nothing was kept locally
            await limiter.hit_fixed(RateLimitItemPerSecond(5, 60), "global", "10.0.0.1")
    finally:
        await limiter.aclose()


async def test_a_store_lost_after_the_first_hit_fails_closed_then_recovers(redis, monkeypatch):
    limiter = AsyncLimiter(REDIS, redis)
    item = RateLimitItemPerSecond(100, 60)
    ip = f"ip-{uuid.uuid4().hex}"
    shared = limiter.shared_windows
    assert shared is not None
    try:
        assert (await limiter.hit_fixed(item, "global", ip)).allowed
        assert (await limiter.hit_fixed(item, "global", ip)).allowed  # pending, not yet flushed

        def broken(*args, **kwargs):
            raise ConnectionError("redis went away")

        monkeypatch.setattr(shared.redis, "pipeline", broken)
        await asyncio.sleep(SharedFixedWindows.FLUSH_SECONDS * 3)
        with pytest.raises(ServiceUnavailable):
            await limiter.hit_fixed(item, "global", ip)
        monkeypatch.undo()
        await asyncio.sleep(SharedFixedWindows.FLUSH_SECONDS * 3)  # the retry succeeds
        assert (await limiter.hit_fixed(item, "global", ip)).allowed
        await asyncio.sleep(SharedFixedWindows.FLUSH_SECONDS * 3)
        assert int(await redis.get(item.key_for("global", ip))) == 3  # the pending hit kept
    finally:
        await limiter.aclose()
