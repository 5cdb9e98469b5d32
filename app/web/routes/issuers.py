"""`/issuers`: the external IdPs whose tokens a tenant accepts (admin+)."""

from __future__ import annotations

import uuid

from fastapi import APIRouter, Depends, Response, status

from app.core.pagination import Page, PageParams, page_params
from app.issuers import service
from app.issuers.schemas import IssuerCreate, IssuerPublic
from app.web.deps import AdminPrincipal, RuntimeDep, TenantSession

router = APIRouter(prefix="/issuers", tags=["trusted issuers"])


@router.get("", response_model=Page[IssuerPublic])
async def list_issuers(
    principal: AdminPrincipal, session: TenantSession, params: PageParams = Depends(page_params)
) -> Page[IssuerPublic]:
    """The tenant's trusted issuers."""
    rows, cursor = await service.list_issuers(session, params)
    return Page(items=[service.public_view(r) for r in rows], next_cursor=cursor)


@router.post("", status_code=status.HTTP_201_CREATED, response_model=IssuerPublic)
async def create_issuer(
    body: IssuerCreate, principal: AdminPrincipal, session: TenantSession, runtime: RuntimeDep
) -> IssuerPublic:
    """Trust an issuer's tokens (exactly one of `jwks_uri`, `jwks`, `public_keys_pem`)."""
    return service.public_view(
        await service.create_issuer(session, runtime.bus, runtime.issuer_rules, principal, body)
    )


@router.get("/{issuer_id}", response_model=IssuerPublic)
async def get_issuer(
    issuer_id: uuid.UUID, principal: AdminPrincipal, session: TenantSession
) -> IssuerPublic:
    """One trusted issuer."""
    return service.public_view(await service.get_issuer(session, issuer_id))


@router.delete("/{issuer_id}", status_code=status.HTTP_204_NO_CONTENT)
async def delete_issuer(
    issuer_id: uuid.UUID, principal: AdminPrincipal, session: TenantSession, runtime: RuntimeDep
) -> Response:
    """Stop trusting an issuer; its tokens are refused everywhere from now on."""
    await service.delete_issuer(session, runtime.bus, principal, issuer_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
