"""`TtlCache`: the per-process cache of things that rarely change (compiled endpoints, API keys,
gateway bindings), dropped by the invalidation bus and bounded in age should a message be lost."""

from __future__ import annotations

import time
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

    def invalidate(self, key: str | None) -> None:
        """Drop one key, or everything for None."""
        self.generation += 1
        if key is None:
            self.entries.clear()
        else:
            self.entries.pop(key, None)
