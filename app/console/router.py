"""The console's routes and static files, for `app.main` to mount at `/console`."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from app.console.render import PREFIX, STATIC_DIR
from app.console.routes import account, admin, audit, endpoints, identity_providers

ROUTERS = (
    account.router,
    endpoints.router,
    admin.router,
    identity_providers.router,
    audit.router,
)


def install_console(app: FastAPI) -> None:
    """Serve the console at `/console` (pages) and `/console/static` (its own CSS and JS)."""
    app.mount(f"{PREFIX}/static", StaticFiles(directory=STATIC_DIR), name="console-static")
    for router in ROUTERS:
        app.include_router(router)
    # A browser refused mid-way through an identity provider's sign-in lands here (see
    # `app.web.routes.oidc`): the sign-in page, which names the refusal.
    app.state.sign_in_page = f"{PREFIX}/sign-in"
