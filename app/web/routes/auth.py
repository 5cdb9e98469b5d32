"""Routes of the auth domain and Warden's issuer metadata."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Response, status

from app.auth import service
from app.auth.schemas import (
    LogoutRequest,
    MeResponse,
    RefreshRequest,
    RegisterRequest,
    RegisterResponse,
    TokenResponse,
)
from app.tenants.schemas import TenantPublic
from app.users.schemas import LoginRequest, UserPublic
from app.web.deps import CurrentPrincipal, DbSession, LoginAttempt, RuntimeDep, TenantSession

router = APIRouter(prefix="/auth", tags=["auth"])
well_known = APIRouter(tags=["issuer"])


@router.post(
    "/register",
    status_code=status.HTTP_201_CREATED,
    response_model=RegisterResponse,
    dependencies=[LoginAttempt],
)
async def register(
    body: RegisterRequest, session: DbSession, runtime: RuntimeDep
) -> RegisterResponse:
    """Self-service sign-up: creates the tenant and its owner."""
    tenant, user = await service.register(session, runtime.settings, body)
    return RegisterResponse(
        tenant=TenantPublic.model_validate(tenant), user=UserPublic.model_validate(user)
    )


@router.post("/login", response_model=TokenResponse, dependencies=[LoginAttempt])
async def login(body: LoginRequest, session: DbSession, runtime: RuntimeDep) -> TokenResponse:
    """Exchange email + password for an access token and a refresh token."""
    return await service.login(
        session, runtime.tokens, runtime.limiter, runtime.audit, runtime.settings, body
    )


@router.post("/refresh", response_model=TokenResponse)
async def refresh(body: RefreshRequest, session: DbSession, runtime: RuntimeDep) -> TokenResponse:
    """Rotate a refresh token (a reused one revokes its whole family)."""
    return await service.refresh(
        session, runtime.tokens, runtime.audit, runtime.settings, body.refresh_token
    )


@router.post("/logout", status_code=status.HTTP_204_NO_CONTENT)
async def logout(
    body: LogoutRequest, principal: CurrentPrincipal, session: TenantSession, runtime: RuntimeDep
) -> Response:
    """End the session: the refresh family dies and this access token is refused from now on."""
    await service.logout(session, runtime.revocations, principal, body.refresh_token)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get("/me", response_model=MeResponse)
async def me(principal: CurrentPrincipal) -> MeResponse:
    """The caller."""
    return MeResponse(
        id=principal.id,
        kind=principal.kind,
        email=principal.email,
        role=principal.role,
        tenant=principal.tenant_slug,
        tenant_id=principal.tenant_id,
        scopes=sorted(principal.scopes),
    )


@well_known.get("/.well-known/jwks.json")
async def jwks(runtime: RuntimeDep, response: Response) -> dict[str, Any]:
    """Warden's public signing keys (current and recently retired)."""
    response.headers["Cache-Control"] = "public, max-age=300"
    return runtime.signing_keys.jwks()


@well_known.get("/.well-known/openid-configuration")
async def openid_configuration(runtime: RuntimeDep, response: Response) -> dict[str, Any]:
    """Issuer metadata so gateways and Istio can validate Warden tokens themselves."""
    response.headers["Cache-Control"] = "public, max-age=300"
    issuer = runtime.settings.issuer
    return {
        "issuer": issuer,
        "jwks_uri": f"{issuer}/.well-known/jwks.json",
        "token_endpoint": f"{issuer}/api/v1/auth/login",
        "id_token_signing_alg_values_supported": ["ES256"],
        "token_endpoint_auth_methods_supported": ["none"],
        "response_types_supported": ["token"],
        "subject_types_supported": ["public"],
        "claims_supported": [
            "sub",
            "email",
            "tenant",
            "tid",
            "role",
            "iss",
            "aud",
            "iat",
            "nbf",
            "exp",
            "jti",
        ],
    }
