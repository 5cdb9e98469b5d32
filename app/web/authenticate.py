"""The one authenticator: a request's credentials → one principal, for every entry point.

Credential dispatch is written here once: `Authorization: Bearer` (a JWT: Warden's own or a
trusted issuer's; or a `wk_` API key), `X-API-Key`, or a cookie; never two at once. Modes say
what an entry point accepts:

- `PUBLIC` (the API): any of them; with neither header, the browser's `session_id` cookie,
  CSRF-checked. `X-Tenant` names the tenant when several trust a satellite token's issuer.
- `GATEWAY` (`/authz/forward`): the gateway's forward cookie holds a bearer token; the binding's
  tenant, never a client's `X-Tenant`, picks among tenants trusting one issuer.
- `INTERNAL` (the east-west exchange): service API keys only (scope `sessions:exchange`, and a
  client certificate vouched for by the mesh when configured); browser credentials are never
  looked at.

Every refusal is one 401 (or 403/503) with a stable code, and is audited.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from enum import Enum
from typing import NamedTuple

from starlette.requests import Request

from app.apikeys.cache import ApiKeyCache
from app.apikeys.service import KEY_PREFIX, expired, hash_key
from app.audit.service import AuditWriter
from app.browser_sessions.service import CSRF_HEADER, SESSION_COOKIE
from app.core import jose
from app.core.config import Settings
from app.core.context import current_request
from app.core.errors import AppError, ServiceUnavailable, Unauthenticated
from app.core.identity import ANONYMOUS, Actor, Principal, Role
from app.credentials.revocation import RevocationStore
from app.credentials.tokens import VerifiedTokenCache
from app.issuers.satellite import (
    AmbiguousTenant,
    InvalidClaims,
    IssuerUnavailable,
    SatelliteVerifier,
)

MAX_API_KEY_LENGTH = 128


class Mode(Enum):
    """What an entry point accepts (see the module docstring)."""

    PUBLIC = "public"
    GATEWAY = "gateway"
    INTERNAL = "internal"


class Presented(NamedTuple):
    """The credential a request carries: which header it came in and its value (a tuple: one
    is made per request)."""

    source: str  # bearer | x-api-key | cookie
    value: str

    @property
    def is_api_key(self) -> bool:
        """API keys come in `X-API-Key` or as a `wk_` bearer token."""
        return self.source == "x-api-key" or self.value.startswith(KEY_PREFIX)


class CredentialHeaders(NamedTuple):
    """The headers the authenticator reads, found in one pass over the request's raw headers
    (the first of a repeated header counts, as `Request.headers.get` reads it)."""

    authorization: str | None
    api_key: str | None
    tenant: str | None

    @classmethod
    def of(cls, request: Request) -> CredentialHeaders:
        found: list[str | None] = [None, None, None]
        for name, value in request.scope["headers"]:
            slot = _CREDENTIAL_SLOTS.get(name)
            if slot is not None and found[slot] is None:
                found[slot] = value.decode("latin-1")
        return cls(*found)


_CREDENTIAL_SLOTS = {b"authorization": 0, b"x-api-key": 1, b"x-tenant": 2}


def bearer_token(header: str | None) -> str | None:
    """The token of an `Authorization: Bearer …` header, if any (401 when malformed)."""
    if not header:
        return None
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        raise Unauthenticated("Malformed Authorization header.")
    return value.strip()


def presented_credential(
    request: Request, cookie: str | None, headers: CredentialHeaders | None = None
) -> Presented | None:
    """The one credential of a request; `cookie` names the cookie to fall back on."""
    found = headers or CredentialHeaders.of(request)
    token = bearer_token(found.authorization)
    api_key = found.api_key
    if token is not None and api_key is not None:
        raise Unauthenticated("Send one credential, not two.", code="ambiguous_credentials")
    if api_key is not None:
        return Presented("x-api-key", api_key.strip())
    if token is not None:
        return Presented("bearer", token)
    if cookie is not None:
        value = request.cookies.get(cookie, "").strip()
        if value:
            return Presented("cookie", value)
    return None


# Verifies a token Warden issued (signature against its kid's key, every claim).
VerifyLocal = Callable[[jose.ParsedToken], Awaitable[Principal]]
# The user behind a browser's session cookie (method and headers for the CSRF check).
CookieAuth = Callable[[str, str, Mapping[str, str]], Awaitable[Principal]]


@dataclass(frozen=True)
class ExchangeGuard:
    """The east-west exchange's own rules for its callers (they audit their refusals)."""

    check_client_certificate: Callable[[Mapping[str, str]], None]
    refused: Callable[[str], None]
    require_scope: Callable[[Principal], None]


