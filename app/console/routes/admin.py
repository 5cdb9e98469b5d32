"""Users, trusted issuers, API keys and the tenant."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from fastapi import APIRouter, Request, Response

from app.apikeys import service as apikeys
from app.apikeys.schemas import SCOPES, ApiKeyCreate
from app.console.deps import (
    Admin,
    ConsoleRoute,
    ConsoleSession,
    FormDep,
    Owner,
    Reader,
)
from app.console.problems import GENERAL, from_app_error, parse
from app.console.render import PREFIX, page, redirect
from app.core.errors import AppError, Forbidden
from app.core.identity import Role
from app.core.pagination import PageParams
from app.issuers import service as issuers
from app.issuers.schemas import IssuerCreate
from app.tenants import service as tenants
from app.tenants.schemas import TenantUpdate
from app.users import service as users
from app.users.schemas import UserCreate, UserUpdate
from app.web.deps import RuntimeDep, end_refused
from app.web.routes.sessions import clear_session_cookies

router = APIRouter(prefix=PREFIX, route_class=ConsoleRoute, include_in_schema=False)
PAGE_SIZE = 50
ROLES = tuple(role.value for role in Role)
ALGORITHMS = ("RS256", "RS384", "RS512", "ES256", "ES384", "ES512")


def _cursor(request: Request) -> PageParams:
    return PageParams(limit=PAGE_SIZE, cursor=request.query_params.get("cursor") or None)


# --- users ----------------------------------------------------------------------------------


async def _users_page(
    request: Request,
    principal: Any,
    session: ConsoleSession,
    *,
    values: dict[str, Any] | None = None,
    problems: dict[str, str] | None = None,
    error: str | None = None,
    status_code: int = 200,
) -> Response:
    rows, next_cursor = await users.list_users(session, _cursor(request))
    return page(
        request,
        "users.html",
        {
            "users": rows,
            "next_cursor": next_cursor,
            "roles": ROLES,
            "values": values or {"role": "member"},
            "problems": problems or {},
            "error": error,
        },
        status_code=status_code,
    )


@router.get("/users")
async def users_page(request: Request, principal: Admin, session: ConsoleSession) -> Response:
    """The tenant's users: invite by creating with a role, change role, deactivate."""
    return await _users_page(request, principal, session)


@router.post("/users")
async def create_user(
    request: Request, form: FormDep, principal: Admin, session: ConsoleSession
) -> Response:
    """Add a user (`POST /users`; only owners may add owners)."""
    values = {"email": form.get("email"), "role": form.get("role", "member")}
    try:
        data = parse(UserCreate, {**values, "password": form.get("password")})
        await users.create_user(session, principal, data)
    except AppError as exc:
        await end_refused(session, exc)
        return await _users_page(
            request,
            principal,
            session,
            values=values,
            problems=from_app_error(exc),
            status_code=exc.status_code,
        )
    return redirect("/users", "user-created")


@router.post("/users/{user_id}")
async def update_user(
    request: Request,
    user_id: uuid.UUID,
    form: FormDep,
    principal: Admin,
    session: ConsoleSession,
    runtime: RuntimeDep,
) -> Response:
    """Change a user's role or activation (`PATCH /users/{id}`): the last-owner rule and the
    role ladder are the API's, and their refusal is shown on the page."""
    changes: dict[str, Any] = {}
    if form.optional("role"):
        changes["role"] = form.get("role")
    if form.optional("active"):
        changes["is_active"] = form.get("active") == "true"
    try:
        data = parse(UserUpdate, changes)
        await users.update_user(
            session, runtime.revocations, runtime.browser_store, principal, user_id, data
        )
    except AppError as exc:
        if exc.status_code == 404:
            raise
        await end_refused(session, exc)
        return await _users_page(
            request, principal, session, error=exc.message, status_code=exc.status_code
        )
    return redirect("/users", "user-saved")


@router.post("/users/{user_id}/delete")
async def delete_user(
    request: Request,
    user_id: uuid.UUID,
    principal: Admin,
    session: ConsoleSession,
    runtime: RuntimeDep,
) -> Response:
    """Remove a user (never the last owner)."""
    try:
        await users.delete_user(
            session, runtime.revocations, runtime.browser_store, principal, user_id
        )
    except AppError as exc:
        if exc.status_code == 404:
            raise
        await end_refused(session, exc)
        return await _users_page(
            request, principal, session, error=exc.message, status_code=exc.status_code
        )
    return redirect("/users", "user-deleted")


