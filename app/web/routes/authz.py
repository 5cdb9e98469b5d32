"""Enforcement routes. The decision routes are declared from the hot path's one table
(`app.web.hotpath.HOT_ROUTES`) with the same `serve_*` functions behind them, so what OpenAPI
documents is what the hot path serves."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response

from app.authz import istio
from app.authz.schemas import CheckRequest, CheckResponse
from app.core.schemas import Slug
from app.web.deps import CurrentPrincipal, RuntimeDep, TenantSession, ViewerPrincipal
from app.web.hotpath import HOT_ROUTES, serve_check, serve_forward, serve_query

router = APIRouter(tags=["enforcement"])
DNS_LABEL = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$"
DnsLabel = Annotated[str | None, Query(pattern=DNS_LABEL, max_length=63)]


async def query_endpoint(
    slug: Slug, request: Request, principal: CurrentPrincipal, runtime: RuntimeDep
) -> Response:
    """Query a protected endpoint: decide, count, forward the body upstream, audit."""
    return await serve_query(runtime, request, principal, slug)


async def check(
    body: CheckRequest, principal: CurrentPrincipal, runtime: RuntimeDep
) -> CheckResponse:
    """A decision without forwarding or spending quota; admins may ask `as` someone else."""
    return await serve_check(runtime, principal, body)


async def forward_auth(request: Request, runtime: RuntimeDep) -> Response:
    """The auth service of nginx `auth_request`, Traefik `forwardAuth` and Envoy `ext_authz`
    (whose check path is `/authz/forward/<original path>`); see docs/gateways.md."""
    return await serve_forward(runtime, request, None)


async def forward_auth_suffixed(path: str, request: Request, runtime: RuntimeDep) -> Response:
    """`/authz/forward` for Envoy, which appends the original path to the check request's."""
    return await serve_forward(runtime, request, path)


_FORWARD_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"description": "Allowed (or exempt): identity headers set, empty body"},
    401: {"description": "No valid credential, or `aud` lacks the host (empty body)"},
    403: {"description": "Denied: other tenant, scope, policy (empty body)"},
    404: {"description": "No endpoint binds this host and path (empty body)"},
    429: {"description": "Rate limited: `Retry-After`, `X-RateLimit-*` (empty body)"},
}
# How each kind of decision route is declared: its FastAPI handler and OpenAPI details.
_DECLARATIONS: dict[tuple[str, bool], tuple[Callable[..., Any], dict[str, Any]]] = {
    ("query", False): (
        query_endpoint,
        {
            "responses": {
                403: {"description": "Denied by a policy"},
                429: {"description": "Rate limited"},
            }
        },
    ),
    ("check", False): (check, {"response_model": CheckResponse}),
    ("forward", False): (
        forward_auth,
        {"status_code": 200, "response_class": Response, "responses": _FORWARD_RESPONSES},
    ),
    ("forward", True): (forward_auth_suffixed, {}),
}

for _route in HOT_ROUTES:
    _handler, _details = _DECLARATIONS[(_route.kind, "{path:path}" in _route.path)]
    router.add_api_route(
        _route.path,
        _handler,
        methods=list(_route.methods),
        include_in_schema=_route.documented,
        **_details,
    )


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
