"""Sign-up, login, refresh-token rotation with reuse detection, logout: flows over the tenants,
users and credentials services."""

from __future__ import annotations

import uuid

from sqlalchemy.ext.asyncio import AsyncSession

from app.audit.service import AuditWriter, record
from app.auth.schemas import RegisterRequest, TokenResponse
from app.core.config import Settings
from app.core.db import set_session_tenant
from app.core.errors import Forbidden, Unauthenticated
from app.core.identity import Actor, Principal, Role
from app.core.ratelimit import AsyncLimiter
from app.core.types import utcnow
from app.credentials import refresh as refresh_tokens
from app.credentials.revocation import RevocationStore
from app.credentials.tokens import LocalTokens
from app.tenants import service as tenants
from app.tenants.models import Tenant
from app.users import service as users
from app.users.models import User
from app.users.schemas import LoginRequest


async def create_tenant_with_owner(
    session: AsyncSession,
    *,
    slug: str,
    name: str,
    owner_email: str,
    owner_password: str,
    actor: Actor | None = None,
) -> tuple[Tenant, User]:
    """A tenant and its first owner, atomically, both audited (sign-up and `warden tenant
    create`)."""
    actor = actor or Actor("anonymous", None, owner_email)
    tenant = await tenants.create_tenant(session, slug=slug, name=name, actor=actor)
    user = await users.add_user(
        session,
        tenant_id=tenant.id,
        email=owner_email,
        password=owner_password,
        role=Role.OWNER,
        actor=actor,
    )
    return tenant, user


async def register(
    session: AsyncSession, settings: Settings, data: RegisterRequest
) -> tuple[Tenant, User]:
    """Self-service sign-up, when `ALLOW_SIGNUP` is on."""
    if not settings.allow_signup:
        raise Forbidden("Self-service sign-up is disabled.", code="signup_disabled")
    return await create_tenant_with_owner(
        session,
        slug=data.tenant,
        name=data.tenant_name,
        owner_email=data.email,
        owner_password=data.password,
    )


async def issue_tokens(
    session: AsyncSession,
    tokens: LocalTokens,
    settings: Settings,
    tenant: Tenant,
    user: User,
    family_id: uuid.UUID | None = None,
) -> TokenResponse:
    """A new access token and a refresh token (new family unless one is given)."""
    access, expires_in, _claims = users.access_token_for(tokens, settings, tenant, user)
    refresh = await refresh_tokens.issue(
        session,
        tenant_id=tenant.id,
        user_id=user.id,
        ttl_seconds=tenants.refresh_ttl(settings, tenant),
        family_id=family_id,
    )
    return TokenResponse(access_token=access, expires_in=expires_in, refresh_token=refresh)


async def login(
    session: AsyncSession,
    tokens: LocalTokens,
    limiter: AsyncLimiter,
    audit: AuditWriter,
    settings: Settings,
    data: LoginRequest,
) -> TokenResponse:
    """Email + password in a tenant → an access token and a refresh token."""
    tenant, user, rehashed = await users.verify_login(session, limiter, audit, settings, data)
    issued = await issue_tokens(session, tokens, settings, tenant, user)
    await record(
        session,
        tenant_id=tenant.id,
        action="auth.login",
        actor=Actor("user", str(user.id), user.email),
        target_type="user",
        target_id=str(user.id),
        details={"rehashed": rehashed},
    )
    return issued


async def refresh(
    session: AsyncSession, tokens: LocalTokens, audit: AuditWriter, settings: Settings, token: str
) -> TokenResponse:
    """Rotate a refresh token; presenting a used one revokes its whole family."""
    row = await refresh_tokens.find_for_rotation(session, token)
    if row is None:
        raise Unauthenticated("Invalid refresh token.", code="invalid_refresh_token")
    set_session_tenant(session, row.tenant_id)
    if row.used_at is not None or row.revoked_at is not None:
        await refresh_tokens.revoke_family(session, row.family_id)
        await record(
            session,
            tenant_id=row.tenant_id,
            action="auth.refresh_reuse",
            actor=Actor("user", str(row.user_id)),
            outcome="failure",
            target_type="user",
            target_id=str(row.user_id),
            details={"family": str(row.family_id)},
        )
        error = Unauthenticated(
            "Refresh token already used; the session was revoked.", code="refresh_token_reused"
        )
        error.commit_changes = True
        raise error
    if row.expires_at <= utcnow():
        raise Unauthenticated("Refresh token expired.", code="refresh_token_expired")
    user = await session.get(User, row.user_id)
    tenant = await session.get(Tenant, row.tenant_id)
    if user is None or tenant is None or not user.is_active:
        raise Unauthenticated("Invalid refresh token.", code="invalid_refresh_token")
    row.used_at = utcnow()
    issued = await issue_tokens(session, tokens, settings, tenant, user, family_id=row.family_id)
    audit.submit(
        tenant_id=tenant.id,
        action="auth.refresh",
        actor=Actor("user", str(user.id), user.email),
        outcome="success",
    )
    return issued


async def logout(
    session: AsyncSession, revocations: RevocationStore, principal: Principal, token: str
) -> None:
    """Revoke the refresh family and deny the access token's jti until it expires."""
    row = await refresh_tokens.find_for_rotation(session, token)
    if (
        row is not None
        and row.tenant_id == principal.tenant_id
        and str(row.user_id) == principal.id
    ):
        await refresh_tokens.revoke_family(session, row.family_id)
    if principal.jti and principal.expires_at:
        await revocations.revoke_token(session, principal.jti, principal.expires_at)
    await record(
        session,
        tenant_id=principal.tenant_id,
        action="auth.logout",
        actor=principal.actor,
        target_type="user",
        target_id=principal.id,
    )
