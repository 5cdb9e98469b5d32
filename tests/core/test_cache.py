"""`TtlCache.get_or_load`: concurrent misses of a key share one load (an expiring hot endpoint
must not send every request in flight to the database at once), and an invalidation is never
answered by a load that began before it."""

from __future__ import annotations

import asyncio

import pytest

from app.core.cache import TtlCache


class Loader:
    """Counts loads; each waits for `release` so tests can pile callers up behind it."""

    def __init__(self) -> None:
        self.calls = 0
        self.release = asyncio.Event()
        self.fail: Exception | None = None

    async def __call__(self) -> str:
        self.calls += 1
        version = self.calls
        await self.release.wait()
        if self.fail is not None:
            raise self.fail
        return f"v{version}"


async def test_concurrent_misses_share_one_load():
    cache: TtlCache[str] = TtlCache()
    load = Loader()
    callers = [asyncio.create_task(cache.get_or_load("ep", load)) for _ in range(64)]
    await asyncio.sleep(0.01)
    load.release.set()
    assert await asyncio.gather(*callers) == ["v1"] * 64
    assert load.calls == 1
    assert await cache.get_or_load("ep", load) == "v1"  # cached now
    assert load.calls == 1


async def test_an_expired_entry_is_loaded_once_for_everyone():
    cache: TtlCache[str] = TtlCache(ttl=0.05)
    load = Loader()
    load.release.set()
    assert await cache.get_or_load("ep", load) == "v1"
    await asyncio.sleep(0.06)  # the TTL passes
    load.release.clear()
    callers = [asyncio.create_task(cache.get_or_load("ep", load)) for _ in range(32)]
    await asyncio.sleep(0.01)
    load.release.set()
    assert set(await asyncio.gather(*callers)) == {"v2"}
    assert load.calls == 2


async def test_a_miss_after_an_invalidation_does_not_join_the_older_load():
    cache: TtlCache[str] = TtlCache()
    load = Loader()
    before = asyncio.create_task(cache.get_or_load("ep", load))
    await asyncio.sleep(0.01)
    cache.invalidate("ep")  # the endpoint changed while its old version was being read
    after = asyncio.create_task(cache.get_or_load("ep", load))
    await asyncio.sleep(0.01)
    load.release.set()
    assert await before == "v1"  # began before the change
    assert await after == "v2"  # began after it: its own load
    assert load.calls == 2
    assert await cache.get_or_load("ep", load) == "v2"  # the pre-change value was not kept


async def test_a_caller_that_goes_away_does_not_cancel_the_others():
    cache: TtlCache[str] = TtlCache()
    load = Loader()
    first = asyncio.create_task(cache.get_or_load("ep", load))
    second = asyncio.create_task(cache.get_or_load("ep", load))
    await asyncio.sleep(0.01)
    first.cancel()
    load.release.set()
    assert await second == "v1"
    with pytest.raises(asyncio.CancelledError):
        await first
    assert load.calls == 1


async def test_a_failed_load_fails_its_waiters_and_the_next_miss_tries_again():
    cache: TtlCache[str] = TtlCache()
    load = Loader()
    load.fail = ConnectionError("database down")
    callers = [asyncio.create_task(cache.get_or_load("ep", load)) for _ in range(8)]
    await asyncio.sleep(0.01)
    load.release.set()
    results = await asyncio.gather(*callers, return_exceptions=True)
    assert all(isinstance(r, ConnectionError) for r in results)
    assert load.calls == 1
    load.fail = None
    assert await cache.get_or_load("ep", load) == "v2"  # nothing failed was cached
