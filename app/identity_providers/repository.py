"""Every query of the identity-provider domain (scoped by the tenant filter unless said
otherwise)."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import column, delete, func, select, table, update
from sqlalchemy.ext.asyncio import AsyncSession

from app.core.db import SKIP_TENANT_FILTER
from app.core.errors import NotFound
from app.core.pagination import PageParams, paginate
from app.identity_providers.models import (
    IdentityLink,
    IdentityProvider,
    OidcLogin,
    OidcLogoutToken,
    OidcSession,
)


def _not_found() -> NotFound:
    return NotFound("Identity provider not found.", code="identity_provider_not_found")


async def get(session: AsyncSession, provider_id: uuid.UUID) -> IdentityProvider:
    """The session tenant's provider with this id, or 404 (also for another tenant's id)."""
    row = await session.get(IdentityProvider, provider_id)
    if row is None:
        raise _not_found()
    return row


async def find_by_name(session: AsyncSession, name: str) -> IdentityProvider | None:
    """The session tenant's provider called `name`."""
    stmt = select(IdentityProvider).where(IdentityProvider.name == name)  # type: ignore[arg-type]
    return (await session.execute(stmt)).scalar_one_or_none()


async def count(session: AsyncSession) -> int:
    """How many providers the session tenant has."""
    stmt = select(func.count()).select_from(IdentityProvider)
    return int((await session.execute(stmt)).scalar_one())


async def page(
    session: AsyncSession, params: PageParams
) -> tuple[list[IdentityProvider], str | None]:
    """A page of the session tenant's providers."""
    return await paginate(session, select(IdentityProvider), IdentityProvider, params)


async def enabled(session: AsyncSession) -> list[IdentityProvider]:
    """The session tenant's enabled providers, by name."""
    stmt = (
        select(IdentityProvider)
        .where(IdentityProvider.enabled == True)  # type: ignore[arg-type]  # noqa: E712
        .order_by(IdentityProvider.name)
    )
    return list((await session.execute(stmt)).scalars())


async def by_issuer_and_client(
    session: AsyncSession, issuer: str, client_ids: Sequence[str]
) -> list[IdentityProvider]:
    """Every tenant's providers of `issuer` registered with one of `client_ids`.

    Cross-tenant on purpose: a back-channel logout token names its issuer and audience, not a
    tenant; the signature then decides which of them (if any) sent it."""
    stmt = (
        select(IdentityProvider)
        .where(
            IdentityProvider.issuer == issuer,  # type: ignore[arg-type]
            IdentityProvider.client_id.in_(list(client_ids)),  # type: ignore[attr-defined]
        )
        .execution_options(**{SKIP_TENANT_FILTER: True})
    )
    return list((await session.execute(stmt)).scalars())


async def find_link(
    session: AsyncSession, provider_id: uuid.UUID, subject: str
) -> IdentityLink | None:
    """The local user a provider's `sub` is linked to."""
    stmt = select(IdentityLink).where(
        IdentityLink.provider_id == provider_id,  # type: ignore[arg-type]
        IdentityLink.subject == subject,  # type: ignore[arg-type]
    )
    return (await session.execute(stmt)).scalar_one_or_none()


async def links_of_user(
    session: AsyncSession, user_id: uuid.UUID
) -> list[tuple[IdentityLink, IdentityProvider]]:
    """A user's links to providers, each with its provider."""
    stmt = (
        select(IdentityLink, IdentityProvider)
        .join(IdentityProvider, IdentityProvider.id == IdentityLink.provider_id)  # type: ignore[arg-type]
        .where(IdentityLink.user_id == user_id)  # type: ignore[arg-type]
        .order_by(IdentityLink.created_at)  # type: ignore[arg-type]
    )
    return [(row[0], row[1]) for row in (await session.execute(stmt)).all()]


async def consume_login(
    session: AsyncSession, provider_id: uuid.UUID, state_hash: str, now: datetime
) -> OidcLogin | None:
    """Mark a pending sign-in used, once: None when unknown, used, expired or another
    provider's. The conditional UPDATE settles two callbacks racing with one `state`."""
    stmt = (
        update(OidcLogin)
        .where(
            OidcLogin.state_hash == state_hash,  # type: ignore[arg-type]
            OidcLogin.provider_id == provider_id,  # type: ignore[arg-type]
            OidcLogin.used_at.is_(None),  # type: ignore[union-attr]
            OidcLogin.expires_at > now,  # type: ignore[arg-type]
        )
        .values(used_at=now)
        .execution_options(synchronize_session=False)
    )
    result = await session.execute(stmt)
    if result.rowcount != 1:  # type: ignore[attr-defined]
        return None
    found = select(OidcLogin).where(OidcLogin.state_hash == state_hash)  # type: ignore[arg-type]
    return (await session.execute(found)).scalar_one_or_none()


async def prune_logins(session: AsyncSession, before: datetime) -> None:
    """Forget pending sign-ins that expired before `before` (every tenant's)."""
    await session.execute(
        delete(OidcLogin)
        .where(OidcLogin.expires_at < before)  # type: ignore[arg-type]
        .execution_options(**{SKIP_TENANT_FILTER: True})
    )
    await session.execute(
        delete(OidcLogoutToken).where(OidcLogoutToken.expires_at < before)  # type: ignore[arg-type]
    )


async def oidc_session(session: AsyncSession, browser_session_id: uuid.UUID) -> OidcSession | None:
    """The IdP side of a browser session (None for a password session)."""
    return await session.get(OidcSession, browser_session_id)


async def oidc_sessions_for(
    session: AsyncSession, provider_id: uuid.UUID, *, sid: str | None, subject: str | None
) -> list[OidcSession]:
    """A provider's sessions with this IdP `sid` (or, without one, this `sub`)."""
    stmt = select(OidcSession).where(OidcSession.provider_id == provider_id)  # type: ignore[arg-type]
    if sid is not None:
        stmt = stmt.where(OidcSession.sid == sid)  # type: ignore[arg-type]
    if subject is not None:
        stmt = stmt.where(OidcSession.subject == subject)  # type: ignore[arg-type]
    return list((await session.execute(stmt)).scalars())


async def sessions_to_refresh(
    session: AsyncSession, now: datetime, before: datetime, limit: int
) -> list[tuple[uuid.UUID, uuid.UUID]]:
    """(browser session, tenant) of every tenant's live sessions whose IdP access token expires
    between `now` and `before`. Cross-tenant on purpose: one background task serves them all.
    The browser session's own table is named, not imported (it belongs to `credentials`)."""
    browser = table("browser_sessions", column("id"), column("revoked_at"), column("expires_at"))
    stmt = (
        select(OidcSession.browser_session_id, OidcSession.tenant_id)  # type: ignore[call-overload]
        .join(browser, browser.c.id == OidcSession.browser_session_id)
        .where(
            OidcSession.access_expires_at > now,  # type: ignore[operator]
            OidcSession.access_expires_at < before,  # type: ignore[operator]
            browser.c.revoked_at.is_(None),
            browser.c.expires_at > now,
        )
        .order_by(OidcSession.access_expires_at)
        .limit(limit)
        .execution_options(**{SKIP_TENANT_FILTER: True})
    )
    return [(row[0], row[1]) for row in (await session.execute(stmt)).all()]
