"""The per-process cache of resolved API keys, and their batched `last_used_at`."""

from __future__ import annotations

import uuid

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.apikeys.service import ResolvedKey, mark_used, resolve_key
from app.core.cache import TtlCache


class ApiKeyCache:
    """key hash → resolved key (or None: an unknown key, also remembered for the TTL, so a
    flood of junk keys costs one query per distinct key, not one per request). Revocation drops
    the entry in every process through the invalidation bus (topic `apikey`)."""

    def __init__(self, sessionmaker: async_sessionmaker[AsyncSession]) -> None:
        self.sessionmaker = sessionmaker
        self.cache: TtlCache[ResolvedKey | None] = TtlCache()
        self._used: set[uuid.UUID] = set()

    def invalidate(self, key: str | None) -> None:
        """Drop one key hash or everything."""
        self.cache.invalidate(key)

    async def get(self, key_hash: str, presented: str) -> ResolvedKey | None:
        """The key behind a presented secret."""
        hit, value = self.cache.get(key_hash)
        if hit:
            return value
        generation = self.cache.generation
        async with self.sessionmaker() as session:
            value = await resolve_key(session, presented)
        self.cache.put(key_hash, value, generation)
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
