"""Sign-up, login, refresh-token rotation with reuse detection, logout."""

from __future__ import annotations

import asyncio
import hashlib
import secrets
import uuid
from datetime import timedelta
from typing import TYPE_CHECKING

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from app.audit.service import record
from app.auth.schemas import LoginRequest, RegisterRequest, TokenResponse
from app.core.db import SKIP_TENANT_FILTER, set_session_tenant
from app.core.errors import Forbidden, RateLimited, Unauthenticated
from app.core.identity import Actor, Principal
from app.core.passwords import verify_password
from app.core.ratelimit import parse_limit
from app.core.types import utcnow
from app.credentials.models import RefreshToken
from app.credentials.revocation import jti_subject
from app.credentials.tokens import issue_user_access_token
from app.tenants.models import Tenant
from app.tenants.service import create_tenant_with_owner, get_by_slug
from app.users import repository as users
from app.users.models import User

if TYPE_CHECKING:
    from app.web.state import Runtime

REFRESH_PREFIX = "rt_"
LOGIN_FAILED = "Invalid email, password or tenant."


def hash_refresh_token(token: str) -> str:
    """Refresh tokens are stored as SHA-256 only (they are long random strings)."""
    return hashlib.sha256(token.encode()).hexdigest()


async def register(
    session: AsyncSession, runtime: Runtime, data: RegisterRequest
) -> tuple[Tenant, User]:
    """Self-service sign-up, when `ALLOW_SIGNUP` is on."""
    if not runtime.settings.allow_signup:
        raise Forbidden("Self-service sign-up is disabled.", code="signup_disabled")
    return await create_tenant_with_owner(
        session,
        slug=data.tenant,
        name=data.tenant_name,
        owner_email=data.email,
        owner_password=data.password,
    )


def _refresh_ttl(runtime: Runtime, tenant: Tenant) -> int:
    override = tenant.settings.get("refresh_token_ttl_seconds")
    return int(override or runtime.settings.refresh_token_ttl_seconds)


async def issue_tokens(
    session: AsyncSession,
    runtime: Runtime,
    tenant: Tenant,
    user: User,
    family_id: uuid.UUID | None = None,
) -> TokenResponse:
    """A new access token and a refresh token (new family unless one is given)."""
    access, expires_in, _claims = issue_user_access_token(runtime, tenant, user)
    refresh = REFRESH_PREFIX + secrets.token_urlsafe(32)
    session.add(
        RefreshToken(
            tenant_id=tenant.id,
            user_id=user.id,
            family_id=family_id or uuid.uuid4(),
            token_hash=hash_refresh_token(refresh),
            expires_at=utcnow() + timedelta(seconds=_refresh_ttl(runtime, tenant)),
        )
    )
    await session.flush()
    return TokenResponse(access_token=access, expires_in=expires_in, refresh_token=refresh)


async def verify_login(
    session: AsyncSession, runtime: Runtime, data: LoginRequest
) -> tuple[Tenant, User, bool]:
    """Check email + password in a tenant (per-account limit, failures audited as `auth.login`).

    Unknown accounts cost the same as wrong passwords. Returns the tenant, the user and whether
    the password hash was upgraded; the session is left scoped to the tenant."""
    email = data.email.strip().lower()
    account_limit = parse_limit(runtime.settings.login_rate_limit)
    state = await runtime.limiter.hit(account_limit, "login-account", data.tenant, email)
    if not state.allowed:
        runtime.audit.submit(
            tenant_id=None,
            action="auth.login",
            actor=Actor("anonymous", None, email),
            outcome="rate_limited",
            details={"tenant": data.tenant},
        )
        raise RateLimited("Too many login attempts for this account.", headers=state.headers())
    tenant = await get_by_slug(session, data.tenant)
    user = None
    if tenant is not None:
        set_session_tenant(session, tenant.id)
        user = await users.find_by_email(session, email)
    ok, new_hash = await asyncio.to_thread(
        verify_password, data.password, user.password_hash if user else None
    )
    if tenant is None or user is None or not ok or not user.is_active:
        reason = (
            "unknown_tenant"
            if tenant is None
            else "unknown_user"
            if user is None
            else "bad_password"
            if not ok
            else "inactive"
        )
        runtime.audit.submit(
            tenant_id=tenant.id if tenant else None,
            action="auth.login",
            actor=Actor("user" if user else "anonymous", str(user.id) if user else None, email),
            outcome="failure",
            details={"reason": reason},
        )
        raise Unauthenticated(LOGIN_FAILED, code="invalid_credentials")
    if new_hash:
        user.password_hash = new_hash
    return tenant, user, bool(new_hash)


async def login(session: AsyncSession, runtime: Runtime, data: LoginRequest) -> TokenResponse:
    """Email + password in a tenant → an access token and a refresh token."""
    tenant, user, rehashed = await verify_login(session, runtime, data)
    tokens = await issue_tokens(session, runtime, tenant, user)
    await record(
        session,
        tenant_id=tenant.id,
        action="auth.login",
        actor=Actor("user", str(user.id), user.email),
        target_type="user",
        target_id=str(user.id),
        details={"rehashed": rehashed},
    )
    return tokens


async def _revoke_family(session: AsyncSession, family_id: uuid.UUID) -> None:
    await session.execute(
        update(RefreshToken)
        .where(RefreshToken.family_id == family_id, RefreshToken.revoked_at.is_(None))  # type: ignore[arg-type, union-attr]
        .values(revoked_at=utcnow())
    )


async def _find_refresh(session: AsyncSession, token: str) -> RefreshToken | None:
    if not token.startswith(REFRESH_PREFIX):
        return None
    stmt = (
        select(RefreshToken)
        .where(RefreshToken.token_hash == hash_refresh_token(token))  # type: ignore[arg-type]
        .with_for_update()
        .execution_options(**{SKIP_TENANT_FILTER: True})
    )
    return (await session.execute(stmt)).scalar_one_or_none()


async def refresh(session: AsyncSession, runtime: Runtime, token: str) -> TokenResponse:
    """Rotate a refresh token; presenting a used one revokes its whole family."""
    row = await _find_refresh(session, token)
    if row is None:
        raise Unauthenticated("Invalid refresh token.", code="invalid_refresh_token")
    set_session_tenant(session, row.tenant_id)
    if row.used_at is not None or row.revoked_at is not None:
        await _revoke_family(session, row.family_id)
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
    tokens = await issue_tokens(session, runtime, tenant, user, family_id=row.family_id)
    runtime.audit.submit(
        tenant_id=tenant.id,
        action="auth.refresh",
        actor=Actor("user", str(user.id), user.email),
        outcome="success",
    )
    return tokens


async def logout(session: AsyncSession, runtime: Runtime, principal: Principal, token: str) -> None:
    """Revoke the refresh family and deny the access token's jti until it expires."""
    row = await _find_refresh(session, token)
    if (
        row is not None
        and row.tenant_id == principal.tenant_id
        and str(row.user_id) == principal.id
    ):
        await _revoke_family(session, row.family_id)
    if principal.jti and principal.expires_at:
        remaining = max(1, principal.expires_at - int(utcnow().timestamp()))
        ttl = timedelta(seconds=remaining + runtime.settings.jwt_leeway_seconds)
        await runtime.revocations.revoke(session, jti_subject(principal.jti), ttl=ttl)
    await record(
        session,
        tenant_id=principal.tenant_id,
        action="auth.logout",
        actor=principal.actor,
        target_type="user",
        target_id=principal.id,
    )
