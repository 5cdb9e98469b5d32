"""Refresh tokens: rotating, stored as SHA-256 only, in families (one per login) so that the
reuse of a used token revokes the whole family."""

from __future__ import annotations

import secrets
import uuid
from datetime import timedelta

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from app.core.db import SKIP_TENANT_FILTER
from app.core.hashing import sha256_hex
from app.core.types import utcnow
from app.credentials.models import RefreshToken

REFRESH_PREFIX = "rt_"


def hash_refresh_token(token: str) -> str:
    """Refresh tokens are long random strings: SHA-256 is the right hash."""
    return sha256_hex(token)


async def issue(
    session: AsyncSession,
    *,
    tenant_id: uuid.UUID,
    user_id: uuid.UUID,
    ttl_seconds: int,
    family_id: uuid.UUID | None = None,
) -> str:
    """A new refresh token (a new family unless one is given); only its hash is stored."""
    token = REFRESH_PREFIX + secrets.token_urlsafe(32)
    session.add(
        RefreshToken(
            tenant_id=tenant_id,
            user_id=user_id,
            family_id=family_id or uuid.uuid4(),
            token_hash=hash_refresh_token(token),
            expires_at=utcnow() + timedelta(seconds=ttl_seconds),
        )
    )
    await session.flush()
    return token


async def find_for_rotation(session: AsyncSession, token: str) -> RefreshToken | None:
    """The row a presented token names, locked, whichever tenant it belongs to (the token itself
    names its tenant)."""
    if not token.startswith(REFRESH_PREFIX):
        return None
    stmt = (
        select(RefreshToken)
        .where(col(RefreshToken.token_hash) == hash_refresh_token(token))
        .with_for_update()
        .execution_options(**{SKIP_TENANT_FILTER: True})
    )
    return (await session.execute(stmt)).scalar_one_or_none()


async def revoke_family(session: AsyncSession, family_id: uuid.UUID) -> None:
    """Revoke every live token of one login."""
    await session.execute(
        update(RefreshToken)
        .where(col(RefreshToken.family_id) == family_id, col(RefreshToken.revoked_at).is_(None))
        .values(revoked_at=utcnow())
    )


async def revoke_all_of_user(session: AsyncSession, user_id: uuid.UUID) -> None:
    """Revoke every live refresh token of a user (in the session's tenant)."""
    await session.execute(
        update(RefreshToken)
        .where(col(RefreshToken.user_id) == user_id, col(RefreshToken.revoked_at).is_(None))
        .values(revoked_at=utcnow())
    )


async def of_user(session: AsyncSession, user_id: uuid.UUID) -> list[RefreshToken]:
    """The user's refresh tokens, oldest first (the user's own data export)."""
    stmt = (
        select(RefreshToken)
        .where(col(RefreshToken.user_id) == user_id)
        .order_by(col(RefreshToken.created_at), col(RefreshToken.id))
    )
    return list((await session.execute(stmt)).scalars())
