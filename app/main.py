"""The public ASGI application (`app.main:app`)."""

from __future__ import annotations

from pathlib import Path

import fastapi_offline
from fastapi import FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles
from starlette.middleware import Middleware
from starlette.types import ASGIApp, Receive, Scope, Send

from app import models as _models  # noqa: F401  (every table registered before any query)
from app.console.router import install_console
from app.core.config import Settings, get_settings
from app.core.errors import install_error_handlers
from app.core.logging import configure_logging
from app.core.middleware import RequestContextMiddleware
from app.core.ratelimit import GlobalRateLimitMiddleware
from app.lifespan import runtime_lifespan
from app.web.hotpath import DecisionRoutes, HotPath
from app.web.routes.apikeys import router as apikeys_router
from app.web.routes.audit import router as audit_router
from app.web.routes.auth import router as auth_router
from app.web.routes.auth import well_known
from app.web.routes.authz import router as authz_router
from app.web.routes.endpoints import router as endpoints_router
from app.web.routes.health import router as health_router
from app.web.routes.identity_providers import router as identity_providers_router
from app.web.routes.issuers import router as issuers_router
from app.web.routes.oidc import router as oidc_router
from app.web.routes.privacy import router as privacy_router
from app.web.routes.sessions import router as sessions_router
from app.web.routes.tenants import router as tenant_router
from app.web.routes.users import router as users_router
from app.web.state import Runtime

API_PREFIX = "/api/v1"
# Swagger UI and ReDoc from the installed fastapi-offline package: the docs work offline.
DOCS_ASSETS = Path(fastapi_offline.__file__).parent / "static"
DOCS_STATIC = "/docs-static"


# Routes match in order: the enforcement hot path first. Each router is included straight into
# the app (one level of nesting): every nested router level costs a match pass per request.
API_ROUTERS = (
    authz_router,
    auth_router,
    tenant_router,
    users_router,
    endpoints_router,
    apikeys_router,
    issuers_router,
    identity_providers_router,
    audit_router,
    privacy_router,
    oidc_router,
    sessions_router,
)


class WardenAPI(FastAPI):
    """FastAPI with the enforcement hot path (`app.web.hotpath`) in front of its stack."""

    hot_path: HotPath | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        route = self.hot_path.route(scope) if self.hot_path is not None else None
        if route is None or self.hot_path is None:
            await super().__call__(scope, receive, send)
            return
        if self.root_path:
            scope["root_path"] = self.root_path
        scope["app"] = self
        scope["path_params"] = {"route": route}
        await self.hot_path.app(scope, receive, send)


def edge_middleware(settings: Settings) -> list[Middleware]:
    """The pure ASGI layers every route runs behind, outermost first: request id and security
    headers, CORS, the global per-IP limit."""
    layers = [
        Middleware(
            RequestContextMiddleware,
            trust_forwarded_for=settings.trust_forwarded_for,
            hsts=settings.hsts,
        )
    ]
    if settings.cors_origins:
        layers.append(
            Middleware(
                CORSMiddleware,
                allow_origins=settings.cors_origins,
                allow_credentials=True,
                allow_methods=["GET", "POST", "PUT", "PATCH", "DELETE"],
                allow_headers=[
                    "Authorization",
                    "Content-Type",
                    "X-CSRF-Token",
                    "X-API-Key",
                    "X-Request-ID",
                    "X-Tenant",
                ],
            )
        )
    layers.append(Middleware(GlobalRateLimitMiddleware, limit=settings.global_rate_limit))
    return layers


def wrap(endpoint: ASGIApp, layers: list[Middleware]) -> ASGIApp:
    """`endpoint` behind `layers` (outermost first)."""
    for layer in reversed(layers):
        endpoint = layer.cls(endpoint, *layer.args, **layer.kwargs)
    return endpoint


def install_offline_docs(app: FastAPI) -> None:
    """`/docs` (Swagger UI) and `/redoc` served with assets from this machine, never a CDN."""
    app.mount(DOCS_STATIC, StaticFiles(directory=DOCS_ASSETS), name="docs-static")

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return get_swagger_ui_html(
            openapi_url=f"{root}{app.openapi_url}",
            title=f"{app.title} - Swagger UI",
            swagger_js_url=f"{root}{DOCS_STATIC}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{DOCS_STATIC}/swagger-ui.css",
            swagger_favicon_url=f"{root}{DOCS_STATIC}/favicon.png",
        )

    @app.get("/redoc", include_in_schema=False)
    async def redoc(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return get_redoc_html(
            openapi_url=f"{root}{app.openapi_url}",
            title=f"{app.title} - ReDoc",
            redoc_js_url=f"{root}{DOCS_STATIC}/redoc.standalone.js",
            redoc_favicon_url=f"{root}{DOCS_STATIC}/favicon.png",
            with_google_fonts=False,
        )


def create_app(settings: Settings | None = None, runtime: Runtime | None = None) -> FastAPI:
    """Build the public app; the runtime (database, keys, Redis) is made in the lifespan, unless
    one is given (`warden serve` shares one with the internal app and owns its lifecycle)."""
    settings = settings or get_settings()
    configure_logging(settings.log_level)
    app = WardenAPI(
        title="Warden",
        version="0.1.0",
        description=(
            "Multi-tenant access control: authenticate, decide, rate-limit, forward, audit. "
            'Errors are `{"error": {"code", "message", "request_id"}}`.'
        ),
        lifespan=runtime_lifespan(settings, runtime),
        docs_url=None,
        redoc_url=None,
    )
    install_error_handlers(app)
    install_offline_docs(app)
    app.include_router(health_router)
    app.include_router(well_known)
    for router in API_ROUTERS:
        app.include_router(router, prefix=API_PREFIX)
    install_console(app)
    edge = edge_middleware(settings)
    for layer in reversed(edge):  # added last runs outermost: edge[0] sees requests first
        app.add_middleware(layer.cls, *layer.args, **layer.kwargs)
    app.hot_path = HotPath(wrap(DecisionRoutes(), edge), prefix=API_PREFIX)
    return app


app = create_app()
