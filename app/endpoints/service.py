"""Endpoint management; every change invalidates the enforcement cache after commit."""

from __future__ import annotations

import uuid
from collections.abc import Collection, Sequence
from typing import Any

from sqlalchemy import Row, func, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from app.audit.service import record
from app.core.db import SKIP_TENANT_FILTER
from app.core.errors import Conflict, Unprocessable
from app.core.hosts import host_name
from app.core.identity import Principal
from app.core.invalidation import InvalidationBus
from app.core.outbound import OutboundRefused, check_outbound_url
from app.core.pagination import PageParams, paginate
from app.core.types import utcnow
from app.endpoints import repository
from app.endpoints.models import Endpoint
from app.endpoints.schemas import EndpointCreate, EndpointUpdate
from app.tenants.models import Tenant

ENDPOINT_TOPIC = "endpoint"


def cache_key(tenant_id: uuid.UUID | str, slug: str) -> str:
    """The invalidation key of one endpoint (the tenant's id, or that id as text)."""
    return f"{tenant_id}:{slug}"


def invalidate_after_commit(
    session: AsyncSession, bus: InvalidationBus, tenant_id: uuid.UUID, slug: str
) -> None:
    """Drop the endpoint (and what is compiled from it: policies, credential, bindings) from
    every process's cache once the change is committed."""
    bus.publish_after_commit(session, ENDPOINT_TOPIC, cache_key(tenant_id, slug))


async def find_by_slug(session: AsyncSession, slug: str) -> Endpoint | None:
    """The endpoint with this slug in the session's tenant, if any."""
    return await repository.find_by_slug(session, slug)


async def get_by_slug(session: AsyncSession, slug: str) -> Endpoint:
    """The endpoint with this slug in the session's tenant, or 404."""
    return await repository.get_by_slug(session, slug)


async def bound_to_hosts(session: AsyncSession, hosts: Sequence[str]) -> Sequence[Row[Any]]:
    """Every endpoint, in any tenant, bound to one of these hosts: (id, tenant_id, slug, host,
    path_prefix, created_at, tenant_slug)."""
    stmt = (
        select(  # type: ignore[call-overload]
            Endpoint.id,
            Endpoint.tenant_id,
            Endpoint.slug,
            Endpoint.host,
            Endpoint.path_prefix,
            Endpoint.created_at,
            Tenant.slug.label("tenant_slug"),  # type: ignore[attr-defined]
        )
        .join(Tenant, Tenant.id == Endpoint.tenant_id)
        .where(Endpoint.host.in_(hosts))  # type: ignore[union-attr]
        # Across tenants on purpose: a gateway names a host, not a tenant; the caller then
        # requires the principal's tenant to own the binding it gets.
        .execution_options(**{SKIP_TENANT_FILTER: True})
    )
    return (await session.execute(stmt)).all()


async def _checked_upstream(allowed_hosts: Collection[str], url: str | None) -> str | None:
    if url is None:
        return None
    try:
        return await check_outbound_url(url, allowed_hosts)
    except OutboundRefused as exc:
        raise Unprocessable(f"upstream_url: {exc}", code="upstream_refused") from exc


async def _ensure_host_free(session: AsyncSession, tenant_id: uuid.UUID, host: str | None) -> None:
    """A gateway host belongs to one tenant: refuse binding a host another tenant binds."""
    if host is None:
        return
    bare = host_name(host)
    host_col = Endpoint.__table__.c.host  # type: ignore[attr-defined]
    stmt = (
        select(Endpoint.__table__.c.id)  # type: ignore[attr-defined]
        .where(
            Endpoint.__table__.c.tenant_id != tenant_id,  # type: ignore[attr-defined]
            (host_col == host) | (host_col == bare) | host_col.like(f"{bare}:%"),
        )
        .limit(1)
        # Cross-tenant on purpose: host ownership is global; only existence is revealed.
        .execution_options(**{SKIP_TENANT_FILTER: True})
    )
    if (await session.execute(stmt)).first() is not None:
        raise Conflict("This host is bound by another tenant.", code="host_taken")


