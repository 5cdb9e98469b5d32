"""User management with the role rules of PRODUCT.md."""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta
from typing import TYPE_CHECKING

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from app.audit.service import record
from app.core.emails import normalize_email
from app.core.errors import Conflict, Forbidden, Unprocessable
from app.core.identity import Actor, Principal, Role
from app.core.pagination import PageParams, paginate
from app.core.passwords import hash_password, password_problem
from app.core.types import utcnow
from app.credentials.models import RefreshToken
from app.users import repository
from app.users.models import User
from app.users.schemas import UserCreate, UserUpdate

if TYPE_CHECKING:
    from app.web.state import Runtime


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
    session.add(user)
    try:
        await session.flush()
    except IntegrityError as exc:
        raise Conflict("A user with this email already exists.", code="email_taken") from exc
    await record(
        session,
        tenant_id=tenant_id,
        action="user.created",
        actor=actor,
        target_type="user",
        target_id=str(user.id),
        details={"role": role.value},
    )
    return user


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


async def _ensure_other_owner(session: AsyncSession, target: User) -> None:
    if target.role == Role.OWNER and target.is_active:
        if await repository.count_active_owners(session) <= 1:
            raise Conflict("The tenant must keep at least one owner.", code="last_owner")


async def revoke_user_credentials(session: AsyncSession, runtime: Runtime, user: User) -> None:
    """Kill the user's refresh tokens, browser sessions and every access token of an older
    version."""
    user.token_version += 1
    await session.execute(
        update(RefreshToken)
        .where(RefreshToken.user_id == user.id, RefreshToken.revoked_at.is_(None))  # type: ignore[arg-type, union-attr]
        .values(revoked_at=utcnow())
    )
    ttl = timedelta(
        seconds=runtime.settings.access_token_ttl_seconds + runtime.settings.jwt_leeway_seconds
    )
    await runtime.revocations.revoke(
        session, f"user:{user.id}", ttl=ttl, min_version=user.token_version
    )
    await runtime.sessions.revoke_user(session, user.id)


async def update_user(
    session: AsyncSession,
    runtime: Runtime,
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
        await _ensure_other_owner(session, user)
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
    await revoke_user_credentials(session, runtime, user)
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
    session: AsyncSession, runtime: Runtime, principal: Principal, user_id: uuid.UUID
) -> None:
    """`DELETE /users/{id}`: never the last owner; an admin never removes an owner."""
    user = await repository.get_user(session, user_id)
    _guard_target(principal, user)
    await _ensure_other_owner(session, user)
    await revoke_user_credentials(session, runtime, user)
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
