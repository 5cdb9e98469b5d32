"""Revocation of access tokens before they expire.

Subjects: `jti:<sha256>` (one token, after logout) and `tenant:<id>` (tenant deleted) revoke
outright; `user:<id>` revokes every token whose `ver` claim is below the user's current token
version (deactivation, role or password change). The database is the record; each process keeps
a copy in memory, and with Redis every process sees a new entry at once (the check reads Redis;
memory serves the single-process embedded mode).
"""

from __future__ import annotations

import functools
import hashlib
from datetime import timedelta

import structlog
from redis.asyncio import Redis
from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.auth.models import Revocation
from app.core.errors import ServiceUnavailable
from app.core.types import utcnow

log = structlog.get_logger("warden.revocation")
_PREFIX = "warden:revoked:"


@functools.lru_cache(maxsize=65_536)  # the same token is checked on each of its requests
def jti_subject(jti: str) -> str:
    """The revocation subject of one token id (hashed: the list never holds token ids)."""
    return "jti:" + hashlib.sha256(jti.encode()).hexdigest()


class RevocationStore:
    """Answers "was this token revoked?" without a database round trip."""

    def __init__(self, redis: Redis | None) -> None:
        self.redis = redis
        self._memory: dict[str, tuple[int, float]] = {}  # subject -> (min_version, expires)

    async def load(self, sessionmaker: async_sessionmaker[AsyncSession]) -> None:
        """Fill the in-process copy (and Redis) from the database at start-up."""
        async with sessionmaker() as session:
            rows = (
                await session.execute(
                    select(Revocation).where(Revocation.expires_at > utcnow())  # type: ignore[arg-type]
                )
            ).scalars()
            for row in rows:
                ttl = row.expires_at.timestamp() - utcnow().timestamp()
                await self._publish(row.subject, row.min_version, ttl)

    async def _publish(self, subject: str, min_version: int, ttl_seconds: float) -> None:
        self._memory[subject] = (min_version, utcnow().timestamp() + ttl_seconds)
        if self.redis is not None:
            await self.redis.set(
                _PREFIX + subject, str(min_version), ex=max(1, int(ttl_seconds) + 1)
            )

    async def revoke(
        self, session: AsyncSession, subject: str, *, ttl: timedelta, min_version: int = 0
    ) -> None:
        """Record a revocation in the caller's transaction and publish it."""
        expires_at = utcnow() + ttl
        existing = await session.get(Revocation, subject)
        if existing is None:
            session.add(Revocation(subject=subject, min_version=min_version, expires_at=expires_at))
        else:
            existing.min_version = max(existing.min_version, min_version)
            existing.expires_at = max(existing.expires_at, expires_at)
            min_version = existing.min_version
        await session.flush()
        await self._publish(subject, min_version, ttl.total_seconds())

    async def is_revoked(
        self, *, jti: str | None, user_id: str | None, tenant_id: str, version: int
    ) -> bool:
        """True when the token, its user (at this version) or its tenant was revoked."""
        if self.redis is None and not self._memory:
            return False  # nothing revoked in this process's view: nothing to look up
        subjects = [f"tenant:{tenant_id}"]
        if jti:
            subjects.append(jti_subject(jti))
        if user_id:
            subjects.append(f"user:{user_id}")
        if self.redis is not None:
            try:
                values = await self.redis.mget([_PREFIX + s for s in subjects])
            except Exception as exc:
                log.error("revocation_store_unavailable", error=type(exc).__name__)
                raise ServiceUnavailable("The revocation store is unavailable.") from exc
            found = dict(zip(subjects, values, strict=True))
            lookup = {s: int(v) for s, v in found.items() if v is not None}
        else:
            now = utcnow().timestamp()
            lookup = {
                s: entry[0]
                for s in subjects
                if (entry := self._memory.get(s)) is not None and entry[1] > now
            }
        for subject, min_version in lookup.items():
            if subject.startswith("user:"):
                if version < min_version:
                    return True
            else:
                return True
        return False

    async def prune(self, session: AsyncSession) -> None:
        """Delete expired entries."""
        await session.execute(delete(Revocation).where(Revocation.expires_at <= utcnow()))  # type: ignore[arg-type]
        now = utcnow().timestamp()
        self._memory = {k: v for k, v in self._memory.items() if v[1] > now}
