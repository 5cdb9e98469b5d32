"""API keys: `wk_` + 256 random bits; only SHA-256 is stored; revocation is seen everywhere."""

from __future__ import annotations

import secrets
import uuid
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.apikeys.models import ApiKey
from app.apikeys.schemas import ApiKeyCreate
from app.audit.service import record
from app.core.db import SKIP_TENANT_FILTER
from app.core.errors import Conflict, NotFound, Unprocessable
from app.core.hashing import sha256_hex
from app.core.identity import Principal
from app.core.invalidation import InvalidationBus
from app.core.pagination import PageParams, paginate
from app.core.types import utcnow
from app.tenants.models import Tenant

KEY_PREFIX = "wk_"
APIKEY_TOPIC = "apikey"


def hash_key(key: str) -> str:
    """API keys are long random strings: SHA-256 is the right hash (no stretching needed)."""
    return sha256_hex(key)


@dataclass(frozen=True)
class ResolvedKey:
    """What authentication needs to know about a key (cached per process)."""

    id: uuid.UUID
    tenant_id: uuid.UUID
    tenant_slug: str
    name: str
    scopes: frozenset[str]
    expires_at: float | None
    revoked: bool


async def resolve_key(session: AsyncSession, key: str) -> ResolvedKey | None:
    """Look a presented key up across tenants (the key itself names its tenant)."""
    stmt = (
        select(ApiKey, Tenant.slug)  # type: ignore[call-overload]
        .join(Tenant, Tenant.id == ApiKey.tenant_id)
        .where(ApiKey.key_hash == hash_key(key))
        .execution_options(**{SKIP_TENANT_FILTER: True})
    )
    row = (await session.execute(stmt)).first()
    if row is None:
        return None
    api_key, slug = row
    return ResolvedKey(
        id=api_key.id,
        tenant_id=api_key.tenant_id,
        tenant_slug=slug,
        name=api_key.name,
        scopes=frozenset(api_key.scopes),
        expires_at=api_key.expires_at.timestamp() if api_key.expires_at else None,
        revoked=api_key.revoked_at is not None,
    )


async def list_keys(session: AsyncSession, params: PageParams) -> tuple[list[ApiKey], str | None]:
    """A page of the tenant's keys (metadata only)."""
    return await paginate(session, select(ApiKey), ApiKey, params)


async def create_key(
    session: AsyncSession, principal: Principal, data: ApiKeyCreate
) -> tuple[ApiKey, str]:
    """Make a key; the secret is returned once and never stored."""
    if data.expires_at is not None and data.expires_at <= utcnow():
        raise Unprocessable("expires_at: must be in the future", code="validation_error")
    active = select(func.count()).select_from(ApiKey).where(ApiKey.revoked_at.is_(None))  # type: ignore[union-attr]
    count = (await session.execute(active)).scalar_one()
    if count >= 1000:
        raise Conflict("Too many active API keys.", code="too_many")
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    row = ApiKey(
        tenant_id=principal.tenant_id,
        name=data.name,
        prefix=key[:10],
        key_hash=hash_key(key),
        scopes=list(data.scopes),
        created_by=principal.id,
        expires_at=data.expires_at,
    )
    session.add(row)
    await session.flush()
    await record(
        session,
        tenant_id=principal.tenant_id,
        action="api_key.created",
        actor=principal.actor,
        target_type="api_key",
        target_id=str(row.id),
        details={"name": row.name, "prefix": row.prefix, "scopes": row.scopes},
    )
    return row, key


async def revoke_key(
    session: AsyncSession, bus: InvalidationBus, principal: Principal, key_id: uuid.UUID
) -> None:
    """Revoke a key; every process refuses it from the commit on."""
    row = await session.get(ApiKey, key_id)
    if row is None:
        raise NotFound("API key not found.", code="api_key_not_found")
    if row.revoked_at is None:
        row.revoked_at = utcnow()
        await session.flush()
        await record(
            session,
            tenant_id=principal.tenant_id,
            action="api_key.revoked",
            actor=principal.actor,
            target_type="api_key",
            target_id=str(row.id),
            details={"prefix": row.prefix},
        )
    bus.publish_after_commit(session, APIKEY_TOPIC, row.key_hash)


def expired(resolved: ResolvedKey, now: datetime | None = None) -> bool:
    """True when the key's expiry has passed."""
    moment = (now or utcnow()).timestamp()
    return resolved.expires_at is not None and resolved.expires_at <= moment


async def mark_used(sessionmaker: async_sessionmaker[AsyncSession], ids: set[uuid.UUID]) -> None:
    """Record `last_used_at` for keys used recently (a maintenance write across tenants)."""
    async with sessionmaker() as session, session.begin():
        session.info[SKIP_TENANT_FILTER] = True
        await session.execute(
            update(ApiKey)
            .where(ApiKey.id.in_(ids))  # type: ignore[attr-defined]
            .values(last_used_at=utcnow())
            .execution_options(**{SKIP_TENANT_FILTER: True})
        )


async def created_by(session: AsyncSession, user_id: uuid.UUID) -> list[ApiKey]:
    """The API keys a user created, oldest first (the user's own data export)."""
    stmt = (
        select(ApiKey)
        .where(ApiKey.created_by == str(user_id))  # type: ignore[arg-type]
        .order_by(ApiKey.created_at, ApiKey.id)  # type: ignore[arg-type]
    )
    return list((await session.execute(stmt)).scalars())


async def credit_to(session: AsyncSession, user_id: uuid.UUID, alias: str) -> None:
    """Erasure: the keys a user created stay the tenant's, credited to the pseudonym."""
    await session.execute(
        update(ApiKey)
        .where(ApiKey.created_by == str(user_id))  # type: ignore[arg-type]
        .values(created_by=alias)
        .execution_options(synchronize_session=False)
    )
