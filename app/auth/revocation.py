"""Revocation of access tokens before they expire.

Subjects: `jti:<sha256>` (one token, after logout) and `tenant:<id>` (tenant deleted) revoke
outright; `user:<id>` revokes every token whose `ver` claim is below the user's current token
version (deactivation, role or password change). The database is the record; each process keeps
a copy in memory (all that the single-process embedded mode needs).

With Redis, a revocation is written to a Redis key and announced on the invalidation channel in
one transaction. Each process mirrors the announcements in memory and answers from the mirror
only while it is provably complete: filled from Redis's keys after (re)subscribing, and the
subscription heard from within `TRUST_SECONDS` (every process hears its own heartbeat four times
a second). Otherwise, and whenever that is in doubt, the check reads Redis (one `MGET`, 503 when
Redis is down).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
from datetime import timedelta

import structlog
from redis.asyncio import Redis
from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.auth.models import Revocation
from app.core.errors import ServiceUnavailable
from app.core.invalidation import CHANNEL, InvalidationBus
from app.core.types import utcnow

log = structlog.get_logger("warden.revocation")
_PREFIX = "warden:revoked:"
TOPIC = "revocation"


@functools.lru_cache(maxsize=65_536)  # the same token is checked on each of its requests
def jti_subject(jti: str) -> str:
    """The revocation subject of one token id (hashed: the list never holds token ids)."""
    return "jti:" + hashlib.sha256(jti.encode()).hexdigest()


class RevocationStore:
    """Answers "was this token revoked?" without a database round trip."""

    TRUST_SECONDS = 1.0

    def __init__(self, redis: Redis | None) -> None:
        self.redis = redis
        self._memory: dict[str, tuple[int, float]] = {}  # subject -> (min_version, expires)
        self._bus: InvalidationBus | None = None
        self._generation = 0  # bumped whenever the subscription (re)starts or drops
        self._synced = -1  # the generation the mirror was last completed for
        self._resync: asyncio.Task[None] | None = None

    def attach(self, bus: InvalidationBus) -> None:
        """With Redis: mirror other processes' revocations from the invalidation channel."""
        if self.redis is not None:
            self._bus = bus
            bus.register(TOPIC, self._on_message)

    async def aclose(self) -> None:
        """Stop refilling the mirror."""
        if self._resync is not None:
            self._resync.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._resync
            self._resync = None

    def _mirror_trusted(self) -> bool:
        return (
            self._bus is not None
            and self._synced == self._generation
            and self._bus.live(self.TRUST_SECONDS)
        )

    def _on_message(self, key: str | None) -> None:
        if key is None:  # (re)subscribed or dropped: announcements may have been missed
            self._generation += 1
            if self._resync is None or self._resync.done():
                self._resync = asyncio.get_running_loop().create_task(self._fill_mirror())
            return
        try:
            subject, min_version, expires = key.rsplit("|", 2)
            self._remember(subject, int(min_version), float(expires))
        except ValueError:
            log.warning("revocation_message_malformed")

    def _remember(self, subject: str, min_version: int, expires: float) -> None:
        known = self._memory.get(subject)
        if known is not None:
            min_version, expires = max(min_version, known[0]), max(expires, known[1])
        self._memory[subject] = (min_version, expires)

    async def _fill_mirror(self) -> None:
        """Copy every live revocation key from Redis once the subscription is up (announcements
        from then on arrive through it; keys are written before they are announced)."""
        if self.redis is None or self._bus is None:
            return
        while True:
            generation = self._generation
            try:
                await self._bus.ready.wait()
                keys = [key async for key in self.redis.scan_iter(match=_PREFIX + "*", count=1000)]
                async with self.redis.pipeline(transaction=False) as pipe:
                    for key in keys:
                        pipe.get(key)
                        pipe.pttl(key)
                    values = await pipe.execute() if keys else []
                now = utcnow().timestamp()
                for index, key in enumerate(keys):
                    value, pttl = values[2 * index], values[2 * index + 1]
                    if value is not None and int(pttl) > 0:
                        name = key.decode() if isinstance(key, bytes) else str(key)
                        self._remember(name[len(_PREFIX) :], int(value), now + int(pttl) / 1000)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the check keeps reading Redis meanwhile
                log.error("revocation_mirror_fill_failed", error=repr(exc))
                await asyncio.sleep(1)
                continue
            if generation == self._generation:
                self._synced = generation
                return

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
        expires = utcnow().timestamp() + ttl_seconds
        self._remember(subject, min_version, expires)
        if self.redis is not None:
            # Key and announcement together, or neither (then the revoking request fails).
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.set(_PREFIX + subject, str(min_version), ex=max(1, int(ttl_seconds) + 1))
                pipe.publish(CHANNEL, f"{TOPIC}|{subject}|{min_version}|{expires}")
                await pipe.execute()

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
        mirrored = self.redis is None or self._mirror_trusted()
        if mirrored and not self._memory:
            return False  # nothing revoked in this process's view: nothing to look up
        subjects = [f"tenant:{tenant_id}"]
        if jti:
            subjects.append(jti_subject(jti))
        if user_id:
            subjects.append(f"user:{user_id}")
        if not mirrored and self.redis is not None:
            try:
                values = await self.redis.mget([_PREFIX + s for s in subjects])
            except Exception as exc:
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
