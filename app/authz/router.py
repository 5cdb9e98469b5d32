"""Enforcement routes."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from app.auth.deps import CurrentPrincipal, RuntimeDep
from app.authz import service
from app.authz.schemas import CheckRequest, CheckResponse
from app.core.schemas import Slug

router = APIRouter(tags=["enforcement"])


@router.post(
    "/endpoints/{slug}/query",
    responses={403: {"description": "Denied by a policy"}, 429: {"description": "Rate limited"}},
)
async def query_endpoint(
    slug: Slug, request: Request, principal: CurrentPrincipal, runtime: RuntimeDep
) -> Response:
    """Query a protected endpoint: decide, count, forward the body upstream, audit."""
    return await service.query(runtime, request, principal, slug)


@router.post("/authz/check", response_model=CheckResponse)
async def check(
    body: CheckRequest, principal: CurrentPrincipal, runtime: RuntimeDep
) -> CheckResponse:
    """A decision without forwarding or spending quota; admins may ask `as` someone else."""
    return await service.check(runtime, principal, body)
