"""Tenant creation, settings and deletion."""

from __future__ import annotations

import uuid

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlmodel import col

from app.audit.service import forget_chain, record
from app.core.config import Settings
from app.core.db import SKIP_TENANT_FILTER, set_session_tenant
from app.core.errors import Conflict, NotFound
from app.core.identity import Actor, Principal
from app.core.types import utcnow
from app.credentials.revocation import RevocationStore
from app.tenants.models import Tenant
from app.tenants.schemas import TenantUpdate


async def get_by_slug(session: AsyncSession, slug: str) -> Tenant | None:
    """The tenant with this slug, if any."""
    stmt = select(Tenant).where(Tenant.slug == slug)  # type: ignore[arg-type]
    return (await session.execute(stmt)).scalar_one_or_none()


async def get_tenant(session: AsyncSession, tenant_id: uuid.UUID) -> Tenant:
    """The caller's tenant (404 if it was deleted meanwhile)."""
    tenant = await session.get(Tenant, tenant_id)
    if tenant is None:
        raise NotFound("Tenant not found.", code="tenant_not_found")
    return tenant


async def create_tenant(session: AsyncSession, *, slug: str, name: str, actor: Actor) -> Tenant:
    """A new tenant, audited in its own chain; the session is scoped to it from here on."""
    if await get_by_slug(session, slug) is not None:
        raise Conflict("This tenant slug is taken.", code="tenant_exists")
    tenant = Tenant(slug=slug, name=name)
    session.add(tenant)
    try:
        await session.flush()
    except IntegrityError as exc:
        raise Conflict("This tenant slug is taken.", code="tenant_exists") from exc
    set_session_tenant(session, tenant.id)
    await record(
        session,
        tenant_id=tenant.id,
        action="tenant.created",
        actor=actor,
        target_type="tenant",
        target_id=str(tenant.id),
        details={"slug": slug},
    )
    return tenant


def access_ttl(settings: Settings, tenant: Tenant) -> int:
    """The access-token lifetime of a tenant in seconds (its override, else the server's)."""
    override = tenant.settings.get("access_token_ttl_seconds")
    return int(override or settings.access_token_ttl_seconds)


def refresh_ttl(settings: Settings, tenant: Tenant) -> int:
    """The refresh-token lifetime of a tenant in seconds (its override, else the server's)."""
    override = tenant.settings.get("refresh_token_ttl_seconds")
    return int(override or settings.refresh_token_ttl_seconds)


def session_timeouts(settings: Settings, tenant: Tenant) -> tuple[int, int]:
    """(idle, absolute) browser-session lifetimes in seconds: the tenant's, else the server's."""
    idle = tenant.settings.get("session_idle_timeout_seconds") or (
        settings.session_idle_timeout_seconds
    )
    absolute = tenant.settings.get("session_absolute_timeout_seconds") or (
        settings.session_absolute_timeout_seconds
    )
    return int(idle), int(absolute)


async def update_tenant(session: AsyncSession, principal: Principal, data: TenantUpdate) -> Tenant:
    """`PATCH /tenant`: name and settings."""
    tenant = await get_tenant(session, principal.tenant_id)
    changed: list[str] = []
    if data.name is not None and data.name != tenant.name:
        tenant.name = data.name
        changed.append("name")
    if data.settings is not None:
        merged = {**tenant.settings, **data.settings.model_dump(exclude_unset=True)}
        if merged != tenant.settings:
            tenant.settings = merged
            changed.append("settings")
    if changed:
        tenant.updated_at = utcnow()
        await session.flush()
        await record(
            session,
            tenant_id=tenant.id,
            action="tenant.updated",
            actor=principal.actor,
            target_type="tenant",
            target_id=str(tenant.id),
            details={"changed": changed},
        )
    return tenant


async def delete_tenant(
    session: AsyncSession, revocations: RevocationStore, principal: Principal
) -> None:
    """`DELETE /tenant` (owner): every row of the tenant goes; its tokens die at once."""
    tenant = await get_tenant(session, principal.tenant_id)
    # The chain head first, as the audit writer takes it before it inserts (which needs a share
    # lock on the tenant row): the other order deadlocks with a flush of the tenant's events.
    await forget_chain(session, tenant.id)
    await revocations.revoke_tenant(session, tenant.id)
    await session.delete(tenant)
    await session.flush()
    # The tenant's own chain is gone with it; the deletion is kept in the system chain.
    await record(
        session,
        tenant_id=None,
        action="tenant.deleted",
        actor=principal.actor,
        target_type="tenant",
        target_id=str(tenant.id),
        details={"slug": tenant.slug},
    )


async def slugs_by_id(sessionmaker: async_sessionmaker[AsyncSession]) -> dict[str, str]:
    """Every tenant's slug by its id as text (maintenance across tenants, e.g. audit chains)."""
    async with sessionmaker() as session:
        stmt = select(col(Tenant.id), col(Tenant.slug)).execution_options(
            **{SKIP_TENANT_FILTER: True}
        )
        rows = (await session.execute(stmt)).all()
    return {str(tenant_id): str(slug) for tenant_id, slug in rows}
