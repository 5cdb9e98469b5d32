"""Policy rate limits in Redis (`RedisMovingWindows`): one round trip per hit, exact across
processes at small limits; leased slices at large ones, never over the limit."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
import uuid

import pytest
from limits import RateLimitItemPerMinute, RateLimitItemPerSecond
from redis.asyncio import Redis

from app.core.errors import ServiceUnavailable
from app.core.ratelimit import AsyncLimiter, RedisMovingWindows
from tests.support.servers import free_port
from tests.support.services import REDIS, needs_redis

pytestmark = needs_redis

# One "process" of the test: `hits` concurrent hits on one key; prints how many were allowed.
_HITTER = """
import asyncio, json, sys
from limits import RateLimitItemPerMinute
from app.core.ratelimit import AsyncLimiter

async def main(url, amount, key, hits):
    limiter = AsyncLimiter(url)
    item = RateLimitItemPerMinute(amount)
    states = await asyncio.gather(*(limiter.hit(item, key) for _ in range(hits)))
    await limiter.aclose()
    print(json.dumps(sum(s.allowed for s in states)))

asyncio.run(main(sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])))
"""


@pytest.fixture
async def redis():
    client = Redis.from_url(REDIS)
    yield client
    await client.aclose()


def _key() -> str:
    return f"test-{uuid.uuid4().hex}"


class CountingScript:
    """Wraps a limiter's script to count its Redis round trips."""

    def __init__(self, windows: RedisMovingWindows) -> None:
        self.calls = 0
        self.inner = windows._script
        windows._script = self

    async def __call__(self, **kwargs):
        self.calls += 1
        return await self.inner(**kwargs)


