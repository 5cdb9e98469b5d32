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
Redis is down) — and Redis is only a cache of the database: a marker key written after Redis was
filled from the database tells whether Redis still holds everything. When it is gone (Redis
restarted empty, or was flushed), "not in Redis" means nothing: the check asks the database and
one refill from the database is started, so a revoked token never comes back.

The subjects and their lifetimes are made here and nowhere else: `revoke_user`, `revoke_tenant`,
`revoke_token`. Expired revocations are pruned (`prune`), so the in-memory fast path (nothing
revoked in this process's view: nothing to look up) returns once they have expired.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from datetime import timedelta

import structlog
from redis.asyncio import Redis
from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.core.errors import RedisUnavailable
from app.core.hashing import sha256_hex
from app.core.invalidation import CHANNEL, InvalidationBus
from app.core.types import utcnow
from app.credentials.models import Revocation

log = structlog.get_logger("warden.revocation")
_PREFIX = "warden:revoked:"
_FILLED = "warden:revocations:filled"  # set once Redis holds every live revocation
TOPIC = "revocation"


@functools.lru_cache(maxsize=65_536)  # the same token is checked on each of its requests
def jti_subject(jti: str) -> str:
    """The revocation subject of one token id (hashed: the list never holds token ids)."""
    return "jti:" + sha256_hex(jti)


class RevocationStore:
    """Answers "was this token revoked?" without a database round trip."""

    TRUST_SECONDS = 1.0

    def __init__(
        self,
        sessionmaker: async_sessionmaker[AsyncSession],
        redis: Redis | None,
        *,
        token_lifetime: timedelta,
        leeway: timedelta,
    ) -> None:
        self.sessionmaker = sessionmaker
        self.redis = redis
        # The longest an access token lives (plus the verifier's leeway): a revocation of a
        # user or tenant must outlive every token issued before it.
        self.token_lifetime = token_lifetime
        self.leeway = leeway
        self._refill: asyncio.Task[None] | None = None
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
        for task in (self._resync, self._refill):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._resync = self._refill = None

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
                if not await self.redis.exists(_FILLED):
                    await self.load()  # Redis lost what it held: the database has it all
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

    async def load(self) -> None:
        """Fill the in-process copy (and Redis) from the database: at start-up, and whenever
        Redis turns out to have lost what it held."""
        async with self.sessionmaker() as session:
            rows = list(
                (
                    await session.execute(
                        select(Revocation).where(Revocation.expires_at > utcnow())  # type: ignore[arg-type]
                    )
                ).scalars()
            )
        for row in rows:
            ttl = row.expires_at.timestamp() - utcnow().timestamp()
            await self._publish(row.subject, row.min_version, ttl)
        if self.redis is not None:
            await self.redis.set(_FILLED, "1")

    def _refill_from_database(self) -> None:
        if self._refill is None or self._refill.done():
            self._refill = asyncio.get_running_loop().create_task(self._refill_once())

    async def _refill_once(self) -> None:
        try:
            await self.load()
        except Exception as exc:  # the check keeps asking the database meanwhile
            log.error("revocation_refill_failed", error=repr(exc))

    async def _publish(self, subject: str, min_version: int, ttl_seconds: float) -> None:
        expires = utcnow().timestamp() + ttl_seconds
        self._remember(subject, min_version, expires)
        if self.redis is not None:
            # Key and announcement together, or neither (then the revoking request fails).
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.set(_PREFIX + subject, str(min_version), ex=max(1, int(ttl_seconds) + 1))
                pipe.publish(CHANNEL, f"{TOPIC}|{subject}|{min_version}|{expires}")
                await pipe.execute()

    async def revoke_user(self, session: AsyncSession, user_id: object, min_version: int) -> None:
        """Every token of this user below `min_version` (deactivation, role or password
        change, deletion), for as long as any such token can live."""
        await self._revoke(
            session,
            f"user:{user_id}",
            ttl=self.token_lifetime + self.leeway,
            min_version=min_version,
        )

    async def revoke_tenant(self, session: AsyncSession, tenant_id: object) -> None:
        """Every token of a deleted tenant, local and satellite."""
        await self._revoke(session, f"tenant:{tenant_id}", ttl=self.token_lifetime + self.leeway)

    async def revoke_token(self, session: AsyncSession, jti: str, expires_at: int) -> None:
        """One token (logout), until it would have expired anyway."""
        remaining = max(1, expires_at - int(utcnow().timestamp()))
        await self._revoke(
            session, jti_subject(jti), ttl=timedelta(seconds=remaining) + self.leeway
        )

    async def _revoke(
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
        now = utcnow().timestamp()
        # What this process knows is always counted: it outlives any Redis restart.
        lookup = {
            s: entry[0]
            for s in subjects
            if (entry := self._memory.get(s)) is not None and entry[1] > now
        }
        if not mirrored and self.redis is not None:
            lookup.update(await self._shared(subjects))
        return _revoked(lookup, version)

    async def _shared(self, subjects: list[str]) -> dict[str, int]:
        """The subjects' revocations as Redis holds them, or as the database does when Redis
        cannot vouch for being complete."""
        assert self.redis is not None  # noqa: S101  (callers check)
        try:
            values = await self.redis.mget([_PREFIX + s for s in subjects] + [_FILLED])
        except Exception as exc:  # logged once, where the refusal is rendered
            raise RedisUnavailable("The revocation store is unavailable.") from exc
        if values[-1] is not None:
            found = dict(zip(subjects, values[:-1], strict=True))
            return {s: int(v) for s, v in found.items() if v is not None}
        log.warning("revocation_cache_incomplete")
        self._refill_from_database()
        async with self.sessionmaker() as session:
            rows = (
                await session.execute(
                    select(Revocation).where(
                        Revocation.subject.in_(subjects),  # type: ignore[attr-defined]
                        Revocation.expires_at > utcnow(),  # type: ignore[arg-type]
                    )
                )
            ).scalars()
            return {row.subject: row.min_version for row in rows}

    async def prune(self) -> int:
        """Delete expired revocations from the database and from this process's memory."""
        async with self.sessionmaker() as session, session.begin():
            result = await session.execute(
                delete(Revocation).where(Revocation.expires_at <= utcnow())  # type: ignore[arg-type]
            )
        now = utcnow().timestamp()
        self._memory = {k: v for k, v in self._memory.items() if v[1] > now}
        return int(getattr(result, "rowcount", 0) or 0)


def _revoked(lookup: dict[str, int], version: int) -> bool:
    for subject, min_version in lookup.items():
        if subject.startswith("user:"):
            if version < min_version:
                return True
        else:
            return True
    return False
