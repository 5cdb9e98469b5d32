"""`/sessions` (browser login, list, logout) and the internal `/internal/v1/sessions/exchange`."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Depends, Request, Response, status
from fastapi.responses import JSONResponse

from app.browser_sessions import oidc, oidc_logout, service
from app.browser_sessions.schemas import (
    ExchangeRequest,
    ExchangeResponse,
    LogoutRedirect,
    SessionCreate,
    SessionCreated,
    SessionInfo,
    SessionPublic,
)
from app.core.config import Settings
from app.core.identity import Principal
from app.core.pagination import Page, PageParams, page_params
from app.web.authenticate import Mode
from app.web.deps import DbSession, LoginAttempt, RuntimeDep, TenantSession, ViewerPrincipal

router = APIRouter(prefix="/sessions", tags=["browser sessions"])
internal_router = APIRouter(prefix="/internal/v1/sessions", tags=["session exchange"])


def set_session_cookies(response: Response, settings: Settings, new: service.NewSession) -> None:
    """The session cookie (HttpOnly) and the CSRF cookie (readable) of a new browser session."""
    secure = settings.session_cookie_secure
    response.set_cookie(
        service.SESSION_COOKIE,
        new.cookie,
        max_age=new.max_age,
        path="/",
        secure=secure,
        httponly=True,
        samesite="lax",
    )
    # Readable by the page's script, which echoes it in X-CSRF-Token.
    response.set_cookie(
        service.CSRF_COOKIE,
        new.csrf_token,
        max_age=new.max_age,
        path="/",
        secure=secure,
        httponly=False,
        samesite="lax",
    )


def clear_session_cookies(response: Response, settings: Settings) -> None:
    """Drop both browser-session cookies."""
    secure = settings.session_cookie_secure
    response.delete_cookie(
        service.SESSION_COOKIE, path="/", secure=secure, httponly=True, samesite="lax"
    )
    response.delete_cookie(
        service.CSRF_COOKIE, path="/", secure=secure, httponly=False, samesite="lax"
    )


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=SessionCreated,
    dependencies=[LoginAttempt],
)
async def create_session(
    request: Request,
    response: Response,
    body: SessionCreate,
    session: DbSession,
    runtime: RuntimeDep,
) -> SessionCreated:
    """Log a browser in: an HttpOnly session cookie and a CSRF token; never a JWT."""
    new = await service.create_session(
        session, runtime.browser, body, request.headers.get("origin")
    )
    set_session_cookies(response, runtime.settings, new)
    return SessionCreated(session=SessionInfo.model_validate(new.row), csrf_token=new.csrf_token)


@router.get("", response_model=Page[SessionPublic])
async def list_sessions(
    principal: ViewerPrincipal,
    session: TenantSession,
    runtime: RuntimeDep,
    params: PageParams = Depends(page_params),
) -> Page[SessionPublic]:
    """The caller's live browser sessions (`current` marks the one making this request)."""
    items, cursor = await service.list_sessions(session, runtime.browser, principal, params)
    return Page(items=items, next_cursor=cursor)


@router.delete(
    "/current",
    status_code=status.HTTP_204_NO_CONTENT,
    responses={200: {"model": LogoutRedirect}},
)
async def logout(
    principal: ViewerPrincipal,
    session: TenantSession,
    runtime: RuntimeDep,
    post_logout_redirect_uri: str | None = None,
) -> Response:
    """Log out: revoke this session and clear both cookies. A session signed in through an
    identity provider with an `end_session_endpoint` answers 200 with the URL that ends the
    provider's session too (RP-initiated logout); the page navigates there."""
    end_session = await oidc_logout.end_session_url(
        session, runtime.oidc, principal, post_logout_redirect_uri
    )
    await service.revoke_current(session, runtime.browser, principal)
    response: Response
    if end_session is None:
        response = Response(status_code=status.HTTP_204_NO_CONTENT)
    else:
        response = JSONResponse(LogoutRedirect(end_session_url=end_session).model_dump())
    clear_session_cookies(response, runtime.settings)
    return response


@router.delete("/{session_id}", status_code=status.HTTP_204_NO_CONTENT)
async def revoke_session(
    session_id: uuid.UUID, principal: ViewerPrincipal, session: TenantSession, runtime: RuntimeDep
) -> Response:
    """Revoke one of the caller's sessions (another user's is a 404)."""
    await service.revoke_session(session, runtime.browser, principal, session_id)
    response = Response(status_code=status.HTTP_204_NO_CONTENT)
    if str(session_id) == principal.session_id:
        clear_session_cookies(response, runtime.settings)
    return response


async def service_principal(request: Request, runtime: RuntimeDep) -> Principal:
    """An API key holding `sessions:exchange` (the authenticator's internal mode)."""
    return await runtime.authenticator.authenticate(request, Mode.INTERNAL)


ServicePrincipal = Annotated[Principal, Depends(service_principal)]


@internal_router.post(
    "/exchange", response_model=ExchangeResponse, response_model_exclude_none=True
)
async def exchange(
    body: ExchangeRequest, caller: ServicePrincipal, session: DbSession, runtime: RuntimeDep
) -> ExchangeResponse:
    """East-west only: a live session (the cookie's value) → an access token and its claims;
    for a session signed in through an identity provider, also who the provider says the user
    is and (scope `sessions:idp_token`) the provider's current access token."""
    answer = await service.exchange(session, runtime.browser, caller, body.session_id)
    return await oidc.add_provider_identity(session, runtime.oidc, caller, answer)