def test_small_limit_is_exact_across_two_processes():
    key = _key()
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _HITTER, REDIS, "25", key, "40"],
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    allowed = [json.loads(p.communicate(timeout=60)[0]) for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert sum(allowed) == 25  # 80 concurrent hits from two processes, exactly the limit


async def test_one_round_trip_per_hit_below_the_lease_size(redis):
    limiter = AsyncLimiter(REDIS, redis)
    assert limiter.redis_windows is not None
    counter = CountingScript(limiter.redis_windows)
    item = RateLimitItemPerMinute(5)
    key = _key()
    states = [await limiter.hit(item, key) for _ in range(7)]
    assert [s.allowed for s in states] == [True] * 5 + [False] * 2
    assert [s.remaining for s in states[:5]] == [4, 3, 2, 1, 0]
    assert states[-1].headers()["X-RateLimit-Remaining"] == "0"
    assert "Retry-After" in states[-1].headers()
    assert counter.calls == 7
    peeked = await limiter.peek(item, key)
    assert not peeked.allowed
    assert peeked.remaining == 0
    await limiter.aclose()


async def test_the_window_moves(redis):
    limiter = AsyncLimiter(REDIS, redis)
    item = RateLimitItemPerSecond(3, 1)
    key = _key()
    assert all([(await limiter.hit(item, key)).allowed for _ in range(3)])
    assert not (await limiter.hit(item, key)).allowed
    await asyncio.sleep(1.1)
    assert (await limiter.hit(item, key)).allowed
    await limiter.aclose()


async def test_large_limits_are_leased_with_few_round_trips(redis):
    limiter = AsyncLimiter(REDIS, redis)
    assert limiter.redis_windows is not None
    counter = CountingScript(limiter.redis_windows)
    item = RateLimitItemPerMinute(1_000_000)
    key = _key()
    states = [await limiter.hit(item, key) for _ in range(5_000)]
    assert all(s.allowed for s in states)
    # Slices double from 1 to at most 1% of the limit: 5,000 hits need 13 of them.
    assert counter.calls <= 14
    remaining = [s.remaining for s in states]
    assert remaining == sorted(remaining, reverse=True)  # the headers never go up
    await limiter.aclose()


async def test_leased_quota_never_exceeds_the_limit_across_processes(redis):
    # Two limiters with their own clients stand for two processes spending one budget.
    first = AsyncLimiter(REDIS, redis)
    second = AsyncLimiter(REDIS, Redis.from_url(REDIS))
    item = RateLimitItemPerMinute(2_000)
    key = _key()

    async def hammer(limiter: AsyncLimiter) -> int:
        allowed = refused_in_a_row = 0
        while refused_in_a_row < 20:
            batch = await asyncio.gather(*(limiter.hit(item, key) for _ in range(25)))
            for state in batch:
                allowed += state.allowed
                refused_in_a_row = 0 if state.allowed else refused_in_a_row + 1
        return allowed

    counts = await asyncio.gather(hammer(first), hammer(second))
    assert sum(counts) == 2_000  # no slice is ever granted beyond the room left
    assert min(counts) > 0  # both spent from the shared budget
    await first.aclose()
    await second.aclose()


async def test_an_expired_slice_gives_back_what_it_did_not_spend(redis, monkeypatch):
    monkeypatch.setattr(RedisMovingWindows, "LEASE_SECONDS", 0.2)
    first = AsyncLimiter(REDIS, redis)
    second = AsyncLimiter(REDIS, Redis.from_url(REDIS))
    item = RateLimitItemPerMinute(1_000)
    key = _key()
    for _ in range(15):  # slices of 1, 2, 4, 8: 15 units, all spent
        assert (await first.hit(item, key)).allowed
    assert (await first.hit(item, key)).allowed  # a slice of 10 (1%), 1 unit spent
    await asyncio.sleep(0.3)  # that slice expires holding 9 unspent units
    assert (await first.hit(item, key)).allowed  # the next slice settles it: 16 + this one
    second_allowed = sum([(await second.hit(item, key)).allowed for _ in range(1_100)])
    first_lease = first.redis_windows._leases[first._key(item, (key,))]
    unspent = first_lease.granted - first_lease.spent
    assert second_allowed == 1_000 - 17 - unspent
    assert unspent <= 1_000 // RedisMovingWindows.LEASE_FRACTION  # the documented slack
    await first.aclose()
    await second.aclose()


async def test_reset_forgets_shared_and_leased_counts(redis):
    limiter = AsyncLimiter(REDIS, redis)
    item = RateLimitItemPerMinute(2)
    key = _key()
    await limiter.hit(item, key)
    await limiter.hit(item, key)
    assert not (await limiter.hit(item, key)).allowed
    await limiter.reset()
    assert (await limiter.hit(item, key)).allowed
    await limiter.aclose()


async def test_redis_down_fails_closed():
    url = f"redis://127.0.0.1:{free_port()}/0"
    limiter = AsyncLimiter(url, timeout=0.5)
    for amount in (5, 1_000_000):  # exact and leased alike
        with pytest.raises(ServiceUnavailable):
            await limiter.hit(RateLimitItemPerMinute(amount), _key())
    with pytest.raises(ServiceUnavailable):
        await limiter.peek(RateLimitItemPerMinute(5), _key())
    await limiter.aclose()


async def test_checks_of_a_large_limit_reuse_a_recent_reading_with_room(redis, monkeypatch):
    monkeypatch.setattr(RedisMovingWindows, "LEASE_SECONDS", 0.2)
    limiter = AsyncLimiter(REDIS, redis)
    assert limiter.redis_windows is not None
    counter = CountingScript(limiter.redis_windows)
    roomy, tight = RateLimitItemPerMinute(1_000_000), RateLimitItemPerMinute(1_000)
    key = _key()
    states = [await limiter.peek(roomy, key) for _ in range(50)]
    assert all(s.allowed for s in states)
    assert counter.calls == 1  # one reading serves the checks of the next `LEASE_SECONDS`
    await asyncio.sleep(0.25)
    await limiter.peek(roomy, key)
    assert counter.calls == 2  # an expired reading is read again
    # Within a slice of the limit, every check reads Redis: near the limit it must be exact.
    tight_key = _key()
    now = time.time()
    full_key = limiter._key(tight, (tight_key,))
    await limiter.redis_windows._call(full_key, 1_000, 60, 995, now, now)  # 5 units left
    calls = counter.calls
    assert (await limiter.peek(tight, tight_key)).allowed
    assert (await limiter.peek(tight, tight_key)).allowed
    assert counter.calls == calls + 2
    await limiter.aclose()
