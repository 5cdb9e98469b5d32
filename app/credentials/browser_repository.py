"""Every query on browser sessions (the tenant filter scopes them; see app.core.db)."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Select, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from app.core.db import SKIP_TENANT_FILTER
from app.credentials.models import BrowserSession


async def find_by_token_hash(session: AsyncSession, token_hash: str) -> BrowserSession | None:
    """The session a cookie names, whichever tenant it belongs to."""
    stmt = (
        select(BrowserSession)
        .where(BrowserSession.token_hash == token_hash)  # type: ignore[arg-type]
        # Cross-tenant on purpose: the cookie itself names its session (and so its tenant); the
        # principal built from the row is bound to that tenant from here on.
        .execution_options(**{SKIP_TENANT_FILTER: True})
    )
    return (await session.execute(stmt)).scalar_one_or_none()


async def of_user(session: AsyncSession, user_id: uuid.UUID) -> list[BrowserSession]:
    """The user's browser sessions, oldest first (the user's own data export)."""
    stmt = (
        select(BrowserSession)
        .where(BrowserSession.user_id == user_id)  # type: ignore[arg-type]
        .order_by(BrowserSession.created_at, BrowserSession.id)  # type: ignore[arg-type]
    )
    return list((await session.execute(stmt)).scalars())


async def get(session: AsyncSession, session_id: uuid.UUID) -> BrowserSession | None:
    """A session of the session's tenant, by id."""
    return await session.get(BrowserSession, session_id)


def live_for_user(user_id: uuid.UUID, now: datetime, idle_seconds: int) -> Select[Any]:
    """The user's sessions that are neither revoked nor past either timeout."""
    return select(BrowserSession).where(
        BrowserSession.user_id == user_id,  # type: ignore[arg-type]
        BrowserSession.revoked_at.is_(None),  # type: ignore[union-attr]
        BrowserSession.expires_at > now,  # type: ignore[arg-type]
        BrowserSession.last_seen_at > now - timedelta(seconds=idle_seconds),  # type: ignore[arg-type]
    )


async def unrevoked_for_user(session: AsyncSession, user_id: uuid.UUID) -> list[BrowserSession]:
    """Every session of a user that has not been revoked yet (expired ones included)."""
    stmt = select(BrowserSession).where(
        BrowserSession.user_id == user_id,  # type: ignore[arg-type]
        BrowserSession.revoked_at.is_(None),  # type: ignore[union-attr]
    )
    return list((await session.execute(stmt)).scalars())


async def mark_revoked(session: AsyncSession, ids: Sequence[uuid.UUID], at: datetime) -> None:
    """Set `revoked_at` on these sessions (those not revoked already)."""
    await session.execute(
        update(BrowserSession)
        .where(
            BrowserSession.id.in_(ids),  # type: ignore[attr-defined]
            BrowserSession.revoked_at.is_(None),  # type: ignore[union-attr]
        )
        .values(revoked_at=at)
    )


async def touch(
    session: AsyncSession, session_id: uuid.UUID, at: datetime, older_than: datetime
) -> None:
    """Move `last_seen_at` forward, unless another request already did within the interval."""
    await session.execute(
        update(BrowserSession)
        .where(
            BrowserSession.id == session_id,  # type: ignore[arg-type]
            BrowserSession.last_seen_at < older_than,  # type: ignore[arg-type]
        )
        .values(last_seen_at=at)
    )
