"""Sign in, sign out, the user's own account and sessions."""

from __future__ import annotations

import uuid

from fastapi import APIRouter, Request, Response

from app.browser_sessions import oidc_logout
from app.browser_sessions import service as browser
from app.browser_sessions.schemas import SessionCreate
from app.console.deps import ConsoleRoute, ConsoleSession, FormDep, Viewer
from app.console.identity import identity_provider_links
from app.console.problems import from_app_error, parse
from app.console.render import PREFIX, home_for, page, redirect
from app.core.errors import AppError, Forbidden
from app.core.pagination import PageParams
from app.privacy import service as privacy
from app.tenants import service as tenants
from app.web.deps import DbSession, LoginAttempt, RuntimeDep, end_refused
from app.web.routes.sessions import clear_session_cookies, set_session_cookies

router = APIRouter(prefix=PREFIX, route_class=ConsoleRoute, include_in_schema=False)
SESSION_PAGE = PageParams(limit=100, cursor=None)
# Where a provider sends the browser after its logout (registered at the provider as is).
POST_LOGOUT_PATH = f"{PREFIX}/sign-in"


# A sign-in through an identity provider that was refused comes back with `?problem=<code>`
# (`app.web.routes.oidc`): a fixed text per code, never the query's own words.
SIGN_IN_PROBLEMS = {
    "not_provisioned": "This identity is not provisioned in this tenant; ask an administrator.",
    "account_disabled": "This account is deactivated.",
    "oidc_access_denied": "The identity provider did not allow this sign-in.",
    "oidc_provider_error": "The identity provider refused the sign-in; try again.",
    "oidc_state_invalid": "This sign-in expired or was started in another browser; start again.",
    "oidc_issuer_mismatch": "The answer came from another identity provider; start again.",
    "oidc_code_missing": "The identity provider sent no code; start again.",
    "oidc_code_rejected": "The identity provider refused the code; start again.",
    "oidc_id_token_invalid": "The identity provider's answer could not be verified.",
    "identity_provider_unavailable": "The identity provider cannot be reached; try again later.",
    "identity_provider_not_found": "This identity provider is not offered here.",
    "return_to_refused": "The page to return to is not allowed.",
}
SIGN_IN_PROBLEM = "The sign-in through the identity provider failed; try again."


def _safe_next(value: str | None) -> str | None:
    """Only a console path is a place to return to after signing in (no open redirect)."""
    if value and value.startswith(f"{PREFIX}/") and not value.startswith(f"{PREFIX}//"):
        return value if "\\" not in value else None
    return None


@router.get("")
async def console_home(principal: Viewer) -> Response:
    """The console's front door: each role's first page."""
    return redirect(home_for(principal).removeprefix(PREFIX))


@router.get("/sign-in")
async def sign_in_page(request: Request, session: DbSession, runtime: RuntimeDep) -> Response:
    """The password form and the tenant's identity providers (and why a sign-in through one
    was refused, `?problem=<code>`)."""
    tenant = request.query_params.get("tenant") or None
    problem = request.query_params.get("problem")
    return page(
        request,
        "sign_in.html",
        {
            "tenant": tenant or "",
            "next": _safe_next(request.query_params.get("next")) or "",
            "providers": await identity_provider_links(
                session, runtime.settings.public_url, tenant
            ),
            "problems": (
                {"_form": SIGN_IN_PROBLEMS.get(problem, SIGN_IN_PROBLEM)} if problem else {}
            ),
        },
    )


