"""The internal (east-west) ASGI application (`app.internal:app`).

It serves `POST /internal/v1/sessions/exchange` to service principals on its own port
(`INTERNAL_HOST`:`INTERNAL_PORT`) and is never mounted on the public app, so the exchange cannot
be reached through the public listener whatever a proxy in front of it forwards. Same error
shape and request-id middleware as the public app; `/health` and `/ready` for mesh probes.
"""

from __future__ import annotations

from fastapi import FastAPI

from app import models as _models  # noqa: F401  (every table registered before any query)
from app.core.config import Settings, get_settings
from app.core.errors import install_error_handlers
from app.core.logging import configure_logging
from app.core.middleware import RequestContextMiddleware
from app.lifespan import runtime_lifespan
from app.web.routes.health import router as health_router
from app.web.routes.sessions import internal_router
from app.web.state import Runtime


def create_internal_app(
    settings: Settings | None = None, runtime: Runtime | None = None
) -> FastAPI:
    """Build the internal app; it builds its own runtime in its lifespan unless one is given
    (`warden serve` runs both apps in one process on one shared runtime)."""
    settings = settings or get_settings()
    configure_logging(settings.log_level)
    app = FastAPI(
        title="Warden internal",
        version="0.1.0",
        description="East-west only: session exchange for service principals.",
        lifespan=runtime_lifespan(settings, runtime),
        # Nothing here is for browsers or the public: no interactive docs on this listener.
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    install_error_handlers(app)
    app.include_router(health_router)
    app.include_router(internal_router)
    app.add_middleware(
        RequestContextMiddleware,
        trust_forwarded_for=settings.trust_forwarded_for,
        hsts=settings.hsts,
    )
    return app


app = create_internal_app()
