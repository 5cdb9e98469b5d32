"""Every query on trusted issuers (scoped by the tenant filter unless said otherwise)."""

from __future__ import annotations

import uuid

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from app.core.db import SKIP_TENANT_FILTER
from app.core.errors import NotFound
from app.core.pagination import PageParams, paginate
from app.issuers.models import IssuerAudience, TrustedIssuer
from app.tenants.models import Tenant


async def find_by_issuer(session: AsyncSession, issuer: str) -> TrustedIssuer | None:
    """The session tenant's issuer with this exact `iss`."""
    stmt = select(TrustedIssuer).where(TrustedIssuer.issuer == issuer)  # type: ignore[arg-type]
    return (await session.execute(stmt)).scalar_one_or_none()


async def get(session: AsyncSession, issuer_id: uuid.UUID) -> TrustedIssuer:
    """The session tenant's issuer with this id, or 404 (also for another tenant's id)."""
    row = await session.get(TrustedIssuer, issuer_id)
    if row is None:
        raise NotFound("Trusted issuer not found.", code="issuer_not_found")
    return row


async def all_of_tenant(session: AsyncSession) -> list[TrustedIssuer]:
    """Every issuer the session's tenant trusts, by `iss`."""
    stmt = select(TrustedIssuer).order_by(TrustedIssuer.issuer)
    return list((await session.execute(stmt)).scalars())


async def count(session: AsyncSession) -> int:
    """How many issuers the session tenant trusts."""
    stmt = select(func.count()).select_from(TrustedIssuer)
    return int((await session.execute(stmt)).scalar_one())


async def page(session: AsyncSession, params: PageParams) -> tuple[list[TrustedIssuer], str | None]:
    """A page of the session tenant's issuers."""
    return await paginate(session, select(TrustedIssuer), TrustedIssuer, params)


async def all_with_tenant_slugs(session: AsyncSession) -> list[tuple[TrustedIssuer, str]]:
    """Every tenant's issuers with the tenant's slug, for the satellite-token index.

    Cross-tenant on purpose: a satellite token names its issuer, not its tenant, so the tenants
    trusting an `iss` can only be found by looking across all of them."""
    stmt = (
        select(TrustedIssuer, Tenant.slug)  # type: ignore[call-overload]
        .join(Tenant, Tenant.id == TrustedIssuer.tenant_id)
        .execution_options(**{SKIP_TENANT_FILTER: True})
    )
    return [(row[0], row[1]) for row in (await session.execute(stmt)).all()]


async def audience_owners(session: AsyncSession, keys: list[str]) -> dict[str, uuid.UUID]:
    """Pair key → the tenant owning that (issuer, audience) pair, across every tenant.

    Cross-tenant on purpose: a pair belongs to one tenant, so whether another tenant already
    holds it can only be seen by looking across all of them."""
    stmt = (
        select(IssuerAudience.key, IssuerAudience.tenant_id)  # type: ignore[call-overload]
        .where(IssuerAudience.key.in_(keys))  # type: ignore[attr-defined]
        .execution_options(**{SKIP_TENANT_FILTER: True})
    )
    return {row[0]: row[1] for row in (await session.execute(stmt)).all()}


async def all_owned_audiences(session: AsyncSession) -> set[tuple[uuid.UUID, str]]:
    """Every (issuer row id, audience) its tenant owns, for the satellite-token index."""
    stmt = select(IssuerAudience.issuer_id, IssuerAudience.audience).execution_options(  # type: ignore[call-overload]
        **{SKIP_TENANT_FILTER: True}
    )
    return {(row[0], row[1]) for row in (await session.execute(stmt)).all()}
