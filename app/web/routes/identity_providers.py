"""`/identity-providers`: the OpenID providers a tenant's users sign in through (admin+ to
change, viewers may read)."""

from __future__ import annotations

import uuid

from fastapi import APIRouter, Depends, Response, status

from app.browser_sessions import oidc_logout
from app.core.pagination import Page, PageParams, page_params
from app.identity_providers import service
from app.identity_providers.schemas import (
    IdentityProviderCreate,
    IdentityProviderPublic,
    IdentityProviderUpdate,
)
from app.web.deps import AdminPrincipal, RuntimeDep, TenantSession, ViewerPrincipal

router = APIRouter(prefix="/identity-providers", tags=["identity providers"])


@router.get("", response_model=Page[IdentityProviderPublic])
async def list_providers(
    principal: ViewerPrincipal,
    session: TenantSession,
    runtime: RuntimeDep,
    params: PageParams = Depends(page_params),
) -> Page[IdentityProviderPublic]:
    """The tenant's identity providers."""
    rows, cursor = await service.list_providers(session, params)
    rules = runtime.provider_rules
    return Page(
        items=[service.public_view(rules, principal.tenant_slug, r) for r in rows],
        next_cursor=cursor,
    )


@router.post("", status_code=status.HTTP_201_CREATED, response_model=IdentityProviderPublic)
async def create_provider(
    body: IdentityProviderCreate,
    principal: AdminPrincipal,
    session: TenantSession,
    runtime: RuntimeDep,
) -> IdentityProviderPublic:
    """Register a provider; its discovery document is fetched and checked now."""
    row = await service.create_provider(session, runtime.provider_rules, principal, body)
    return service.public_view(runtime.provider_rules, principal.tenant_slug, row)


@router.get("/{provider_id}", response_model=IdentityProviderPublic)
async def get_provider(
    provider_id: uuid.UUID, principal: ViewerPrincipal, session: TenantSession, runtime: RuntimeDep
) -> IdentityProviderPublic:
    """One identity provider."""
    row = await service.get_provider(session, provider_id)
    return service.public_view(runtime.provider_rules, principal.tenant_slug, row)


@router.patch("/{provider_id}", response_model=IdentityProviderPublic)
async def update_provider(
    provider_id: uuid.UUID,
    body: IdentityProviderUpdate,
    principal: AdminPrincipal,
    session: TenantSession,
    runtime: RuntimeDep,
) -> IdentityProviderPublic:
    """Change a provider (a new issuer is discovered and checked again)."""
    row = await service.update_provider(
        session, runtime.provider_rules, principal, provider_id, body
    )
    return service.public_view(runtime.provider_rules, principal.tenant_slug, row)


@router.delete("/{provider_id}", status_code=status.HTTP_204_NO_CONTENT)
async def delete_provider(
    provider_id: uuid.UUID, principal: AdminPrincipal, session: TenantSession, runtime: RuntimeDep
) -> Response:
    """Remove a provider: sign-ins through it stop, and the sessions it vouched for end."""
    await oidc_logout.delete_provider(session, runtime.oidc, principal, provider_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
