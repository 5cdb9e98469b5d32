"""`/endpoints`: endpoints, their policies and their upstream credential."""

from __future__ import annotations

import uuid

from fastapi import APIRouter, Depends, Response, status

from app.core.pagination import Page, PageParams, page_params
from app.core.schemas import Slug
from app.endpoints import service
from app.endpoints.schemas import CredentialInfo, EndpointCreate, EndpointPublic, EndpointUpdate
from app.policies import service as policies
from app.policies.schemas import PolicyCreate, PolicyPublic, PolicyUpdate
from app.upstream_secrets import service as secrets
from app.upstream_secrets.service import CredentialPut
from app.web.deps import AdminPrincipal, RuntimeDep, TenantSession, ViewerPrincipal

router = APIRouter(prefix="/endpoints", tags=["endpoints"])


async def _public(session: TenantSession, endpoint: object) -> EndpointPublic:
    view = EndpointPublic.model_validate(endpoint)
    credential = await secrets.find_credential(session, view.id)
    if credential is not None:
        view.credential = CredentialInfo.model_validate(credential)
    return view


@router.get("", response_model=Page[EndpointPublic])
async def list_endpoints(
    principal: ViewerPrincipal, session: TenantSession, params: PageParams = Depends(page_params)
) -> Page[EndpointPublic]:
    """The tenant's endpoints (viewers may read)."""
    rows, cursor = await service.list_endpoints(session, params)
    return Page(items=[EndpointPublic.model_validate(r) for r in rows], next_cursor=cursor)


@router.post("", status_code=status.HTTP_201_CREATED, response_model=EndpointPublic)
async def create_endpoint(
    body: EndpointCreate, principal: AdminPrincipal, session: TenantSession, runtime: RuntimeDep
) -> EndpointPublic:
    """Protect a new endpoint."""
    return await _public(
        session,
        await service.create_endpoint(
            session, runtime.bus, runtime.settings.upstream_allowed_hosts, principal, body
        ),
    )


@router.get("/{slug}", response_model=EndpointPublic)
async def get_endpoint(
    slug: Slug, principal: ViewerPrincipal, session: TenantSession
) -> EndpointPublic:
    """One endpoint, with its credential's header, fingerprint and last 4 characters."""
    return await _public(session, await service.get_by_slug(session, slug))


@router.patch("/{slug}", response_model=EndpointPublic)
async def update_endpoint(
    slug: Slug,
    body: EndpointUpdate,
    principal: AdminPrincipal,
    session: TenantSession,
    runtime: RuntimeDep,
) -> EndpointPublic:
    """Change an endpoint; takes effect in every process at once."""
    endpoint = await service.update_endpoint(
        session, runtime.bus, runtime.settings.upstream_allowed_hosts, principal, slug, body
    )
    return await _public(session, endpoint)


@router.delete("/{slug}", status_code=status.HTTP_204_NO_CONTENT)
async def delete_endpoint(
    slug: Slug, principal: AdminPrincipal, session: TenantSession, runtime: RuntimeDep
) -> Response:
    """Remove an endpoint with its policies and credential."""
    await service.delete_endpoint(session, runtime.bus, principal, slug)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get("/{slug}/policies", response_model=Page[PolicyPublic])
async def list_policies(
    slug: Slug,
    principal: ViewerPrincipal,
    session: TenantSession,
    params: PageParams = Depends(page_params),
) -> Page[PolicyPublic]:
    """An endpoint's policies."""
    rows, cursor = await policies.list_policies(session, slug, params)
    return Page(items=[PolicyPublic.model_validate(r) for r in rows], next_cursor=cursor)


@router.post("/{slug}/policies", status_code=status.HTTP_201_CREATED, response_model=PolicyPublic)
async def create_policy(
    slug: Slug,
    body: PolicyCreate,
    principal: AdminPrincipal,
    session: TenantSession,
    runtime: RuntimeDep,
) -> PolicyPublic:
    """Attach a policy (configuration validated per type)."""
    policy = await policies.create_policy(session, runtime.bus, principal, slug, body)
    return PolicyPublic.model_validate(policy)


@router.get("/{slug}/policies/{policy_id}", response_model=PolicyPublic)
async def get_policy(
    slug: Slug, policy_id: uuid.UUID, principal: ViewerPrincipal, session: TenantSession
) -> PolicyPublic:
    """One policy."""
    return PolicyPublic.model_validate(await policies.get_policy(session, slug, policy_id))


@router.patch("/{slug}/policies/{policy_id}", response_model=PolicyPublic)
async def update_policy(
    slug: Slug,
    policy_id: uuid.UUID,
    body: PolicyUpdate,
    principal: AdminPrincipal,
    session: TenantSession,
    runtime: RuntimeDep,
) -> PolicyPublic:
    """Change a policy's configuration, priority or enabled flag."""
    policy = await policies.update_policy(session, runtime.bus, principal, slug, policy_id, body)
    return PolicyPublic.model_validate(policy)


@router.delete("/{slug}/policies/{policy_id}", status_code=status.HTTP_204_NO_CONTENT)
async def delete_policy(
    slug: Slug,
    policy_id: uuid.UUID,
    principal: AdminPrincipal,
    session: TenantSession,
    runtime: RuntimeDep,
) -> Response:
    """Remove a policy."""
    await policies.delete_policy(session, runtime.bus, principal, slug, policy_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.put("/{slug}/credential", response_model=CredentialInfo)
async def put_credential(
    slug: Slug,
    body: CredentialPut,
    principal: AdminPrincipal,
    session: TenantSession,
    runtime: RuntimeDep,
) -> CredentialInfo:
    """Set the upstream credential (write-only: the value is never shown again)."""
    row = await secrets.put_credential(
        session, runtime.bus, runtime.master_keys, principal, slug, body
    )
    return CredentialInfo.model_validate(row)


@router.delete("/{slug}/credential", status_code=status.HTTP_204_NO_CONTENT)
async def delete_credential(
    slug: Slug, principal: AdminPrincipal, session: TenantSession, runtime: RuntimeDep
) -> Response:
    """Remove the upstream credential."""
    await secrets.delete_credential(session, runtime.bus, principal, slug)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
