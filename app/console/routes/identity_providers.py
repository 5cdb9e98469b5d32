"""The tenant's identity providers (admins manage them, viewers read them)."""

from __future__ import annotations

import json
import uuid
from typing import Any

from fastapi import APIRouter, Request, Response

from app.browser_sessions import oidc_logout
from app.console.deps import Admin, ConsoleRoute, ConsoleSession, Form, FormDep, Reader
from app.console.problems import from_app_error, parse
from app.console.render import PREFIX, page, redirect
from app.console.routes.account import POST_LOGOUT_PATH
from app.core.errors import AppError
from app.core.identity import Principal
from app.core.pagination import PageParams
from app.identity_providers import service as providers
from app.identity_providers.schemas import (
    IdentityProviderCreate,
    IdentityProviderPublic,
    IdentityProviderUpdate,
)
from app.web.deps import RuntimeDep, end_refused

router = APIRouter(prefix=PREFIX, route_class=ConsoleRoute, include_in_schema=False)
PAGE_SIZE = 50
CLIENT_AUTHS = ("client_secret_basic", "client_secret_post", "private_key_jwt")
DEFAULT_ROLES = ("member", "viewer")
CLAIMS = ("subject", "email", "name", "groups")
BASE = "/identity-providers"


def _problems(exc: AppError) -> dict[str, str]:
    """Messages by form field: a discovery refusal is about the issuer."""
    problems: dict[str, str] = {}
    for key, message in from_app_error(exc).items():
        field = "issuer" if exc.code == "invalid_discovery" else key
        problems.setdefault(field.replace("claim_mapping.", "claim_"), message)
    return problems


def _values(form: Form) -> dict[str, Any]:
    """The form as typed (shown again with the problems)."""
    values: dict[str, Any] = {
        "name": form.get("name"),
        "issuer": form.get("issuer"),
        "client_id": form.get("client_id"),
        "client_auth": form.get("client_auth", "client_secret_basic"),
        "scopes": form.get("scopes"),
        "allowed_email_domains": form.get("allowed_email_domains"),
        "default_role": form.get("default_role", "member"),
        "jit_provisioning": form.checked("jit_provisioning"),
        "enabled": form.checked("enabled"),
    }
    for claim in CLAIMS:
        values[f"claim_{claim}"] = form.get(f"claim_{claim}")
    return values


def _body(form: Form, values: dict[str, Any]) -> dict[str, Any]:
    """The API's request body from the form (blank claims keep the defaults)."""
    return {
        "issuer": values["issuer"],
        "client_id": values["client_id"],
        "client_secret": form.optional("client_secret"),
        "scopes": form.get("scopes").split(),
        "claim_mapping": {c: values[f"claim_{c}"] for c in CLAIMS if values[f"claim_{c}"]},
        "allowed_email_domains": form.get("allowed_email_domains").split(),
        "default_role": values["default_role"],
        "jit_provisioning": values["jit_provisioning"],
        "enabled": values["enabled"],
    }


def _from_view(view: IdentityProviderPublic) -> dict[str, Any]:
    """A provider's form values."""
    return {
        "name": view.name,
        "issuer": view.issuer,
        "client_id": view.client_id,
        "client_auth": view.client_auth,
        "scopes": " ".join(view.scopes),
        "allowed_email_domains": " ".join(view.allowed_email_domains),
        "default_role": view.default_role,
        "jit_provisioning": view.jit_provisioning,
        "enabled": view.enabled,
        **{f"claim_{claim}": view.claim_mapping.get(claim, "") for claim in CLAIMS},
    }


NEW_VALUES: dict[str, Any] = {
    "client_auth": "client_secret_basic",
    "scopes": "openid email profile",
    "default_role": "member",
    "jit_provisioning": False,
    "enabled": True,
    **{f"claim_{claim}": claim for claim in CLAIMS},
    "claim_subject": "sub",
}


async def _list_page(
    request: Request,
    principal: Principal,
    session: ConsoleSession,
    runtime: RuntimeDep,
    *,
    values: dict[str, Any] | None = None,
    problems: dict[str, str] | None = None,
    status_code: int = 200,
) -> Response:
    params = PageParams(limit=PAGE_SIZE, cursor=request.query_params.get("cursor") or None)
    rows, next_cursor = await providers.list_providers(session, params)
    rules = runtime.provider_rules
    return page(
        request,
        "identity_providers.html",
        {
            "providers": [providers.public_view(rules, principal.tenant_slug, r) for r in rows],
            "next_cursor": next_cursor,
            "backchannel_logout_uri": providers.backchannel_logout_uri(rules.public_url),
            "post_logout_uri": rules.public_url.rstrip("/") + POST_LOGOUT_PATH,
            "client_auths": CLIENT_AUTHS,
            "default_roles": DEFAULT_ROLES,
            "values": values or NEW_VALUES,
            "problems": problems or {},
        },
        status_code=status_code,
    )


