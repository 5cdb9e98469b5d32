"""Issuing and verifying Warden's own access tokens, and the cache of verified tokens."""

from __future__ import annotations

import time
import uuid
from collections import OrderedDict
from typing import Any

from app.core import jose
from app.core.config import Settings
from app.core.identity import Principal, Role
from app.credentials.signing import SigningKeyring

_CACHE_MAX = 10_000


class LocalTokens:
    """Issues and verifies Warden's own access tokens with the process's signing keys."""

    def __init__(self, signing: SigningKeyring, settings: Settings) -> None:
        self.signing = signing
        self.issuer = settings.issuer
        self.audience = settings.jwt_audience
        self.leeway = settings.jwt_leeway_seconds
        self.default_ttl = settings.access_token_ttl_seconds

    def issue(
        self,
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
        lifetime = ttl or self.default_ttl
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "aud": self.audience,
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
        return self.signing.sign(claims), lifetime, claims

    async def verify(self, parsed: jose.ParsedToken) -> Principal:
        """Verify a token Warden issued (signature against the kid's key, all claims)."""
        key = await self.signing.resolve(parsed.header.get("kid"))
        claims = jose.verify(
            parsed, key, issuer=self.issuer, audiences=[self.audience], leeway=self.leeway
        )
        if not isinstance(claims.get("ver"), int) or not isinstance(claims.get("jti"), str):
            raise jose.TokenError("token claims malformed")
        return principal_from_local_claims(claims)


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
