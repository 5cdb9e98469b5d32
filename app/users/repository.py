"""Every query on users (the tenant filter scopes them; see app.core.db)."""

from __future__ import annotations

import uuid

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from app.core.errors import NotFound
from app.users.models import User


async def get_user(session: AsyncSession, user_id: uuid.UUID) -> User:
    """A user of the session's tenant, or 404."""
    user = await session.get(User, user_id)
    if user is None:
        raise NotFound("User not found.", code="user_not_found")
    return user


async def find_by_email(session: AsyncSession, email: str) -> User | None:
    """The user with this normalised email in the session's tenant."""
    stmt = select(User).where(User.email == email)  # type: ignore[arg-type]
    return (await session.execute(stmt)).scalar_one_or_none()


async def count_active_owners(session: AsyncSession) -> int:
    """How many active owners the session's tenant has."""
    stmt = (
        select(func.count()).select_from(User).where(User.role == "owner", User.is_active.is_(True))  # type: ignore[arg-type, attr-defined]
    )
    return int((await session.execute(stmt)).scalar_one())