async def _provider_page(
    request: Request,
    principal: Principal,
    session: ConsoleSession,
    runtime: RuntimeDep,
    provider_id: uuid.UUID,
    *,
    values: dict[str, Any] | None = None,
    problems: dict[str, str] | None = None,
    status_code: int = 200,
) -> Response:
    row = await providers.get_provider(session, provider_id)
    view = providers.public_view(runtime.provider_rules, principal.tenant_slug, row)
    return page(
        request,
        "identity_provider.html",
        {
            "provider": view,
            "post_logout_uri": runtime.provider_rules.public_url.rstrip("/") + POST_LOGOUT_PATH,
            "client_jwk": json.dumps(view.client_jwk, indent=2) if view.client_jwk else None,
            "client_auths": CLIENT_AUTHS,
            "default_roles": DEFAULT_ROLES,
            "values": values or _from_view(view),
            "problems": problems or {},
        },
        status_code=status_code,
    )


@router.get(BASE)
async def providers_page(
    request: Request, principal: Reader, session: ConsoleSession, runtime: RuntimeDep
) -> Response:
    """The providers the tenant's users sign in through, with the URIs to register."""
    return await _list_page(request, principal, session, runtime)


@router.post(BASE)
async def create_provider(
    request: Request, form: FormDep, principal: Admin, session: ConsoleSession, runtime: RuntimeDep
) -> Response:
    """Register a provider (`POST /identity-providers`: discovery fetched and checked now)."""
    values = _values(form)
    body = {"name": values["name"], "client_auth": values["client_auth"], **_body(form, values)}
    try:
        data = parse(IdentityProviderCreate, body)
        row = await providers.create_provider(session, runtime.provider_rules, principal, data)
    except AppError as exc:
        await end_refused(session, exc)
        return await _list_page(
            request,
            principal,
            session,
            runtime,
            values=values,
            problems=_problems(exc),
            status_code=exc.status_code,
        )
    return redirect(f"{BASE}/{row.id}", "provider-created")


@router.get(BASE + "/{provider_id}")
async def provider_page(
    provider_id: uuid.UUID,
    request: Request,
    principal: Reader,
    session: ConsoleSession,
    runtime: RuntimeDep,
) -> Response:
    """One provider: what to register at the provider, and (admins) its settings."""
    return await _provider_page(request, principal, session, runtime, provider_id)


@router.post(BASE + "/{provider_id}")
async def update_provider(
    provider_id: uuid.UUID,
    request: Request,
    form: FormDep,
    principal: Admin,
    session: ConsoleSession,
    runtime: RuntimeDep,
) -> Response:
    """Change a provider (`PATCH /identity-providers/{id}`); a blank secret keeps the one it
    has; the issuer's discovery is read again."""
    values = _values(form)
    try:
        data = parse(IdentityProviderUpdate, _body(form, values))
        await providers.update_provider(
            session, runtime.provider_rules, principal, provider_id, data
        )
    except AppError as exc:
        await end_refused(session, exc)
        return await _provider_page(
            request,
            principal,
            session,
            runtime,
            provider_id,
            values=values,
            problems=_problems(exc),
            status_code=exc.status_code,
        )
    return redirect(f"{BASE}/{provider_id}", "provider-saved")


@router.post(BASE + "/{provider_id}/enabled")
async def enable_provider(
    provider_id: uuid.UUID,
    form: FormDep,
    principal: Admin,
    session: ConsoleSession,
    runtime: RuntimeDep,
) -> Response:
    """Offer the provider on the sign-in page again, or stop (`enabled` is `on` or `off`)."""
    enabled = form.get("enabled") == "on"
    data = parse(IdentityProviderUpdate, {"enabled": enabled})
    await providers.update_provider(session, runtime.provider_rules, principal, provider_id, data)
    return redirect(BASE, "provider-enabled" if enabled else "provider-disabled")


@router.post(BASE + "/{provider_id}/delete")
async def delete_provider(
    provider_id: uuid.UUID, principal: Admin, session: ConsoleSession, runtime: RuntimeDep
) -> Response:
    """Remove a provider: sign-ins through it stop and the sessions it vouched for end."""
    await oidc_logout.delete_provider(session, runtime.oidc, principal, provider_id)
    return redirect(BASE, "provider-deleted")
