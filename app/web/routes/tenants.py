"""`/tenant`: the caller's own tenant."""

from __future__ import annotations

from fastapi import APIRouter, Response, status

from app.tenants import service
from app.tenants.schemas import TenantPublic, TenantUpdate
from app.web.deps import AdminPrincipal, OwnerPrincipal, RuntimeDep, TenantSession, ViewerPrincipal

router = APIRouter(prefix="/tenant", tags=["tenant"])


@router.get("", response_model=TenantPublic)
async def get_tenant(principal: ViewerPrincipal, session: TenantSession) -> TenantPublic:
    """The caller's tenant."""
    return TenantPublic.model_validate(await service.get_tenant(session, principal.tenant_id))


@router.patch("", response_model=TenantPublic)
async def update_tenant(
    body: TenantUpdate, principal: AdminPrincipal, session: TenantSession
) -> TenantPublic:
    """Rename the tenant or change its settings (admin+)."""
    return TenantPublic.model_validate(await service.update_tenant(session, principal, body))


@router.delete("", status_code=status.HTTP_204_NO_CONTENT)
async def delete_tenant(
    principal: OwnerPrincipal, session: TenantSession, runtime: RuntimeDep
) -> Response:
    """Delete the tenant and everything it owns (owner only)."""
    await service.delete_tenant(session, runtime.revocations, principal)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
