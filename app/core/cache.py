"""`TtlCache`: the per-process cache of things that rarely change (compiled endpoints, API keys,
gateway bindings), dropped by the invalidation bus and bounded in age should a message be lost.

Loads are single-flight (`get_or_load`): when a hot entry expires, every request in flight
misses it at once. Each used to load it on its own: 32 to 64 concurrent loads of one endpoint
queued on the database pool every `TTL_SECONDS`, and those requests took hundreds of
milliseconds, some over a second (the benchmark's tail). Now the first miss loads and the others
wait for that one load."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

V = TypeVar("V")
TTL_SECONDS = 60.0
MAX_ENTRIES = 50_000


class TtlCache(Generic[V]):
    """A dict with a TTL and generation-checked fills: a fill that raced an invalidation (it read
    the database before the change and finished after the invalidation) is dropped."""

    def __init__(self, ttl: float = TTL_SECONDS, max_entries: int = MAX_ENTRIES) -> None:
        self.ttl = ttl
        self.max_entries = max_entries
        self.entries: dict[str, tuple[float, V]] = {}
        self.generation = 0
        self._flights: dict[str, asyncio.Task[V]] = {}

    def get(self, key: str) -> tuple[bool, V | None]:
        """(hit, value); a miss when absent or older than the TTL."""
        entry = self.entries.get(key)
        if entry is None or time.monotonic() - entry[0] > self.ttl:
            return False, None
        return True, entry[1]

    def put(self, key: str, value: V, generation: int) -> None:
        """Store a value loaded at `generation` (ignored when an invalidation came since)."""
        if generation == self.generation:
            if len(self.entries) >= self.max_entries:  # random keys cannot grow it forever
                self.entries.clear()
            self.entries[key] = (time.monotonic(), value)

    async def get_or_load(self, key: str, load: Callable[[], Awaitable[V]]) -> V:
        """The cached value, or the one `load()` returns (then cached). Concurrent misses of a
        key share one load; a miss after an invalidation starts a new one (a load begun before
        the change answers only the requests that began before it too)."""
        entry = self.entries.get(key)
        if entry is not None and time.monotonic() - entry[0] <= self.ttl:
            return entry[1]
        flight = self._flights.get(key)
        if flight is None:
            flight = asyncio.get_running_loop().create_task(self._fill(key, load))
            # Retrieved even when every waiter was cancelled (no "never retrieved" warning).
            flight.add_done_callback(lambda done: done.cancelled() or done.exception())
            self._flights[key] = flight
        # Shielded: a caller that goes away does not cancel the others' load.
        return await asyncio.shield(flight)

    async def _fill(self, key: str, load: Callable[[], Awaitable[V]]) -> V:
        generation = self.generation
        try:
            value = await load()
            self.put(key, value, generation)
            return value
        finally:
            if self._flights.get(key) is asyncio.current_task():
                del self._flights[key]

    def invalidate(self, key: str | None) -> None:
        """Drop one key, or everything for None (loads under way are no longer joined)."""
        self.generation += 1
        if key is None:
            self.entries.clear()
            self._flights.clear()
        else:
            self.entries.pop(key, None)
            self._flights.pop(key, None)
