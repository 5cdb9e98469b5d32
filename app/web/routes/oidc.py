"""`/sessions/oidc/…`: signing a browser in through the tenant's identity provider, and the
provider's back-channel logout."""

from __future__ import annotations

from typing import Annotated
from urllib.parse import parse_qs, urlencode

from fastapi import APIRouter, Depends, Request, Response, status
from fastapi.responses import RedirectResponse

from app.browser_sessions import oidc, oidc_logout
from app.core.errors import AppError
from app.web.deps import DbSession, LoginAttempt, RuntimeDep, end_refused
from app.web.routes.sessions import set_session_cookies

router = APIRouter(prefix="/sessions/oidc", tags=["browser sessions"])
MAX_FORM_BYTES = 32 * 1024


async def _logout_token(request: Request) -> str:
    """The `logout_token` of an `application/x-www-form-urlencoded` body (400 without one)."""
    body = await request.body()
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    fields: dict[str, list[str]] = {}
    if content_type == "application/x-www-form-urlencoded" and len(body) <= MAX_FORM_BYTES:
        try:
            fields = parse_qs(body.decode("ascii"), max_num_fields=10, strict_parsing=False)
        except (UnicodeDecodeError, ValueError):
            fields = {}
    values = fields.get("logout_token", [])
    if len(values) != 1 or not values[0]:
        raise AppError("Send one logout_token, form-encoded.", code="invalid_logout_token")
    return values[0]


@router.post("/backchannel-logout", status_code=status.HTTP_200_OK)
async def backchannel_logout(
    logout_token: Annotated[str, Depends(_logout_token)], session: DbSession, runtime: RuntimeDep
) -> Response:
    """OpenID Connect Back-Channel Logout 1.0: the provider ends sessions (by `sid` or `sub`).
    Body: `logout_token=<JWT>` (`application/x-www-form-urlencoded`)."""
    await oidc_logout.backchannel_logout(session, runtime.oidc, logout_token)
    return Response(status_code=status.HTTP_200_OK, headers={"Cache-Control": "no-store"})


async def _refused_in_browser(
    request: Request, session: DbSession, tenant: str, exc: AppError
) -> RedirectResponse | None:
    """A browser refused during the sign-in (it asks for HTML) goes on to the sign-in page,
    which names the refusal by its code (a fixed text per code, never reflected input); an API
    client keeps the JSON error. The refusal was audited where it was raised."""
    page = getattr(request.app.state, "sign_in_page", None)
    if page is None or "text/html" not in request.headers.get("accept", ""):
        return None
    await end_refused(session, exc)
    query = urlencode({"tenant": tenant, "problem": exc.code})
    return RedirectResponse(f"{page}?{query}", status_code=status.HTTP_303_SEE_OTHER)


def _callback_path(request: Request) -> str:
    """The callback's path beside this start path (the binding cookie is sent only there)."""
    return request.url.path.rsplit("/", 1)[0] + "/callback"


@router.get(
    "/{tenant}/{provider}/start",
    status_code=status.HTTP_303_SEE_OTHER,
    dependencies=[LoginAttempt],
    response_class=RedirectResponse,
)
async def start(
    tenant: str,
    provider: str,
    request: Request,
    session: DbSession,
    runtime: RuntimeDep,
    return_to: str | None = None,
) -> RedirectResponse:
    """Redirect the browser to the provider (code flow, PKCE S256, state and nonce); a
    short-lived HttpOnly cookie binds the sign-in to this browser. A refusal is a JSON error,
    or, for a browser (`Accept: text/html`), a redirect to the console's sign-in page with
    `?problem=<code>`."""
    try:
        started = await oidc.start(session, runtime.oidc, tenant, provider, return_to)
    except AppError as exc:
        if (page := await _refused_in_browser(request, session, tenant, exc)) is not None:
            return page
        raise
    response = RedirectResponse(started.url, status_code=status.HTTP_303_SEE_OTHER)
    response.set_cookie(
        started.cookie_name,
        started.cookie_value,
        max_age=oidc.LOGIN_TTL_SECONDS,
        path=_callback_path(request),
        secure=runtime.settings.session_cookie_secure,
        httponly=True,
        samesite="lax",  # sent on the provider's top-level redirect back, not on cross-site posts
    )
    return response


# Not counted against the login limit again: a callback needs a live `state`, which only a
# (counted) start hands out, and a wrong one is refused before any call to the provider.
@router.get(
    "/{tenant}/{provider}/callback",
    status_code=status.HTTP_303_SEE_OTHER,
    response_class=RedirectResponse,
)
async def callback(
    tenant: str, provider: str, request: Request, session: DbSession, runtime: RuntimeDep
) -> RedirectResponse:
    """The provider's redirect back: a browser session (cookie + CSRF token), then `return_to`.
    A refusal is a JSON error, or, for a browser (`Accept: text/html`), a redirect to the
    console's sign-in page with `?problem=<code>`."""
    params = {key: value for key, value in request.query_params.items()}
    try:
        new, return_to = await oidc.callback(
            session, runtime.oidc, tenant, provider, params, request.cookies
        )
    except AppError as exc:
        if (page := await _refused_in_browser(request, session, tenant, exc)) is not None:
            return page
        raise
    response = RedirectResponse(return_to, status_code=status.HTTP_303_SEE_OTHER)
    set_session_cookies(response, runtime.settings, new)
    response.delete_cookie(
        oidc.binding_cookie(params["state"]),
        path=request.url.path,
        secure=runtime.settings.session_cookie_secure,
        httponly=True,
        samesite="lax",
    )
    return response
