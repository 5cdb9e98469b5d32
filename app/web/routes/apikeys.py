"""`/api-keys` (admin+)."""

from __future__ import annotations

import uuid

from fastapi import APIRouter, Depends, Response, status

from app.apikeys import service
from app.apikeys.schemas import ApiKeyCreate, ApiKeyCreated, ApiKeyPublic
from app.core.pagination import Page, PageParams, page_params
from app.web.deps import AdminPrincipal, RuntimeDep, TenantSession

router = APIRouter(prefix="/api-keys", tags=["api keys"])


@router.get("", response_model=Page[ApiKeyPublic])
async def list_keys(
    principal: AdminPrincipal, session: TenantSession, params: PageParams = Depends(page_params)
) -> Page[ApiKeyPublic]:
    """The tenant's API keys (metadata only)."""
    rows, cursor = await service.list_keys(session, params)
    return Page(items=[ApiKeyPublic.model_validate(r) for r in rows], next_cursor=cursor)


@router.post("", status_code=status.HTTP_201_CREATED, response_model=ApiKeyCreated)
async def create_key(
    body: ApiKeyCreate, principal: AdminPrincipal, session: TenantSession
) -> ApiKeyCreated:
    """Create a key; `key` is shown in this response only."""
    row, key = await service.create_key(session, principal, body)
    return ApiKeyCreated(**ApiKeyPublic.model_validate(row).model_dump(), key=key)


@router.delete("/{key_id}", status_code=status.HTTP_204_NO_CONTENT)
async def revoke_key(
    key_id: uuid.UUID, principal: AdminPrincipal, session: TenantSession, runtime: RuntimeDep
) -> Response:
    """Revoke a key; refused by every process from now on."""
    await service.revoke_key(session, runtime.bus, principal, key_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
