"""The in-process rate-limit storage: limits' semantics (checked against limits' own memory
storage), without a copy of the window per hit or a lock per counter."""

from __future__ import annotations

import random
import time

import pytest
from limits import RateLimitItemPerSecond
from limits.aio.storage import MemoryStorage
from limits.aio.strategies import FixedWindowRateLimiter, MovingWindowRateLimiter

from app.core.ratelimit import AsyncLimiter, MovingWindowMemoryStorage


class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr(time, "time", fake)
    return fake


async def test_the_window_moves_one_hit_at_a_time(clock: Clock) -> None:
    limiter = AsyncLimiter(None)
    item = RateLimitItemPerSecond(3, 10)
    start = clock.now
    for offset in (0, 1, 2):  # hits at t=0, 1, 2
        clock.now = start + offset
        assert (await limiter.hit(item, "k")).allowed
    refused = await limiter.hit(item, "k")
    assert not refused.allowed
    assert refused.remaining == 0
    assert refused.reset_at == pytest.approx(clock.now - 2 + 10)  # when the oldest hit leaves
    clock.now += 8.5  # the first hit (t=0) has left the window, the other two have not
    assert (await limiter.peek(item, "k")).remaining == 1
    assert (await limiter.hit(item, "k")).allowed
    assert not (await limiter.hit(item, "k")).allowed  # a fixed window would have reset all 3


async def test_a_hit_exactly_one_period_old_still_counts(clock: Clock) -> None:
    limiter = AsyncLimiter(None)
    item = RateLimitItemPerSecond(1, 10)
    assert (await limiter.hit(item, "k")).allowed
    clock.now += 10
    assert not (await limiter.hit(item, "k")).allowed
    clock.now += 0.001
    assert (await limiter.hit(item, "k")).allowed


async def test_agrees_with_limits_own_memory_storage(clock: Clock) -> None:
    ours = MovingWindowRateLimiter(MovingWindowMemoryStorage())
    theirs = MovingWindowRateLimiter(MemoryStorage())
    rng = random.Random(8725)
    items = [RateLimitItemPerSecond(5, 3), RateLimitItemPerSecond(20, 7)]
    for step in range(3_000):
        clock.now += rng.choice((0.0, 0.01, 0.2, 0.5, 1.3))
        item = rng.choice(items)
        key = rng.choice(("a", "b"))
        if rng.random() < 0.7:
            assert await ours.hit(item, key) == await theirs.hit(item, key), step
        else:
            assert await ours.test(item, key) == await theirs.test(item, key), step
        mine, reference = (
            await ours.get_window_stats(item, key),
            await theirs.get_window_stats(item, key),
        )
        assert mine.remaining == reference.remaining, step
        assert mine.reset_time == pytest.approx(reference.reset_time), step


async def test_keys_whose_hits_all_expired_are_forgotten(clock: Clock) -> None:
    storage = MovingWindowMemoryStorage()
    limiter = MovingWindowRateLimiter(storage)
    item = RateLimitItemPerSecond(10, 5)
    for n in range(100):  # e.g. per-IP keys of visitors who never come back
        await limiter.hit(item, f"ip-{n}")
    assert len(storage.windows) == 100
    clock.now += 60
    storage._swept -= storage.SWEEP_SECONDS  # the next hit sweeps
    await limiter.hit(item, "ip-new")
    assert list(storage.windows) == [item.key_for("ip-new")]


async def test_a_busy_window_is_appended_at_its_end(clock: Clock) -> None:
    # limits' list took every hit at its front, copying the whole window each time; this one
    # appends plain timestamps at the end and drops expired ones from the front.
    storage = MovingWindowMemoryStorage()
    limiter = MovingWindowRateLimiter(storage)
    item = RateLimitItemPerSecond(1_000_000, 60)
    for _ in range(50_000):
        clock.now += 0.0001
        assert await limiter.hit(item, "busy")
    window = storage.windows[item.key_for("busy")][1]
    assert len(window) == 50_000
    assert list(window) == sorted(window)  # appended at the right end, oldest first


async def test_fixed_windows_agree_with_limits_own_memory_storage(clock: Clock) -> None:
    ours = FixedWindowRateLimiter(MovingWindowMemoryStorage())
    theirs = FixedWindowRateLimiter(MemoryStorage())
    rng = random.Random(6749)
    items = [RateLimitItemPerSecond(4, 2), RateLimitItemPerSecond(30, 60)]
    for step in range(3_000):
        clock.now += rng.choice((0.0, 0.05, 0.3, 1.0, 2.0))
        item, key = rng.choice(items), rng.choice(("a", "b", "c"))
        assert await ours.hit(item, key) == await theirs.hit(item, key), step
        mine, reference = (
            await ours.get_window_stats(item, key),
            await theirs.get_window_stats(item, key),
        )
        assert (mine.remaining, mine.reset_time) == (reference.remaining, reference.reset_time)


async def test_global_limit_refusal_reports_its_window(clock: Clock) -> None:
    limiter = AsyncLimiter(None)
    item = RateLimitItemPerSecond(2, 60)
    assert (await limiter.hit_fixed(item, "global", "10.0.0.1")).allowed
    assert (await limiter.hit_fixed(item, "global", "10.0.0.1")).allowed
    refused = await limiter.hit_fixed(item, "global", "10.0.0.1")
    assert not refused.allowed
    assert refused.headers()["X-RateLimit-Remaining"] == "0"
    assert refused.reset_at == pytest.approx(clock.now + 60)
    assert (await limiter.hit_fixed(item, "global", "10.0.0.2")).allowed  # per address
    clock.now += 60.001
    assert (await limiter.hit_fixed(item, "global", "10.0.0.1")).allowed  # a new window


async def test_expired_counters_are_forgotten(clock: Clock) -> None:
    storage = MovingWindowMemoryStorage()
    for n in range(50):
        await storage.incr(f"ip-{n}", 10)
    clock.now += 11
    storage._swept -= storage.SWEEP_SECONDS
    await storage.incr("ip-new", 10)
    assert set(storage.storage) == {"ip-new"}
    assert set(storage.expirations) == {"ip-new"}
