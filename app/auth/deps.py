"""Request dependencies: the runtime, the transaction, the caller, role checks."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Annotated, Any

import structlog
from fastapi import Depends, Request
from sqlalchemy.ext.asyncio import AsyncSession

from app.apikeys.service import KEY_PREFIX, expired, hash_key
from app.audit.service import ANONYMOUS, Actor
from app.auth.principal import Principal, Role
from app.auth.tokens import VerifiedTokenCache, verify_local_token
from app.core import jose
from app.core.db import run_post_commit, set_session_tenant
from app.core.errors import AppError, Forbidden, ServiceUnavailable, Unauthenticated
from app.issuers.satellite import AmbiguousTenant, InvalidClaims, IssuerUnavailable
from app.runtime import Runtime
from app.sessions.service import SESSION_COOKIE, authenticate_cookie

log = structlog.get_logger("warden.auth")
_verified = VerifiedTokenCache()


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
            if exc.commit_changes:
                await session.commit()
            else:
                await session.rollback()
            raise
        except BaseException:
            await session.rollback()
            raise


DbSession = Annotated[AsyncSession, Depends(db_session, scope="function")]


def bearer_token(request: Request) -> str | None:
    """The token of an `Authorization: Bearer …` header, if any."""
    header = request.headers.get("authorization")
    if not header:
        return None
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        raise Unauthenticated("Malformed Authorization header.")
    return value.strip()


async def authenticate_token(
    runtime: Runtime, token: str, tenant_hint: str | None = None
) -> Principal:
    """Turn a bearer JWT into a principal: Warden's own, or a trusted issuer's (satellite).

    `tenant_hint` (`X-Tenant`) picks the tenant when several trust a satellite token's issuer.
    Every failure is one 401; an issuer whose keys cannot be had is a 503 (fail closed)."""
    try:
        # Warm path: a local token verified before is neither parsed nor verified again.
        cached = _verified.get(token)
        if cached is not None:
            principal = cached
        else:
            parsed = jose.parse(token)
            if parsed.claims.get("iss") == runtime.settings.issuer:
                principal = await verify_local_token(runtime, parsed, _verified)
            else:
                principal = await runtime.satellites.authenticate(parsed, tenant_hint)
    except jose.TokenError as exc:
        runtime.audit.submit(
            tenant_id=None,
            action="auth.token_rejected",
            actor=ANONYMOUS,
            outcome="failure",
            details={"reason": exc.reason},
        )
        if isinstance(exc, IssuerUnavailable):
            raise ServiceUnavailable(
                "The token's issuer cannot be reached; try again later.",
                code="issuer_unavailable",
                headers={"Retry-After": "10"},
            ) from exc
        if isinstance(exc, AmbiguousTenant):
            raise Unauthenticated(
                "Several tenants trust this token's issuer: name one with X-Tenant.",
                code="ambiguous_tenant",
            ) from exc
        if isinstance(exc, InvalidClaims):
            raise Unauthenticated(
                "The token's identity claims hold control characters.", code="invalid_claims"
            ) from exc
        raise Unauthenticated("Invalid or expired token.", code="invalid_token") from exc
    if await runtime.revocations.is_revoked(
        jti=principal.jti,
        user_id=principal.id if principal.kind == "user" else None,
        tenant_id=str(principal.tenant_id),
        # Only Warden's own tokens carry a token version; a satellite's `ver` means nothing here.
        version=int(principal.claims.get("ver", 0)) if principal.kind == "user" else 0,
    ):
        raise Unauthenticated("Token has been revoked.", code="token_revoked")
    return principal


async def authenticate_api_key(runtime: Runtime, key: str) -> Principal:
    """Resolve an API key (cached per process; revocation reaches every process at once)."""
    if not key.startswith(KEY_PREFIX) or len(key) > 128:
        raise Unauthenticated("Invalid API key.", code="invalid_api_key")
    key_hash = hash_key(key)
    resolved = await runtime.apikeys.get(key_hash, key)
    problem = None
    if resolved is None:
        problem = "unknown"
    elif resolved.revoked:
        problem = "revoked"
    elif expired(resolved):
        problem = "expired"
    if problem is not None or resolved is None:
        runtime.audit.submit(
            tenant_id=resolved.tenant_id if resolved else None,
            action="auth.api_key_rejected",
            actor=Actor("api_key", str(resolved.id) if resolved else None),
            outcome="failure",
            details={"reason": problem},
        )
        raise Unauthenticated("Invalid, revoked or expired API key.", code="invalid_api_key")
    runtime.touch_api_key(resolved.id)
    return Principal(
        kind="api_key",
        id=str(resolved.id),
        tenant_id=resolved.tenant_id,
        tenant_slug=resolved.tenant_slug,
        role=Role.VIEWER,
        scopes=resolved.scopes,
        claims={
            "sub": f"api_key:{resolved.id}",
            "tenant": resolved.tenant_slug,
            "scopes": sorted(resolved.scopes),
            "name": resolved.name,
        },
        expires_at=int(resolved.expires_at) if resolved.expires_at else None,
    )


async def authenticate_request(request: Request, runtime: Runtime) -> Principal:
    """Whatever credential the request carries: bearer JWT, `wk_` API key, `X-API-Key`, or
    (only when there is none of those) a browser `session_id` cookie, CSRF-checked."""
    token = bearer_token(request)
    api_key = request.headers.get("x-api-key")
    if token is not None and api_key is not None:
        raise Unauthenticated("Send one credential, not two.", code="ambiguous_credentials")
    if api_key is not None:
        return await authenticate_api_key(runtime, api_key.strip())
    if token is None:
        cookie = request.cookies.get(SESSION_COOKIE)
        if cookie is not None:
            return await authenticate_cookie(runtime, cookie, request.method, request.headers)
        raise Unauthenticated()
    if token.startswith(KEY_PREFIX):
        return await authenticate_api_key(runtime, token)
    return await authenticate_token(runtime, token, request.headers.get("x-tenant"))


async def current_principal(request: Request, runtime: RuntimeDep) -> Principal:
    """The authenticated caller."""
    principal = await authenticate_request(request, runtime)
    structlog.contextvars.bind_contextvars(
        tenant=principal.tenant_slug, principal=f"{principal.kind}:{principal.id}"
    )
    request.state.principal = principal
    return principal


CurrentPrincipal = Annotated[Principal, Depends(current_principal)]


async def tenant_session(principal: CurrentPrincipal, session: DbSession) -> AsyncSession:
    """The request's transaction, scoped to the caller's tenant."""
    set_session_tenant(session, principal.tenant_id)
    return session


TenantSession = Annotated[AsyncSession, Depends(tenant_session)]


def require_role(role: Role) -> Callable[..., Coroutine[Any, Any, Principal]]:
    """A dependency that admits callers holding `role` or a higher one."""

    async def check(
        principal: CurrentPrincipal, runtime: RuntimeDep, request: Request
    ) -> Principal:
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
                details={"code": refusal.code, "required": role.value, "path": request.url.path},
            )
            raise refusal
        return principal

    return check


ViewerPrincipal = Annotated[Principal, Depends(require_role(Role.VIEWER))]
MemberPrincipal = Annotated[Principal, Depends(require_role(Role.MEMBER))]
AdminPrincipal = Annotated[Principal, Depends(require_role(Role.ADMIN))]
OwnerPrincipal = Annotated[Principal, Depends(require_role(Role.OWNER))]