# --- trusted issuers ------------------------------------------------------------------------


def _fetched(runtime: RuntimeDep, uri: str | None) -> dict[str, Any] | None:
    if uri is None:
        return None
    status = runtime.satellites.jwks.status(uri)
    if status is None:
        return {"key_ids": None, "at": None, "error": None}
    at = datetime.fromtimestamp(status.attempted_at).astimezone() if status.attempted_at else None
    return {"key_ids": status.key_ids, "at": at, "error": status.error}


async def _issuers_page(
    request: Request,
    session: ConsoleSession,
    runtime: RuntimeDep,
    *,
    values: dict[str, Any] | None = None,
    problems: dict[str, str] | None = None,
    status_code: int = 200,
) -> Response:
    rows, next_cursor = await issuers.list_issuers(session, _cursor(request))
    views = [(issuers.public_view(row), _fetched(runtime, row.jwks_uri)) for row in rows]
    return page(
        request,
        "issuers.html",
        {
            "issuers": views,
            "next_cursor": next_cursor,
            "algorithms": ALGORITHMS,
            "values": values or {"algorithms": ["RS256"], "source": "jwks_uri"},
            "problems": problems or {},
            "general_problem": (problems or {}).get(GENERAL),
        },
        status_code=status_code,
    )


@router.get("/issuers")
async def issuers_page(
    request: Request, principal: Admin, session: ConsoleSession, runtime: RuntimeDep
) -> Response:
    """Trusted issuers with their key ids and the last JWKS fetch (and its error)."""
    return await _issuers_page(request, session, runtime)


@router.post("/issuers")
async def create_issuer(
    request: Request,
    form: FormDep,
    principal: Admin,
    session: ConsoleSession,
    runtime: RuntimeDep,
) -> Response:
    """Trust an issuer (`POST /issuers`)."""
    values: dict[str, Any] = {
        "issuer": form.get("issuer"),
        "source": form.get("source", "jwks_uri"),
        "jwks_uri": form.get("jwks_uri"),
        "public_keys_pem": form.get("public_keys_pem"),
        "audiences": form.get("audiences"),
        "algorithms": form.all("algorithms"),
        "subject": form.get("subject", "sub"),
        "email": form.get("email", "email"),
        "roles": form.get("roles", "roles"),
    }
    body: dict[str, Any] = {
        "issuer": values["issuer"],
        "audiences": form.lines("audiences"),
        "algorithms": values["algorithms"],
        "claim_mapping": {
            "subject": values["subject"] or "sub",
            "email": values["email"] or "email",
            "roles": values["roles"] or "roles",
        },
    }
    if values["source"] == "pem":
        pems = [p.strip() + "\n" for p in form.get("public_keys_pem").split("\n\n") if p.strip()]
        body["public_keys_pem"] = pems or None
    else:
        body["jwks_uri"] = values["jwks_uri"] or None
    try:
        data = parse(IssuerCreate, body)
        await issuers.create_issuer(session, runtime.bus, runtime.issuer_rules, principal, data)
    except AppError as exc:
        await end_refused(session, exc)
        return await _issuers_page(
            request,
            session,
            runtime,
            values=values,
            problems=from_app_error(exc),
            status_code=exc.status_code,
        )
    return redirect("/issuers", "issuer-created")


@router.post("/issuers/{issuer_id}/delete")
async def delete_issuer(
    issuer_id: uuid.UUID, principal: Admin, session: ConsoleSession, runtime: RuntimeDep
) -> Response:
    """Stop trusting an issuer."""
    await issuers.delete_issuer(session, runtime.bus, principal, issuer_id)
    return redirect("/issuers", "issuer-deleted")


# --- API keys -------------------------------------------------------------------------------


async def _keys_page(
    request: Request,
    session: ConsoleSession,
    *,
    created: Any = None,
    secret: str | None = None,
    values: dict[str, Any] | None = None,
    problems: dict[str, str] | None = None,
    status_code: int = 200,
) -> Response:
    rows, next_cursor = await apikeys.list_keys(session, _cursor(request))
    return page(
        request,
        "api_keys.html",
        {
            "keys": sorted(rows, key=lambda k: k.created_at, reverse=True),
            "next_cursor": next_cursor,
            "scopes": SCOPES,
            "created": created,
            "secret": secret,
            "values": values or {"scopes": ["endpoints:query"]},
            "problems": problems or {},
        },
        status_code=status_code,
    )