async def list_endpoints(
    session: AsyncSession, params: PageParams, search: str | None = None
) -> tuple[list[Endpoint], str | None]:
    """A page of the tenant's endpoints; `search` keeps those whose name or slug contains it
    (case-insensitive)."""
    stmt = select(Endpoint)
    if search:
        # LIKE wildcards in the search text are matched literally.
        escaped = search.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        needle = f"%{escaped}%"
        stmt = stmt.where(
            or_(
                func.lower(col(Endpoint.name)).like(needle, escape="\\"),
                col(Endpoint.slug).like(needle, escape="\\"),
            )
        )
    return await paginate(session, stmt, Endpoint, params)


async def create_endpoint(
    session: AsyncSession,
    bus: InvalidationBus,
    allowed_hosts: Collection[str],
    principal: Principal,
    data: EndpointCreate,
) -> Endpoint:
    """`POST /endpoints`."""
    if await repository.find_by_slug(session, data.slug) is not None:
        raise Conflict("An endpoint with this slug exists.", code="endpoint_exists")
    values = data.model_dump()
    values["upstream_url"] = await _checked_upstream(allowed_hosts, data.upstream_url)
    await _ensure_host_free(session, principal.tenant_id, data.host)
    endpoint = Endpoint(tenant_id=principal.tenant_id, **values)
    session.add(endpoint)
    try:
        await session.flush()
    except IntegrityError as exc:
        raise Conflict("An endpoint with this slug exists.", code="endpoint_exists") from exc
    await record(
        session,
        tenant_id=principal.tenant_id,
        action="endpoint.created",
        actor=principal.actor,
        target_type="endpoint",
        target_id=str(endpoint.id),
        details={"slug": endpoint.slug, "upstream": bool(endpoint.upstream_url)},
    )
    invalidate_after_commit(session, bus, principal.tenant_id, endpoint.slug)
    return endpoint


async def update_endpoint(
    session: AsyncSession,
    bus: InvalidationBus,
    allowed_hosts: Collection[str],
    principal: Principal,
    slug: str,
    data: EndpointUpdate,
) -> Endpoint:
    """`PATCH /endpoints/{slug}`."""
    endpoint = await repository.get_by_slug(session, slug)
    changes = data.model_dump(exclude_unset=True)
    if "name" in changes and changes["name"] is None:
        raise Unprocessable("name: cannot be null", code="validation_error")
    for flag in ("is_active", "require_host_audience", "exempt_paths"):
        if flag in changes and changes[flag] is None:
            raise Unprocessable(f"{flag}: cannot be null", code="validation_error")
    if "upstream_url" in changes:
        changes["upstream_url"] = await _checked_upstream(allowed_hosts, changes["upstream_url"])
    if changes.get("host"):
        await _ensure_host_free(session, principal.tenant_id, changes["host"])
    changed = [k for k, v in changes.items() if getattr(endpoint, k) != v]
    for key in changed:
        setattr(endpoint, key, changes[key])
    if changed:
        endpoint.updated_at = utcnow()
        await session.flush()
        await record(
            session,
            tenant_id=principal.tenant_id,
            action="endpoint.updated",
            actor=principal.actor,
            target_type="endpoint",
            target_id=str(endpoint.id),
            details={"slug": slug, "changed": sorted(changed)},
        )
        invalidate_after_commit(session, bus, principal.tenant_id, slug)
    return endpoint


async def delete_endpoint(
    session: AsyncSession, bus: InvalidationBus, principal: Principal, slug: str
) -> None:
    """`DELETE /endpoints/{slug}` (its policies and credential go with it)."""
    endpoint = await repository.get_by_slug(session, slug)
    endpoint_id = endpoint.id
    await session.delete(endpoint)
    await session.flush()
    await record(
        session,
        tenant_id=principal.tenant_id,
        action="endpoint.deleted",
        actor=principal.actor,
        target_type="endpoint",
        target_id=str(endpoint_id),
        details={"slug": slug},
    )
    invalidate_after_commit(session, bus, principal.tenant_id, slug)
