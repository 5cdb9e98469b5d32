"""The per-process cache of resolved API keys, and their batched `last_used_at`."""

from __future__ import annotations

import time
import uuid

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.apikeys.service import ResolvedKey, mark_used, resolve_key
from app.core.cache import TtlCache


class MissBudget:
    """How many lookups of keys that did not exist each client address may cause per minute.

    Malformed keys never reach a lookup, and a repeated unknown key is answered from the cache;
    this bounds what is left, a flood of distinct well-formed junk keys, to `per_minute` queries
    per address. A valid key is never refused by it unless its own address is flooding."""

    WINDOW_SECONDS = 60.0
    MAX_ADDRESSES = 50_000

    def __init__(self, per_minute: int) -> None:
        self.per_minute = per_minute
        self._windows: dict[str, tuple[float, int]] = {}

    def exhausted(self, ip: str, now: float | None = None) -> bool:
        """True when `ip` has used up its lookups of unknown keys in the current window."""
        entry = self._windows.get(ip)
        moment = time.monotonic() if now is None else now
        return (
            entry is not None
            and moment - entry[0] < self.WINDOW_SECONDS
            and entry[1] >= self.per_minute
        )

    def spend(self, ip: str, now: float | None = None) -> None:
        """Count one lookup that found no key."""
        moment = time.monotonic() if now is None else now
        start, count = self._windows.get(ip, (moment, 0))
        if moment - start >= self.WINDOW_SECONDS:
            start, count = moment, 0
        if len(self._windows) >= self.MAX_ADDRESSES and ip not in self._windows:
            self._windows.clear()  # bounded: rotating addresses cannot grow it forever
        self._windows[ip] = (start, count + 1)


class ApiKeyCache:
    """key hash → resolved key (or None: an unknown key, also remembered for the TTL, so a
    flood of junk keys costs one query per distinct key, not one per request, and at most
    `MissBudget.per_minute` of those per address). Revocation drops the entry in every process
    through the invalidation bus (topic `apikey`)."""

    def __init__(
        self, sessionmaker: async_sessionmaker[AsyncSession], miss_budget: int = 30
    ) -> None:
        self.sessionmaker = sessionmaker
        self.cache: TtlCache[ResolvedKey | None] = TtlCache()
        self.misses = MissBudget(miss_budget)
        self._used: set[uuid.UUID] = set()

    def invalidate(self, key: str | None) -> None:
        """Drop one key hash or everything."""
        self.cache.invalidate(key)

    async def get(self, key_hash: str, presented: str, ip: str | None = None) -> ResolvedKey | None:
        """The key behind a presented secret (None: unknown, or `ip` is over its budget of
        lookups of unknown keys)."""
        hit, value = self.cache.get(key_hash)
        if hit:
            return value
        address = ip or "unknown"
        if self.misses.exhausted(address):
            return None

        async def load() -> ResolvedKey | None:
            async with self.sessionmaker() as session:
                return await resolve_key(session, presented)

        value = await self.cache.get_or_load(key_hash, load)
        if value is None:
            self.misses.spend(address)
        return value

    def touch(self, key_id: uuid.UUID) -> None:
        """Note a key's use; `last_used_at` is written by `flush_usage`, not per request."""
        self._used.add(key_id)

    async def flush_usage(self) -> None:
        """Write `last_used_at` for the keys used since the last flush."""
        if not self._used:
            return
        used, self._used = self._used, set()
        await mark_used(self.sessionmaker, used)
