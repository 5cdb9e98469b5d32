"""`/users`: user management (admin+)."""

from __future__ import annotations

import uuid

from fastapi import APIRouter, Depends, Response, status

from app.core.pagination import Page, PageParams, page_params
from app.users import service
from app.users.schemas import UserCreate, UserPublic, UserUpdate
from app.web.deps import AdminPrincipal, RuntimeDep, TenantSession

router = APIRouter(prefix="/users", tags=["users"])


@router.get("", response_model=Page[UserPublic])
async def list_users(
    principal: AdminPrincipal, session: TenantSession, params: PageParams = Depends(page_params)
) -> Page[UserPublic]:
    """The tenant's users, oldest first."""
    rows, cursor = await service.list_users(session, params)
    return Page(items=[UserPublic.model_validate(r) for r in rows], next_cursor=cursor)


@router.post("", status_code=status.HTTP_201_CREATED, response_model=UserPublic)
async def create_user(
    body: UserCreate, principal: AdminPrincipal, session: TenantSession
) -> UserPublic:
    """Add a user (only owners may add owners)."""
    return UserPublic.model_validate(await service.create_user(session, principal, body))


@router.get("/{user_id}", response_model=UserPublic)
async def get_user(
    user_id: uuid.UUID, principal: AdminPrincipal, session: TenantSession
) -> UserPublic:
    """One user of the tenant."""
    return UserPublic.model_validate(await service.get_user(session, user_id))


@router.patch("/{user_id}", response_model=UserPublic)
async def update_user(
    user_id: uuid.UUID,
    body: UserUpdate,
    principal: AdminPrincipal,
    session: TenantSession,
    runtime: RuntimeDep,
) -> UserPublic:
    """Change role, activation or password; the user's tokens are revoked."""
    user = await service.update_user(
        session, runtime.revocations, runtime.browser_store, principal, user_id, body
    )
    return UserPublic.model_validate(user)


@router.delete("/{user_id}", status_code=status.HTTP_204_NO_CONTENT)
async def delete_user(
    user_id: uuid.UUID, principal: AdminPrincipal, session: TenantSession, runtime: RuntimeDep
) -> Response:
    """Remove a user (never the last owner)."""
    await service.delete_user(
        session, runtime.revocations, runtime.browser_store, principal, user_id
    )
    return Response(status_code=status.HTTP_204_NO_CONTENT)