@router.get("/api-keys")
async def keys_page(request: Request, principal: Admin, session: ConsoleSession) -> Response:
    """The tenant's API keys (metadata only)."""
    return await _keys_page(request, session)


@router.post("/api-keys")
async def create_key(
    request: Request, form: FormDep, principal: Admin, session: ConsoleSession
) -> Response:
    """Create a key (`POST /api-keys`): its secret is on this answer only, never again."""
    expires = form.optional("expires_on")
    values = {"name": form.get("name"), "scopes": form.all("scopes"), "expires_on": expires}
    try:
        data = parse(
            ApiKeyCreate,
            {
                "name": values["name"],
                "scopes": values["scopes"],
                "expires_at": f"{expires}T23:59:59Z" if expires else None,
            },
        )
        row, secret = await apikeys.create_key(session, principal, data)
    except AppError as exc:
        await end_refused(session, exc)
        return await _keys_page(
            request,
            session,
            values=values,
            problems=from_app_error(exc),
            status_code=exc.status_code,
        )
    return await _keys_page(request, session, created=row, secret=secret, status_code=201)


@router.post("/api-keys/{key_id}/revoke")
async def revoke_key(
    key_id: uuid.UUID, principal: Admin, session: ConsoleSession, runtime: RuntimeDep
) -> Response:
    """Revoke a key; every process refuses it from now on."""
    await apikeys.revoke_key(session, runtime.bus, principal, key_id)
    return redirect("/api-keys", "key-revoked")


# --- the tenant -----------------------------------------------------------------------------


TENANT_SETTINGS = (
    ("access_token_ttl_seconds", "Access token lifetime (seconds)"),
    ("refresh_token_ttl_seconds", "Refresh token lifetime (seconds)"),
    ("session_idle_timeout_seconds", "Browser session idle timeout (seconds)"),
    ("session_absolute_timeout_seconds", "Browser session absolute timeout (seconds)"),
)


def _tenant_page(
    request: Request,
    tenant: Any,
    values: dict[str, Any],
    problems: dict[str, str],
    status_code: int = 200,
) -> Response:
    return page(
        request,
        "tenant.html",
        {
            "tenant": tenant,
            "values": values,
            "settings": TENANT_SETTINGS,
            "problems": problems,
        },
        status_code=status_code,
    )


@router.get("/tenant")
async def tenant_page(request: Request, principal: Reader, session: ConsoleSession) -> Response:
    """The tenant and its settings (changed by admins, deleted by its owner)."""
    tenant = await tenants.get_tenant(session, principal.tenant_id)
    values = {"name": tenant.name, **{k: tenant.settings.get(k) for k, _ in TENANT_SETTINGS}}
    return _tenant_page(request, tenant, values, {})


@router.post("/tenant")
async def update_tenant(
    request: Request, form: FormDep, principal: Admin, session: ConsoleSession
) -> Response:
    """Rename the tenant or change its lifetimes (`PATCH /tenant`); a blank lifetime keeps the
    value it has (the server's default when never set)."""
    values: dict[str, Any] = {"name": form.get("name")}
    chosen: dict[str, Any] = {}
    for name, _label in TENANT_SETTINGS:
        values[name] = form.get(name)
        if values[name]:
            chosen[name] = int(values[name]) if values[name].isdigit() else values[name]
    try:
        data = parse(TenantUpdate, {"name": values["name"], "settings": chosen})
        await tenants.update_tenant(session, principal, data)
    except AppError as exc:
        await end_refused(session, exc)
        tenant = await tenants.get_tenant(session, principal.tenant_id)
        problems = {k.removeprefix("settings."): v for k, v in from_app_error(exc).items()}
        return _tenant_page(request, tenant, values, problems, exc.status_code)
    return redirect("/tenant", "tenant-saved")


@router.post("/tenant/delete")
async def delete_tenant(
    form: FormDep, principal: Owner, session: ConsoleSession, runtime: RuntimeDep
) -> Response:
    """Delete the tenant and everything it owns (owner only; the slug must be typed)."""
    if form.get("confirm") != principal.tenant_slug:
        raise Forbidden("Type the tenant's slug to confirm.", code="confirmation_required")
    await tenants.delete_tenant(session, runtime.revocations, principal)
    response = redirect("/sign-in", "tenant-deleted")
    clear_session_cookies(response, runtime.settings)
    return response
