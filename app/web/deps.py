"""Request dependencies: the state, the transaction, the caller (through the one
authenticator), role checks."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Annotated, Any

import structlog
from fastapi import Depends, Request
from sqlalchemy.ext.asyncio import AsyncSession

from app.core.context import current_request
from app.core.db import run_post_commit, set_session_tenant
from app.core.errors import AppError, Forbidden, RateLimited
from app.core.identity import ANONYMOUS, Principal, Role
from app.core.ratelimit import parse_limit
from app.web.state import Runtime


async def get_runtime(request: Request) -> Runtime:
    """The process runtime built in the lifespan."""
    runtime: Runtime = request.app.state.runtime
    return runtime


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]


async def db_session(runtime: RuntimeDep) -> AsyncIterator[AsyncSession]:
    """One transaction per request: commit when the route returns, roll back when it raises."""
    async with runtime.sessionmaker() as session:
        try:
            yield session
            await session.commit()
            await run_post_commit(session)
        except AppError as exc:
            await end_refused(session, exc)
            raise
        except BaseException:
            await session.rollback()
            raise


async def end_refused(session: AsyncSession, exc: AppError) -> None:
    """End a refused request's transaction: roll it back, or keep the refusal's side effects
    when it asks to (`AppError.commit_changes`: a spent sign-in state, a counted failure). A
    route that answers a refusal itself (a page, a redirect) ends its transaction with this."""
    if exc.commit_changes:
        await session.commit()
    else:
        await session.rollback()


DbSession = Annotated[AsyncSession, Depends(db_session, scope="function")]


async def current_principal(request: Request, runtime: RuntimeDep) -> Principal:
    """The authenticated caller."""
    principal = await runtime.authenticator.authenticate(request)
    structlog.contextvars.bind_contextvars(
        tenant=principal.tenant_slug, principal=f"{principal.kind}:{principal.id}"
    )
    return principal


CurrentPrincipal = Annotated[Principal, Depends(current_principal)]


async def tenant_session(principal: CurrentPrincipal, session: DbSession) -> AsyncSession:
    """The request's transaction, scoped to the caller's tenant."""
    set_session_tenant(session, principal.tenant_id)
    return session


TenantSession = Annotated[AsyncSession, Depends(tenant_session)]


def ensure_role(runtime: Runtime, principal: Principal, role: Role, path: str) -> None:
    """Refuse (403, audited) a caller that does not hold `role` or a higher one; API keys
    never pass a role check (they call only the routes their scopes name)."""
    refusal = None
    if principal.kind == "api_key":
        refusal = Forbidden(
            "API keys may only call the routes their scopes name.", code="insufficient_scope"
        )
    elif not principal.role.at_least(role):
        refusal = Forbidden(f"This requires the {role.value} role.", code="insufficient_role")
    if refusal is not None:
        # Authorisation failures are security events (PRODUCT.md, Audit).
        runtime.audit.submit(
            tenant_id=principal.tenant_id,
            action="auth.forbidden",
            actor=principal.actor,
            outcome="denied",
            details={"code": refusal.code, "required": role.value, "path": path},
        )
        raise refusal


def require_role(role: Role) -> Callable[..., Coroutine[Any, Any, Principal]]:
    """A dependency that admits callers holding `role` or a higher one."""

    async def check(
        principal: CurrentPrincipal, runtime: RuntimeDep, request: Request
    ) -> Principal:
        ensure_role(runtime, principal, role, request.url.path)
        return principal

    return check


ViewerPrincipal = Annotated[Principal, Depends(require_role(Role.VIEWER))]
MemberPrincipal = Annotated[Principal, Depends(require_role(Role.MEMBER))]
AdminPrincipal = Annotated[Principal, Depends(require_role(Role.ADMIN))]
OwnerPrincipal = Annotated[Principal, Depends(require_role(Role.OWNER))]


async def limit_login_attempts(runtime: RuntimeDep) -> None:
    """The per-IP limit on login, registration and browser sign-in (`LOGIN_RATE_LIMIT`),
    counted in the process's limit store (Redis when configured: shared by every process)."""
    ip = current_request().ip or "unknown"
    state = await runtime.limiter.hit(
        parse_limit(runtime.settings.login_rate_limit), "login-ip", ip
    )
    if not state.allowed:
        runtime.audit.submit(
            tenant_id=None,
            action="auth.login",
            actor=ANONYMOUS,
            outcome="rate_limited",
            details={"scope": "ip"},
        )
        raise RateLimited("Too many requests from this address.", headers=state.headers())


LoginAttempt = Depends(limit_login_attempts)
