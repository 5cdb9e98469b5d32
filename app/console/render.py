"""Rendering console pages: the Jinja2 environment, the page context, the security headers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import Request
from fastapi.responses import HTMLResponse, RedirectResponse
from jinja2 import Environment, FileSystemLoader, select_autoescape

from app.browser_sessions.service import CSRF_COOKIE
from app.core.identity import Principal, Role

PACKAGE = Path(__file__).parent
STATIC_DIR = PACKAGE / "static"
PREFIX = "/console"

# Every page: nothing but Warden's own files, no inline script or style, never framed.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'; "
    "object-src 'none'"
)
PAGE_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    # Chromium sends `Origin: null` on form posts under `no-referrer`; the CSRF check needs the
    # real origin, and same-origin keeps every URL from leaving Warden.
    "Referrer-Policy": "same-origin",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
}

templates = Environment(
    loader=FileSystemLoader(PACKAGE / "templates"),
    autoescape=select_autoescape(default=True, default_for_string=True),
    trim_blocks=True,
    lstrip_blocks=True,
)

# Navigation: (label, path, the roles that see it).
ADMINS = frozenset({Role.ADMIN, Role.OWNER})
READERS = frozenset({Role.VIEWER, Role.ADMIN, Role.OWNER})
EVERYONE = frozenset(Role)
NAVIGATION = (
    ("Overview", "/overview", ADMINS),
    ("Endpoints", "/endpoints", READERS),
    ("Why?", "/why", ADMINS),
    ("Users", "/users", ADMINS),
    ("Issuers", "/issuers", ADMINS),
    ("Identity providers", "/identity-providers", READERS),
    ("API keys", "/api-keys", ADMINS),
    ("Audit", "/audit", ADMINS),
    ("Tenant", "/tenant", READERS),
    ("My account", "/me", EVERYONE),
)

# Notices a redirect may name (`?notice=`): fixed texts, never reflected input.
NOTICES = {
    "endpoint-created": "Endpoint created.",
    "endpoint-saved": "Endpoint saved.",
    "endpoint-deleted": "Endpoint deleted.",
    "credential-saved": "Upstream credential saved.",
    "credential-removed": "Upstream credential removed.",
    "policy-created": "Policy added.",
    "policy-saved": "Policy saved.",
    "policy-deleted": "Policy deleted.",
    "user-created": "User created.",
    "user-saved": "User saved.",
    "user-deleted": "User deleted.",
    "issuer-created": "Issuer trusted.",
    "issuer-deleted": "Issuer removed.",
    "key-revoked": "API key revoked.",
    "provider-created": "Identity provider added.",
    "provider-saved": "Identity provider saved.",
    "provider-enabled": "Identity provider enabled: it is offered on the sign-in page.",
    "provider-disabled": "Identity provider disabled: sign-ins through it stop.",
    "provider-deleted": "Identity provider removed.",
    "session-revoked": "Session signed out.",
    "others-revoked": "Every other session signed out.",
    "tenant-saved": "Tenant saved.",
    "signed-out": "You are signed out.",
    "account-deleted": "Your account is deleted.",
    "tenant-deleted": "The tenant is deleted.",
}


def home_for(principal: Principal) -> str:
    """The first page a user lands on: admins the overview, others the endpoints or their
    own account."""
    if principal.role.at_least(Role.ADMIN):
        return f"{PREFIX}/overview"
    if principal.role is Role.VIEWER:
        return f"{PREFIX}/endpoints"
    return f"{PREFIX}/me"


def page(
    request: Request,
    template: str,
    context: dict[str, Any] | None = None,
    *,
    status_code: int = 200,
    principal: Principal | None = None,
) -> HTMLResponse:
    """A page rendered with the shared context (caller, navigation, CSRF token, notice)."""
    who: Principal | None = principal or getattr(request.state, "principal", None)
    role = who.role if who is not None and who.kind == "user" else None
    navigation = [
        (label, f"{PREFIX}{path}")
        for label, path, roles in NAVIGATION
        if role is not None and role in roles
    ]
    notice = NOTICES.get(request.query_params.get("notice", ""))
    body = templates.get_template(template).render(
        {
            "principal": who if role is not None else None,
            "navigation": navigation,
            "current_path": request.url.path,
            "csrf_token": request.cookies.get(CSRF_COOKIE, ""),
            "notice": notice,
            "prefix": PREFIX,
            "is_admin": role is not None and role.at_least(Role.ADMIN),
            "is_owner": role is Role.OWNER,
            **(context or {}),
        }
    )
    return HTMLResponse(body, status_code=status_code, headers=PAGE_HEADERS)


def redirect(path: str, notice: str | None = None) -> RedirectResponse:
    """303 to a console page after a form post (post/redirect/get)."""
    target = f"{PREFIX}{path}"
    if notice is not None:
        target += ("&" if "?" in target else "?") + f"notice={notice}"
    return RedirectResponse(target, status_code=303, headers={"Referrer-Policy": "same-origin"})
