"""User management with the role rules of PRODUCT.md."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from app.audit.service import AuditWriter, record
from app.core.config import Settings
from app.core.db import set_session_tenant
from app.core.emails import normalize_email
from app.core.errors import Conflict, Forbidden, RateLimited, Unauthenticated, Unprocessable
from app.core.identity import Actor, Principal, Role
from app.core.pagination import PageParams, paginate
from app.core.passwords import hash_password, password_problem, verify_password
from app.core.ratelimit import AsyncLimiter, parse_limit
from app.core.types import utcnow
from app.credentials import refresh
from app.credentials.browser import HolderLoader, SessionHolder, SessionStore
from app.credentials.revocation import RevocationStore
from app.credentials.tokens import LocalTokens
from app.tenants import service as tenants
from app.tenants.models import Tenant
from app.users import repository
from app.users.models import User
from app.users.schemas import LoginRequest, UserCreate, UserUpdate

LOGIN_FAILED = "Invalid email, password or tenant."


def normalise_email_or_422(raw: str) -> str:
    """Normalise an email or answer 422 naming the problem."""
    try:
        return normalize_email(raw)
    except ValueError as exc:
        raise Unprocessable(f"Invalid email: {exc}", code="invalid_email") from exc


def check_password(password: str, email: str | None = None) -> None:
    """Refuse a weak new password with 422."""
    problem = password_problem(password, email=email)
    if problem:
        raise Unprocessable(f"Invalid password: {problem}.", code="weak_password")


async def hash_password_async(password: str) -> str:
    """argon2id off the event loop."""
    return await asyncio.to_thread(hash_password, password)


async def add_user(
    session: AsyncSession,
    *,
    tenant_id: uuid.UUID,
    email: str,
    password: str,
    role: Role,
    actor: Actor,
) -> User:
    """Create a user (validated) and audit it in the same transaction."""
    email = normalise_email_or_422(email)
    check_password(password, email)
    if await repository.find_by_email(session, email) is not None:
        raise Conflict("A user with this email already exists.", code="email_taken")
    user = User(
        tenant_id=tenant_id,
        email=email,
        password_hash=await hash_password_async(password),
        role=role.value,
    )
    return await _insert_user(session, user, actor, {})


async def _insert_user(
    session: AsyncSession, user: User, actor: Actor, details: dict[str, Any]
) -> User:
    """Write a new user (a taken email is 409 `email_taken`) and audit `user.created` in the
    same transaction."""
    session.add(user)
    try:
        await session.flush()
    except IntegrityError as exc:
        raise Conflict("A user with this email already exists.", code="email_taken") from exc
    await record(
        session,
        tenant_id=user.tenant_id,
        action="user.created",
        actor=actor,
        target_type="user",
        target_id=str(user.id),
        details={"role": user.role, **details},
    )
    return user


# Never a valid hash: a user made by an identity provider has no password until one is set.
NO_PASSWORD = "!federated"  # noqa: S105 (not a hash: matches no password)


async def add_federated_user(
    session: AsyncSession,
    *,
    tenant_id: uuid.UUID,
    email: str,
    role: Role,
    actor: Actor,
    details: dict[str, Any],
) -> User:
    """Create a user vouched for by an identity provider (no password), audited as
    `user.created` in the same transaction."""
    email = normalise_email_or_422(email)
    user = User(tenant_id=tenant_id, email=email, password_hash=NO_PASSWORD, role=role.value)
    return await _insert_user(session, user, actor, details)


async def list_users(session: AsyncSession, params: PageParams) -> tuple[list[User], str | None]:
    """A page of the tenant's users."""
    return await paginate(session, select(User), User, params)


async def create_user(session: AsyncSession, principal: Principal, data: UserCreate) -> User:
    """`POST /users`: admins cannot create owners."""
    if data.role == Role.OWNER and principal.role != Role.OWNER:
        raise Forbidden("Only an owner can create another owner.", code="role_escalation")
    return await add_user(
        session,
        tenant_id=principal.tenant_id,
        email=data.email,
        password=data.password,
        role=data.role,
        actor=principal.actor,
    )


def _guard_target(principal: Principal, target: User) -> None:
    if target.role == Role.OWNER and principal.role != Role.OWNER:
        raise Forbidden("Only an owner can change or remove an owner.", code="role_escalation")


async def ensure_not_last_owner(
    session: AsyncSession, target: User, message: str = "The tenant must keep at least one owner."
) -> None:
    """The last-owner rule: the tenant's only active owner cannot be demoted, deactivated,
    deleted or erased (409 `last_owner`)."""
    if target.role == Role.OWNER and target.is_active:
        if await repository.count_active_owners(session) <= 1:
            raise Conflict(message, code="last_owner")


async def revoke_user_credentials(
    session: AsyncSession, revocations: RevocationStore, sessions: SessionStore, user: User
) -> None:
    """Kill the user's refresh tokens, browser sessions and every access token of an older
    version."""
    user.token_version += 1
    await refresh.revoke_all_of_user(session, user.id)
    await revocations.revoke_user(session, user.id, min_version=user.token_version)
    await sessions.revoke_user(session, user.id)


async def get_user(session: AsyncSession, user_id: uuid.UUID) -> User:
    """A user of the session's tenant, or 404."""
    return await repository.get_user(session, user_id)


