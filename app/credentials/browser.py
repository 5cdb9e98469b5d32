"""Where live browser sessions are looked up.

The database is the record. With Redis, a JSON record keyed by the cookie's SHA-256 is the fast
path: any process serves any session without a database round trip. Revoking writes `revoked_at`
and replaces the Redis record by a tombstone (same TTL) inside the revoking transaction, and
records are only ever filled with `SET NX`, so a fill racing a revocation cannot bring a session
back. Without Redis (embedded, single process) every lookup reads the database. Redis errors fail
closed (503).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.core.db import set_session_tenant
from app.core.errors import ServiceUnavailable
from app.core.hashing import sha256_hex
from app.core.types import utcnow
from app.credentials import browser_repository as repository
from app.credentials.models import BrowserSession

log = structlog.get_logger("warden.sessions")
TOUCH_INTERVAL_SECONDS = 60
_RECORD = "warden:session:"
_SEEN = "warden:session-seen:"
_TOMBSTONE = b"revoked"


def hash_secret(value: str) -> str:
    """Session cookies and CSRF tokens are 256 random bits: SHA-256 is the right hash."""
    return sha256_hex(value)


@dataclass(frozen=True)
class SessionHolder:
    """What the store needs to know of a session's user (the users domain tells it)."""

    tenant_slug: str
    email: str
    role: str
    version: int  # the user's token version
    active: bool
    idle_timeout: int  # seconds, the tenant's or the server's


# (session, tenant id, user id) → the holder, or None when the user is gone. Given by the layer
# that builds the store, so the store reads its own table only.
HolderLoader = Callable[[AsyncSession, uuid.UUID, uuid.UUID], Awaitable[SessionHolder | None]]


@dataclass(frozen=True)
class SessionRecord:
    """What authenticating a cookie needs, without the database."""

    id: uuid.UUID
    tenant_id: uuid.UUID
    tenant_slug: str
    user_id: uuid.UUID
    email: str
    role: str
    version: int  # the user's token version when the record was filled
    csrf_hash: str
    created_at: float
    expires_at: float  # absolute
    idle_timeout: int
    last_seen_at: float

    def problem(self, now: float) -> str | None:
        """Why the session can no longer be used at `now` (`expired`, `idle`), if it cannot."""
        if now >= self.expires_at:
            return "expired"
        if now - self.last_seen_at >= self.idle_timeout:
            return "idle"
        return None

    def dumps(self) -> str:
        """The Redis form."""
        data: dict[str, Any] = asdict(self)
        for name in ("id", "tenant_id", "user_id"):
            data[name] = str(data[name])
        return json.dumps(data, separators=(",", ":"))

    @classmethod
    def loads(cls, raw: bytes | str) -> SessionRecord:
        """Parse the Redis form."""
        data = json.loads(raw)
        for name in ("id", "tenant_id", "user_id"):
            data[name] = uuid.UUID(data[name])
        return cls(**data)


class SessionStore:
    """Lookup, activity and revocation of browser sessions for one process."""

    def __init__(
        self,
        sessionmaker: async_sessionmaker[AsyncSession],
        redis: Redis | None,
        holder: HolderLoader,
    ) -> None:
        self.sessionmaker = sessionmaker
        self.redis = redis
        self.holder = holder

    async def _load(self, token_hash: str) -> SessionRecord | None:
        async with self.sessionmaker() as session:
            row = await repository.find_by_token_hash(session, token_hash)
            if row is None or row.revoked_at is not None:
                return None
            holder = await self.holder(session, row.tenant_id, row.user_id)
        if holder is None or not holder.active:
            return None
        return SessionRecord(
            id=row.id,
            tenant_id=row.tenant_id,
            tenant_slug=holder.tenant_slug,
            user_id=row.user_id,
            email=holder.email,
            role=holder.role,
            version=holder.version,
            csrf_hash=row.csrf_hash,
            created_at=row.created_at.timestamp(),
            expires_at=row.expires_at.timestamp(),
            idle_timeout=holder.idle_timeout,
            last_seen_at=row.last_seen_at.timestamp(),
        )

    async def lookup(self, token_hash: str) -> SessionRecord | None:
        """The live-or-lapsed record of a cookie; None when unknown or revoked."""
        if self.redis is None:
            return await self._load(token_hash)
        try:
            raw, seen = await self.redis.mget([_RECORD + token_hash, _SEEN + token_hash])
            if raw is None:
                record = await self._load(token_hash)
                remaining = int(record.expires_at - utcnow().timestamp()) if record else 0
                if record is None or remaining <= 0:
                    return record
                if await self.redis.set(
                    _RECORD + token_hash, record.dumps(), ex=remaining, nx=True
                ):
                    return record
                # Someone else filled or revoked it in the meantime: theirs is authoritative.
                raw = await self.redis.get(_RECORD + token_hash)
                if raw is None:
                    return record
        except ServiceUnavailable:
            raise
        except Exception as exc:
            raise ServiceUnavailable("The session store is unavailable.") from exc
        if raw == _TOMBSTONE:
            return None
        record = SessionRecord.loads(raw)
        if seen is not None and float(seen) > record.last_seen_at:
            record = replace(record, last_seen_at=float(seen))
        return record

    async def touch(self, token_hash: str, record: SessionRecord, now: float) -> None:
        """Note activity; written at most once a minute per session, not per request."""
        if now - record.last_seen_at < TOUCH_INTERVAL_SECONDS:
            return
        moment = datetime.fromtimestamp(now, UTC)
        if self.redis is not None:
            remaining = max(1, int(record.expires_at - now))
            try:
                await self.redis.set(_SEEN + token_hash, repr(now), ex=remaining)
            except Exception as exc:
                raise ServiceUnavailable("The session store is unavailable.") from exc
        async with self.sessionmaker() as session, session.begin():
            set_session_tenant(session, record.tenant_id)
            threshold = moment - timedelta(seconds=TOUCH_INTERVAL_SECONDS)
            await repository.touch(session, record.id, moment, threshold)

    async def revoke(self, session: AsyncSession, rows: Sequence[BrowserSession]) -> None:
        """Revoke sessions in the caller's transaction; every process refuses them at once.

        The Redis tombstones are written before the commit: if Redis is down the revocation
        fails (503) rather than leaving a live record behind."""
        if not rows:
            return
        now = utcnow()
        await repository.mark_revoked(session, [row.id for row in rows], now)
        await session.flush()
        if self.redis is None:
            return
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                for row in rows:
                    remaining = int((row.expires_at - now).total_seconds()) + 1
                    if remaining > 0:
                        pipe.set(_RECORD + row.token_hash, _TOMBSTONE, ex=remaining)
                        pipe.delete(_SEEN + row.token_hash)
                await pipe.execute()
        except Exception as exc:
            raise ServiceUnavailable("The session store is unavailable.") from exc

    async def revoke_user(self, session: AsyncSession, user_id: uuid.UUID) -> int:
        """Revoke every session of a user (password change, deactivation, role change)."""
        rows = await repository.unrevoked_for_user(session, user_id)
        await self.revoke(session, rows)
        return len(rows)