class Authenticator:
    """Turns requests into principals; one per process, built with the web state."""

    def __init__(
        self,
        *,
        settings: Settings,
        audit: AuditWriter,
        apikeys: ApiKeyCache,
        satellites: SatelliteVerifier,
        revocations: RevocationStore,
        verify_local: VerifyLocal,
        cookie: CookieAuth,
        exchange: ExchangeGuard,
    ) -> None:
        self.settings = settings
        self.audit = audit
        self.apikeys = apikeys
        self.satellites = satellites
        self.revocations = revocations
        self.verify_local = verify_local
        self.cookie = cookie
        self.exchange = exchange
        # Verified local tokens of this process (revocation is still checked per request).
        self.verified = VerifiedTokenCache()

    async def authenticate(
        self,
        request: Request,
        mode: Mode = Mode.PUBLIC,
        tenant_hint: str | None = None,
        csrf_token: str | None = None,
    ) -> Principal:
        """The principal behind a request's credential, as `mode` allows.

        `csrf_token` is the CSRF token an HTML form carries in its body (a form cannot set
        `X-CSRF-Token`); it is checked exactly as the header would be."""
        if mode is Mode.INTERNAL:
            return await self._service_principal(request)
        cookie = self.settings.forward_auth_cookie if mode is Mode.GATEWAY else SESSION_COOKIE
        found = CredentialHeaders.of(request)
        presented = presented_credential(request, cookie, found)
        if presented is None:
            raise Unauthenticated()
        if presented.is_api_key:
            return await self.api_key(presented.value)
        if presented.source == "cookie" and mode is Mode.PUBLIC:
            headers: Mapping[str, str] = request.headers
            if csrf_token is not None:
                headers = {**request.headers, CSRF_HEADER: csrf_token}
            return await self.cookie(presented.value, request.method, headers)
        hint = tenant_hint if mode is Mode.GATEWAY else found.tenant
        return await self.token(presented.value, hint)

    async def token(self, token: str, tenant_hint: str | None = None) -> Principal:
        """A bearer JWT → a principal: Warden's own, or a trusted issuer's (satellite).

        Every failure is one 401; an issuer whose keys cannot be had is a 503 (fail closed)."""
        try:
            # Warm path: a local token verified before is neither parsed nor verified again.
            principal = self.verified.get(token)
            if principal is None:
                parsed = jose.parse(token)
                if parsed.claims.get("iss") == self.settings.issuer:
                    principal = await self.verify_local(parsed)
                    self.verified.put(token, principal)
                else:
                    principal = await self.satellites.authenticate(parsed, tenant_hint)
        except jose.TokenError as exc:
            self.audit.submit(
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
        if await self.revocations.is_revoked(
            jti=principal.jti,
            user_id=principal.id if principal.kind == "user" else None,
            tenant_id=principal.tenant_text,
            # Only Warden's own tokens carry a token version; a satellite's `ver` means nothing.
            version=int(principal.claims.get("ver", 0)) if principal.kind == "user" else 0,
        ):
            raise Unauthenticated("Token has been revoked.", code="token_revoked")
        return principal

    async def api_key(self, key: str) -> Principal:
        """An API key → its principal (cached per process; revocation reaches every process)."""
        if not key.startswith(KEY_PREFIX) or len(key) > MAX_API_KEY_LENGTH:
            raise Unauthenticated("Invalid API key.", code="invalid_api_key")
        resolved = await self.apikeys.get(hash_key(key), key, current_request().ip)
        problem = None
        if resolved is None:
            problem = "unknown"
        elif resolved.revoked:
            problem = "revoked"
        elif expired(resolved):
            problem = "expired"
        if problem is not None or resolved is None:
            self.audit.submit(
                tenant_id=resolved.tenant_id if resolved else None,
                action="auth.api_key_rejected",
                actor=Actor("api_key", str(resolved.id) if resolved else None),
                outcome="failure",
                details={"reason": problem},
            )
            raise Unauthenticated("Invalid, revoked or expired API key.", code="invalid_api_key")
        self.apikeys.touch(resolved.id)
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

    async def _service_principal(self, request: Request) -> Principal:
        """An API key holding `sessions:exchange` (and, when configured, a vouched client cert)."""
        self.exchange.check_client_certificate(request.headers)
        try:
            presented = presented_credential(request, cookie=None)
        except AppError:
            presented = None
        if presented is None or not presented.value.startswith(KEY_PREFIX):
            self.exchange.refused("no_service_key")
            raise Unauthenticated("A service API key is required.", code="service_key_required")
        try:
            caller = await self.api_key(presented.value)
        except Unauthenticated:
            self.exchange.refused("invalid_api_key")
            raise
        self.exchange.require_scope(caller)
        return caller
