"""Queries for a user's own data (the session's tenant filter scopes every one of them)."""

from __future__ import annotations

import uuid

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from app.apikeys.models import ApiKey
from app.credentials.models import BrowserSession, RefreshToken


async def refresh_tokens_of(session: AsyncSession, user_id: uuid.UUID) -> list[RefreshToken]:
    """The user's refresh tokens, oldest first."""
    stmt = (
        select(RefreshToken)
        .where(col(RefreshToken.user_id) == user_id)
        .order_by(col(RefreshToken.created_at), col(RefreshToken.id))
    )
    return list((await session.execute(stmt)).scalars())


async def browser_sessions_of(session: AsyncSession, user_id: uuid.UUID) -> list[BrowserSession]:
    """The user's browser sessions, oldest first."""
    stmt = (
        select(BrowserSession)
        .where(col(BrowserSession.user_id) == user_id)
        .order_by(col(BrowserSession.created_at), col(BrowserSession.id))
    )
    return list((await session.execute(stmt)).scalars())


async def api_keys_created_by(session: AsyncSession, user_id: uuid.UUID) -> list[ApiKey]:
    """The API keys the user created, oldest first."""
    stmt = (
        select(ApiKey)
        .where(col(ApiKey.created_by) == str(user_id))
        .order_by(col(ApiKey.created_at), col(ApiKey.id))
    )
    return list((await session.execute(stmt)).scalars())


async def reassign_api_keys(session: AsyncSession, user_id: uuid.UUID, alias: str) -> None:
    """Erasure: keys the user created stay the tenant's, credited to the pseudonym."""
    await session.execute(
        update(ApiKey)
        .where(col(ApiKey.created_by) == str(user_id))
        .values(created_by=alias)
        .execution_options(synchronize_session=False)
    )