async def update_user(
    session: AsyncSession,
    revocations: RevocationStore,
    sessions: SessionStore,
    principal: Principal,
    user_id: uuid.UUID,
    data: UserUpdate,
) -> User:
    """`PATCH /users/{id}` with the escalation and last-owner rules."""
    user = await repository.get_user(session, user_id)
    _guard_target(principal, user)
    changed: list[str] = []
    demoting = data.role is not None and data.role != Role.OWNER
    deactivating = data.is_active is False
    if (demoting or deactivating) and user.role == Role.OWNER:
        await ensure_not_last_owner(session, user)
    if data.role is not None and data.role != user.role:
        if data.role == Role.OWNER and principal.role != Role.OWNER:
            raise Forbidden("Only an owner can grant the owner role.", code="role_escalation")
        user.role = data.role.value
        changed.append("role")
    if data.is_active is not None and data.is_active != user.is_active:
        user.is_active = data.is_active
        changed.append("is_active")
    if data.password is not None:
        check_password(data.password, user.email)
        user.password_hash = await hash_password_async(data.password)
        user.password_changed_at = utcnow()
        changed.append("password")
    if not changed:
        return user
    user.updated_at = utcnow()
    await revoke_user_credentials(session, revocations, sessions, user)
    await session.flush()
    await record(
        session,
        tenant_id=principal.tenant_id,
        action="user.updated",
        actor=principal.actor,
        target_type="user",
        target_id=str(user.id),
        details={"changed": changed, "role": user.role, "is_active": user.is_active},
    )
    return user


async def delete_user(
    session: AsyncSession,
    revocations: RevocationStore,
    sessions: SessionStore,
    principal: Principal,
    user_id: uuid.UUID,
) -> None:
    """`DELETE /users/{id}`: never the last owner; an admin never removes an owner."""
    user = await repository.get_user(session, user_id)
    _guard_target(principal, user)
    await ensure_not_last_owner(session, user)
    await revoke_user_credentials(session, revocations, sessions, user)
    await session.delete(user)
    await session.flush()
    await record(
        session,
        tenant_id=principal.tenant_id,
        action="user.deleted",
        actor=principal.actor,
        target_type="user",
        target_id=str(user_id),
    )


async def verify_login(
    session: AsyncSession,
    limiter: AsyncLimiter,
    audit: AuditWriter,
    settings: Settings,
    data: LoginRequest,
) -> tuple[Tenant, User, bool]:
    """Check email + password in a tenant (per-account limit, failures audited as `auth.login`).

    The address is normalised as it was when the user was stored, so any form of it logs in.
    Unknown accounts cost the same as wrong passwords. Returns the tenant, the user and whether
    the password hash was upgraded; the session is left scoped to the tenant."""
    try:
        email = normalize_email(data.email)
    except ValueError:
        email = None  # no such address can exist: the same answer as a wrong password
    account = email or data.email.strip().lower()[:254]
    state = await limiter.hit(
        parse_limit(settings.login_rate_limit), "login-account", data.tenant, account
    )
    if not state.allowed:
        audit.submit(
            tenant_id=None,
            action="auth.login",
            actor=Actor("anonymous", None, account),
            outcome="rate_limited",
            details={"tenant": data.tenant},
        )
        raise RateLimited("Too many login attempts for this account.", headers=state.headers())
    tenant = await tenants.get_by_slug(session, data.tenant)
    user = None
    if tenant is not None and email is not None:
        set_session_tenant(session, tenant.id)
        user = await repository.find_by_email(session, email)
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
        audit.submit(
            tenant_id=tenant.id if tenant else None,
            action="auth.login",
            actor=Actor("user" if user else "anonymous", str(user.id) if user else None, account),
            outcome="failure",
            details={"reason": reason},
        )
        raise Unauthenticated(LOGIN_FAILED, code="invalid_credentials")
    if new_hash:
        user.password_hash = new_hash
    return tenant, user, bool(new_hash)


def access_token_for(
    tokens: LocalTokens,
    settings: Settings,
    tenant: Tenant,
    user: User,
    *,
    ttl: int | None = None,
    extra: dict[str, Any] | None = None,
) -> tuple[str, int, dict[str, Any]]:
    """An access token for a local user (lifetime: `ttl`, else the tenant's)."""
    return tokens.issue(
        user_id=user.id,
        email=user.email,
        tenant_id=tenant.id,
        tenant_slug=tenant.slug,
        role=user.role,
        version=user.token_version,
        ttl=ttl or tenants.access_ttl(settings, tenant),
        extra=extra,
    )


def session_holder_loader(settings: Settings) -> HolderLoader:
    """What the browser-session store asks about a session's user (read fresh when the store
    fills a record)."""

    async def load(
        session: AsyncSession, tenant_id: uuid.UUID, user_id: uuid.UUID
    ) -> SessionHolder | None:
        set_session_tenant(session, tenant_id)
        user = await session.get(User, user_id)
        tenant = await session.get(Tenant, tenant_id)
        if user is None or tenant is None:
            return None
        idle, _absolute = tenants.session_timeouts(settings, tenant)
        return SessionHolder(
            tenant_slug=tenant.slug,
            email=user.email,
            role=user.role,
            version=user.token_version,
            active=user.is_active,
            idle_timeout=idle,
        )

    return load
