"""Enforcement routes."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request, Response

from app.authz import gateway, istio, service
from app.authz.schemas import CheckRequest, CheckResponse
from app.core.schemas import Slug
from app.web.deps import CurrentPrincipal, RuntimeDep, TenantSession, ViewerPrincipal

router = APIRouter(tags=["enforcement"])
DNS_LABEL = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$"
DnsLabel = Annotated[str | None, Query(pattern=DNS_LABEL, max_length=63)]
# nginx subrequests keep the client's method and Envoy's check request always does.
FORWARD_METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]


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


@router.get(
    "/authz/forward",
    status_code=200,
    response_class=Response,
    responses={
        200: {"description": "Allowed (or exempt): identity headers set, empty body"},
        401: {"description": "No valid credential, or `aud` lacks the host (empty body)"},
        403: {"description": "Denied: other tenant, scope, policy (empty body)"},
        404: {"description": "No endpoint binds this host and path (empty body)"},
        429: {"description": "Rate limited: `Retry-After`, `X-RateLimit-*` (empty body)"},
    },
)
@router.api_route(
    "/authz/forward",
    methods=[m for m in FORWARD_METHODS if m != "GET"],
    include_in_schema=False,
)
async def forward_auth(request: Request, runtime: RuntimeDep) -> Response:
    """The auth service of nginx `auth_request`, Traefik `forwardAuth` and Envoy `ext_authz`
    (whose check path is `/authz/forward/<original path>`); see docs/gateways.md."""
    return await gateway.forward_auth(runtime, request)


@router.api_route("/authz/forward/{path:path}", methods=FORWARD_METHODS, include_in_schema=False)
async def forward_auth_suffixed(path: str, request: Request, runtime: RuntimeDep) -> Response:
    """`/authz/forward` for Envoy, which appends the original path to the check request's."""
    return await gateway.forward_auth(runtime, request, suffix=path)


@router.get(
    "/endpoints/{slug}/istio",
    response_class=Response,
    responses={200: {"content": {"text/yaml": {}}, "description": "Two YAML documents"}},
)
async def istio_config(
    slug: Slug,
    principal: ViewerPrincipal,
    session: TenantSession,
    runtime: RuntimeDep,
    namespace: DnsLabel = None,
    app: DnsLabel = None,
) -> Response:
    """Istio `RequestAuthentication` + `AuthorizationPolicy` enforcing the endpoint's issuers,
    audience, binding and exempt paths (viewers may read)."""
    body = await istio.render_istio(session, runtime.settings, slug, namespace, app)
    return Response(body, media_type="text/yaml; charset=utf-8")
