"""Issuing and verifying Warden's own access tokens, and the cache of verified tokens."""

from __future__ import annotations

import time
import uuid
from collections import OrderedDict
from typing import TYPE_CHECKING, Any

from app.core import jose
from app.core.identity import Principal, Role
from app.tenants.models import Tenant
from app.users.models import User

if TYPE_CHECKING:
    from app.web.state import Runtime

_CACHE_MAX = 10_000


def issue_access_token(
    runtime: Runtime,
    *,
    user_id: uuid.UUID,
    email: str,
    tenant_id: uuid.UUID,
    tenant_slug: str,
    role: str,
    version: int,
    ttl: int | None = None,
    extra: dict[str, Any] | None = None,
) -> tuple[str, int, dict[str, Any]]:
    """Sign an access token; returns (token, expires_in, claims)."""
    settings = runtime.settings
    lifetime = ttl or settings.access_token_ttl_seconds
    now = int(time.time())
    claims: dict[str, Any] = {
        "iss": settings.issuer,
        "aud": settings.jwt_audience,
        "sub": str(user_id),
        "email": email,
        "tenant": tenant_slug,
        "tid": str(tenant_id),
        "role": role,
        "ver": version,
        "iat": now,
        "nbf": now,
        "exp": now + lifetime,
        "jti": uuid.uuid4().hex,
    }
    if extra:
        claims.update(extra)
    return runtime.keyring.sign(claims), lifetime, claims


def access_ttl_for(runtime: Runtime, tenant: Tenant) -> int:
    """The access-token lifetime of a tenant (its override, else the server's setting)."""
    override = tenant.settings.get("access_token_ttl_seconds")
    return int(override or runtime.settings.access_token_ttl_seconds)


def issue_user_access_token(
    runtime: Runtime,
    tenant: Tenant,
    user: User,
    *,
    ttl: int | None = None,
    extra: dict[str, Any] | None = None,
) -> tuple[str, int, dict[str, Any]]:
    """An access token for a local user (lifetime: `ttl`, else the tenant's)."""
    return issue_access_token(
        runtime,
        user_id=user.id,
        email=user.email,
        tenant_id=tenant.id,
        tenant_slug=tenant.slug,
        role=user.role,
        version=user.token_version,
        ttl=ttl or access_ttl_for(runtime, tenant),
        extra=extra,
    )


class VerifiedTokenCache:
    """Verified local tokens, kept until they expire (revocation is still checked per request)."""

    def __init__(self) -> None:
        self._entries: OrderedDict[str, Principal] = OrderedDict()

    def get(self, token: str) -> Principal | None:
        """A cached principal for a still-valid token."""
        principal = self._entries.get(token)
        if principal is None:
            return None
        if principal.expires_at is not None and principal.expires_at <= time.time():
            self._entries.pop(token, None)
            return None
        return principal

    def put(self, token: str, principal: Principal) -> None:
        """Remember a verified token."""
        self._entries[token] = principal
        if len(self._entries) > _CACHE_MAX:
            self._entries.popitem(last=False)


def principal_from_local_claims(claims: dict[str, Any]) -> Principal:
    """Build the principal of a verified local token (malformed claims are a TokenError)."""
    try:
        return Principal(
            kind="user",
            id=str(uuid.UUID(str(claims["sub"]))),
            tenant_id=uuid.UUID(str(claims["tid"])),
            tenant_slug=str(claims["tenant"]),
            role=Role(claims["role"]),
            email=str(claims["email"]),
            claims=claims,
            jti=str(claims["jti"]),
            expires_at=int(claims["exp"]),
        )
    except (KeyError, ValueError, TypeError) as exc:
        raise jose.TokenError("token claims malformed") from exc


async def verify_local_token(
    runtime: Runtime, parsed: jose.ParsedToken, cache: VerifiedTokenCache
) -> Principal:
    """Verify a token Warden issued (signature against the kid's key, all claims)."""
    cached = cache.get(parsed.raw)
    if cached is not None:
        return cached
    key = await runtime.keyring.resolve(parsed.header.get("kid"))
    claims = jose.verify(
        parsed,
        key,
        issuer=runtime.settings.issuer,
        audiences=[runtime.settings.jwt_audience],
        leeway=runtime.settings.jwt_leeway_seconds,
    )
    if not isinstance(claims.get("ver"), int) or not isinstance(claims.get("jti"), str):
        raise jose.TokenError("token claims malformed")
    principal = principal_from_local_claims(claims)
    cache.put(parsed.raw, principal)
    return principal