@router.post("/sign-in", dependencies=[LoginAttempt])
async def sign_in(
    request: Request, form: FormDep, session: DbSession, runtime: RuntimeDep
) -> Response:
    """Sign in with a password: the browser-session login of `POST /sessions`, then home."""
    values = {"tenant": form.get("tenant"), "email": form.get("email")}
    try:
        data = parse(SessionCreate, {**values, "password": form.get("password")})
        new = await browser.create_session(
            session, runtime.browser, data, request.headers.get("origin")
        )
    except AppError as exc:
        await end_refused(session, exc)
        return page(
            request,
            "sign_in.html",
            {
                **values,
                "next": _safe_next(form.get("next")) or "",
                "providers": await identity_provider_links(
                    session, runtime.settings.public_url, values["tenant"] or None
                ),
                "problems": from_app_error(exc),
            },
            status_code=exc.status_code,
        )
    # The console's front door sends each role to its first page.
    target = _safe_next(form.get("next")) or PREFIX
    response = redirect(target.removeprefix(PREFIX))
    set_session_cookies(response, runtime.settings, new)
    return response


@router.post("/sign-out")
async def sign_out(
    request: Request, principal: Viewer, session: ConsoleSession, runtime: RuntimeDep
) -> Response:
    """Sign out: revoke this session and clear both cookies. A session signed in through an
    identity provider with an `end_session_endpoint` ends the provider's session too
    (RP-initiated logout, as `DELETE /sessions/current`), which sends the browser back to the
    console's sign-in page."""
    end_session = await oidc_logout.end_session_url(
        session, runtime.oidc, principal, POST_LOGOUT_PATH
    )
    await browser.revoke_current(session, runtime.browser, principal)
    response: Response
    if end_session is None:
        response = redirect("/sign-in", "signed-out")
    else:
        # The page's CSP (`form-action 'self'`) stops a form post from being redirected to
        # another origin, so the browser is sent on by the response itself (`Refresh`), with
        # a link for the reader.
        request.state.principal = None  # signed out: the page shows no navigation
        response = page(request, "signing_out.html", {"end_session_url": end_session})
        response.headers["Refresh"] = f"0;url={end_session}"
    clear_session_cookies(response, runtime.settings)
    return response


@router.get("/me")
async def my_account(
    request: Request, principal: Viewer, session: ConsoleSession, runtime: RuntimeDep
) -> Response:
    """The user's profile, live sessions, data export and account deletion."""
    sessions, _cursor = await browser.list_sessions(
        session, runtime.browser, principal, SESSION_PAGE
    )
    tenant = await tenants.get_tenant(session, principal.tenant_id)
    return page(
        request,
        "me.html",
        {"sessions": sessions, "tenant": tenant, "others": [s for s in sessions if not s.current]},
    )


@router.post("/me/sessions/{session_id}/revoke")
async def revoke_session(
    session_id: uuid.UUID, principal: Viewer, session: ConsoleSession, runtime: RuntimeDep
) -> Response:
    """Sign one of the user's sessions out (another user's is a 404)."""
    await browser.revoke_session(session, runtime.browser, principal, session_id)
    if str(session_id) == principal.session_id:
        response = redirect("/sign-in", "signed-out")
        clear_session_cookies(response, runtime.settings)
        return response
    return redirect("/me", "session-revoked")


@router.post("/me/sessions/revoke-others")
async def sign_out_elsewhere(
    principal: Viewer, session: ConsoleSession, runtime: RuntimeDep
) -> Response:
    """Sign out every other session of the user; this one stays."""
    sessions, _cursor = await browser.list_sessions(
        session, runtime.browser, principal, SESSION_PAGE
    )
    for other in sessions:
        if not other.current:
            await browser.revoke_session(session, runtime.browser, principal, other.id)
    return redirect("/me", "others-revoked")


@router.post("/me/delete")
async def delete_my_account(
    request: Request,
    form: FormDep,
    principal: Viewer,
    session: ConsoleSession,
    runtime: RuntimeDep,
) -> Response:
    """Erase the user's account (`DELETE /me`); the confirmation must name the email."""
    if form.get("confirm").lower() != (principal.email or "").lower():
        raise Forbidden("Type your email address to confirm.", code="confirmation_required")
    await privacy.erase_me(
        session,
        runtime.audit,
        runtime.revocations,
        runtime.browser_store,
        runtime.settings.warden_master_key[0],
        principal,
    )
    response = redirect("/sign-in", "account-deleted")
    clear_session_cookies(response, runtime.settings)
    return response
