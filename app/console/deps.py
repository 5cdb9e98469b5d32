"""Console request dependencies: the form body, the signed-in user (browser session only,
through the one authenticator), role checks, and the route class that turns refusals into
pages."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Annotated, Any
from urllib.parse import parse_qsl, quote, urlencode

import structlog
from fastapi import Depends, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import RedirectResponse
from fastapi.routing import APIRoute
from sqlalchemy.ext.asyncio import AsyncSession

from app.console.render import PREFIX, page
from app.core.db import set_session_tenant
from app.core.errors import AppError, Forbidden, Unauthenticated, Unprocessable
from app.core.identity import Principal, Role
from app.web.deps import DbSession, RuntimeDep, ensure_role

FORM_TYPE = "application/x-www-form-urlencoded"
MAX_FIELDS = 200


class Form:
    """An HTML form's fields (`application/x-www-form-urlencoded`), in order."""

    def __init__(self, pairs: list[tuple[str, str]]) -> None:
        self.pairs = pairs

    def get(self, name: str, default: str = "") -> str:
        """The first value of a field, stripped; `default` when absent."""
        for key, value in self.pairs:
            if key == name:
                return value.strip()
        return default

    def optional(self, name: str) -> str | None:
        """A field's value, or None when absent or blank."""
        return self.get(name) or None

    def all(self, name: str) -> list[str]:
        """Every value of a repeated field (checkboxes, multi-selects)."""
        return [value for key, value in self.pairs if key == name]

    def lines(self, name: str) -> list[str]:
        """A textarea's non-blank lines, stripped."""
        return [line.strip() for line in self.get(name).splitlines() if line.strip()]

    def checked(self, name: str) -> bool:
        """Whether a checkbox was ticked."""
        return bool(self.all(name))


async def read_form(request: Request) -> Form:
    """The request's form body (parsed once; the edge middleware caps its size)."""
    cached: Form | None = getattr(request.state, "console_form", None)
    if cached is not None:
        return cached
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if request.method != "POST":
        form = Form([])
    elif content_type != FORM_TYPE:
        raise Unprocessable("Console forms are sent form-encoded.", code="invalid_form")
    else:
        text = (await request.body()).decode("utf-8", "replace")
        pairs = parse_qsl(text, keep_blank_values=True, max_num_fields=MAX_FIELDS)
        form = Form(pairs)
    request.state.console_form = form
    return form


FormDep = Annotated[Form, Depends(read_form)]


async def console_user(request: Request, runtime: RuntimeDep, form: FormDep) -> Principal:
    """The user signed in with this browser's session cookie. A form post carries its CSRF
    token in the `csrf_token` field, checked by the authenticator (with the Origin) exactly
    as `X-CSRF-Token` would be. Only a browser session opens the console."""
    csrf = form.get("csrf_token") if request.method == "POST" else None
    principal = await runtime.authenticator.authenticate(request, csrf_token=csrf)
    if principal.kind != "user" or principal.session_id is None:
        raise Unauthenticated("Sign in to use the console.", code="console_session_required")
    structlog.contextvars.bind_contextvars(
        tenant=principal.tenant_slug, principal=f"{principal.kind}:{principal.id}"
    )
    request.state.principal = principal
    return principal


ConsoleUser = Annotated[Principal, Depends(console_user)]


async def console_session(principal: ConsoleUser, session: DbSession) -> AsyncSession:
    """The request's transaction, scoped to the signed-in user's tenant."""
    set_session_tenant(session, principal.tenant_id)
    return session


ConsoleSession = Annotated[AsyncSession, Depends(console_session)]


def console_role(role: Role) -> Callable[..., Coroutine[Any, Any, Principal]]:
    """Admit signed-in users holding `role` or a higher one (the API's rule, `ensure_role`)."""

    async def check(principal: ConsoleUser, runtime: RuntimeDep, request: Request) -> Principal:
        ensure_role(runtime, principal, role, request.url.path)
        return principal

    return check


async def configuration_reader(
    principal: ConsoleUser, runtime: RuntimeDep, request: Request
) -> Principal:
    """Viewers and admins read the tenant's configuration in the console; a member's console
    is their own account (profile, sessions, export, deletion)."""
    ensure_role(runtime, principal, Role.VIEWER, request.url.path)
    if principal.role is Role.MEMBER:
        runtime.audit.submit(
            tenant_id=principal.tenant_id,
            action="auth.forbidden",
            actor=principal.actor,
            outcome="denied",
            details={"code": "insufficient_role", "required": "viewer", "path": request.url.path},
        )
        raise Forbidden(
            "Members see their own account in the console; configuration is for viewers "
            "and admins.",
            code="insufficient_role",
        )
    return principal


Viewer = Annotated[Principal, Depends(console_role(Role.VIEWER))]
Reader = Annotated[Principal, Depends(configuration_reader)]
Member = Annotated[Principal, Depends(console_role(Role.MEMBER))]
Admin = Annotated[Principal, Depends(console_role(Role.ADMIN))]
Owner = Annotated[Principal, Depends(console_role(Role.OWNER))]


def error_page(request: Request, exc: AppError) -> Response:
    """A refusal as a page (status and message of the API's error)."""
    return page(
        request,
        "error.html",
        {"status": exc.status_code, "code": exc.code, "message": exc.message},
        status_code=exc.status_code,
    )


class ConsoleRoute(APIRoute):
    """Console routes answer with pages: a missing or expired session goes to sign-in, any
    other refusal renders the error page with the API's status and message."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def guarded(request: Request) -> Response:
            # A GET form sends its blank fields too: drop them, so a blank filter means none.
            query = request.query_params
            if request.method == "GET" and any(v == "" for _k, v in query.multi_items()):
                kept = urlencode([(k, v) for k, v in query.multi_items() if v != ""])
                return RedirectResponse(
                    request.url.path + (f"?{kept}" if kept else ""),
                    status_code=303,
                    headers={"Referrer-Policy": "same-origin", "Cache-Control": "no-store"},
                )
            try:
                return await handler(request)
            except Unauthenticated:
                target = request.url.path if request.method == "GET" else PREFIX
                return RedirectResponse(
                    f"{PREFIX}/sign-in?next={quote(target, safe='/')}",
                    status_code=303,
                    headers={"Referrer-Policy": "same-origin", "Cache-Control": "no-store"},
                )
            except AppError as exc:
                response = error_page(request, exc)
                response.headers.update(exc.headers)
                return response
            except RequestValidationError as exc:
                problems = "; ".join(
                    f"{'.'.join(str(p) for p in e.get('loc', ())[1:])}: {e.get('msg')}"
                    for e in exc.errors()[:5]
                )
                return error_page(request, Unprocessable(f"Invalid input: {problems}"))

        return guarded
