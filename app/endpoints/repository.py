"""Every query on endpoints (scoped by the tenant filter)."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from app.core.errors import NotFound
from app.endpoints.models import Endpoint


async def find_by_slug(session: AsyncSession, slug: str) -> Endpoint | None:
    """The endpoint with this slug in the session's tenant."""
    stmt = select(Endpoint).where(Endpoint.slug == slug)  # type: ignore[arg-type]
    return (await session.execute(stmt)).scalar_one_or_none()


async def get_by_slug(session: AsyncSession, slug: str) -> Endpoint:
    """The endpoint with this slug, or 404."""
    endpoint = await find_by_slug(session, slug)
    if endpoint is None:
        raise NotFound("Endpoint not found.", code="endpoint_not_found")
    return endpoint
