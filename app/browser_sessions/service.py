"""Browser sessions (BFF): login, cookie authentication with CSRF defence, listing, revocation,
and the east-west exchange of a session for an access token."""

from __future__ import annotations

import hmac
import re
import secrets
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy.ext.asyncio import AsyncSession

from app.audit.service import AuditWriter, record
from app.browser_sessions.schemas import ExchangeResponse, SessionCreate, SessionPublic
from app.core.config import Settings
from app.core.context import current_request
from app.core.db import set_session_tenant
from app.core.emails import normalize_email
from app.core.errors import Forbidden, NotFound, Unauthenticated
from app.core.identity import ANONYMOUS, Actor, Principal, Role
from app.core.pagination import PageParams, paginate
from app.core.ratelimit import AsyncLimiter
from app.core.types import utcnow
from app.credentials import browser_repository as repository
from app.credentials.browser import SessionRecord, SessionStore, hash_secret
from app.credentials.models import BrowserSession
from app.credentials.revocation import RevocationStore
from app.credentials.tokens import LocalTokens
from app.tenants import service as tenants
from app.tenants.models import Tenant
from app.tenants.service import get_tenant
from app.users import service as users
from app.users.models import User

SESSION_COOKIE = "session_id"
CSRF_COOKIE = "csrf_token"
CSRF_HEADER = "x-csrf-token"
EXCHANGE_SCOPE = "sessions:exchange"
UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
MAX_SECRET_LENGTH = 256
_DEFAULT_PORTS = {"http": 80, "https": 443}
_FINGERPRINT = re.compile(r"\A[0-9a-f]{64}\Z")


@dataclass(frozen=True)
class BrowserSessions:
    """What browser sessions use: the session store, revocations, Warden's tokens (for the
    exchange), the limiter and audit writer (for sign-in), and the settings."""

    store: SessionStore
    revocations: RevocationStore
    tokens: LocalTokens
    limiter: AsyncLimiter
    audit: AuditWriter
    settings: Settings


@dataclass(frozen=True)
class NewSession:
    """A session just created, with the secrets that are shown once (as cookies)."""

    row: BrowserSession
    cookie: str
    csrf_token: str
    max_age: int


# --- origins -------------------------------------------------------------------------------


def origin_of(url: str) -> str | None:
    """`scheme://host[:port]` of a URL, lower-cased, default port dropped; None if not http(s)."""
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS or not parts.hostname:
        return None
    host = parts.hostname.lower()
    if ":" in host:
        host = f"[{host}]"
    if port is not None and port != _DEFAULT_PORTS[scheme]:
        host = f"{host}:{port}"
    return f"{scheme}://{host}"


def allowed_origins(settings: Settings) -> frozenset[str]:
    """The CORS allow-list plus Warden's own public origin."""
    found = {origin_of(value) for value in [*settings.cors_origins, settings.public_url]}
    return frozenset(origin for origin in found if origin is not None)


def request_origin(headers: Mapping[str, str]) -> str | None:
    """The origin a browser request came from: `Origin`, or `Referer` when there is no Origin.

    An opaque `Origin: null` (sandboxed frames, some redirects) is no origin at all."""
    origin = headers.get("origin")
    if origin is not None:
        return None if origin.strip() == "null" else origin_of(origin)
    referer = headers.get("referer")
    return origin_of(referer) if referer else None


# --- login ----------------------------------------------------------------------------------


async def create_session(
    session: AsyncSession, ctx: BrowserSessions, data: SessionCreate, origin_header: str | None
) -> NewSession:
    """Log a browser in: the password check of `/auth/login`, then a new session row.

    A browser posting from a foreign origin is refused (login CSRF); non-browser clients send no
    Origin. The cookie value is always new: a value the client already holds is never adopted."""
    if origin_header is not None:
        origin = request_origin({"origin": origin_header})
        if origin is None or origin not in allowed_origins(ctx.settings):
            ctx.audit.submit(
                tenant_id=None,
                action="auth.csrf_failed",
                actor=Actor("anonymous", None, _email_for_audit(data.email)),
                outcome="failure",
                details={"reason": "origin", "route": "session.create"},
            )
            raise Forbidden("Login from this origin is not allowed.", code="csrf_failed")
    tenant, user, rehashed = await users.verify_login(
        session, ctx.limiter, ctx.audit, ctx.settings, data
    )
    return await open_session(session, ctx, tenant, user, {"rehashed": rehashed})


async def open_session(
    session: AsyncSession,
    ctx: BrowserSessions,
    tenant: Tenant,
    user: User,
    details: dict[str, Any],
) -> NewSession:
    """A new browser session for a user who just proved who they are (by password or through
    an identity provider), audited as `session.created` in the same transaction."""
    _idle, absolute = tenants.session_timeouts(ctx.settings, tenant)
    cookie = secrets.token_urlsafe(32)
    csrf_token = secrets.token_urlsafe(32)
    request = current_request()
    row = BrowserSession(
        tenant_id=tenant.id,
        user_id=user.id,
        token_hash=hash_secret(cookie),
        csrf_hash=hash_secret(csrf_token),
        expires_at=utcnow() + timedelta(seconds=absolute),
        user_agent=request.user_agent[:512] if request.user_agent else None,
        ip=request.ip[:64] if request.ip else None,
    )
    session.add(row)
    await session.flush()
    await record(
        session,
        tenant_id=tenant.id,
        action="session.created",
        actor=Actor("user", str(user.id), user.email),
        target_type="session",
        target_id=str(row.id),
        details=details,
    )
    return NewSession(row=row, cookie=cookie, csrf_token=csrf_token, max_age=absolute)


def _email_for_audit(raw: str) -> str:
    try:
        return normalize_email(raw)
    except ValueError:
        return raw.strip().lower()[:254]


# --- cookie authentication ------------------------------------------------------------------


def _principal(record: SessionRecord) -> Principal:
    return Principal(
        kind="user",
        id=str(record.user_id),
        tenant_id=record.tenant_id,
        tenant_slug=record.tenant_slug,
        role=Role(record.role),
        email=record.email,
        claims={
            "sub": str(record.user_id),
            "email": record.email,
            "tenant": record.tenant_slug,
            "tid": str(record.tenant_id),
            "role": record.role,
            "ver": record.version,
            "sid": str(record.id),
        },
        expires_at=int(record.expires_at),
        session_id=str(record.id),
    )


async def _live_record(
    ctx: BrowserSessions, cookie: str, now: float
) -> tuple[str, SessionRecord | None, str | None]:
    """(token hash, record, problem): problem is None only for a usable session."""
    if not cookie or len(cookie) > MAX_SECRET_LENGTH:
        return "", None, "malformed"
    token_hash = hash_secret(cookie)
    found = await ctx.store.lookup(token_hash)
    if found is None:
        return token_hash, None, "unknown"
    problem = found.problem(now)
    if problem is None and await ctx.revocations.is_revoked(
        jti=None, user_id=str(found.user_id), tenant_id=str(found.tenant_id), version=found.version
    ):
        problem = "revoked"
    return token_hash, found, problem


def _session_refused(problem: str) -> Unauthenticated:
    if problem in ("expired", "idle"):
        return Unauthenticated("The session has expired; log in again.", code="session_expired")
    return Unauthenticated("Invalid or revoked session.", code="invalid_session")


def check_csrf(
    ctx: BrowserSessions, found: SessionRecord, method: str, headers: Mapping[str, str]
) -> None:
    """State-changing cookie requests need the session's CSRF token and an allowed origin."""
    if method.upper() not in UNSAFE_METHODS:
        return
    token = headers.get(CSRF_HEADER, "")
    origin = request_origin(headers)
    reason = None
    # Hashes of equal length compared in constant time: the token's value leaks nothing.
    if not token or len(token) > MAX_SECRET_LENGTH:
        reason = "missing_token"
    elif not hmac.compare_digest(hash_secret(token), found.csrf_hash):
        reason = "wrong_token"
    elif origin is None or origin not in allowed_origins(ctx.settings):
        reason = "origin"
    if reason is None:
        return
    ctx.audit.submit(
        tenant_id=found.tenant_id,
        action="auth.csrf_failed",
        actor=Actor("user", str(found.user_id), found.email),
        outcome="failure",
        target_type="session",
        target_id=str(found.id),
        details={"reason": reason, "origin": origin, "method": method.upper()},
    )
    raise Forbidden(
        "Cross-site request refused: send X-CSRF-Token from an allowed origin.", code="csrf_failed"
    )


async def authenticate_cookie(
    ctx: BrowserSessions, cookie: str, method: str, headers: Mapping[str, str]
) -> Principal:
    """The user behind a `session_id` cookie; state-changing methods pass the CSRF check."""
    now = time.time()
    token_hash, found, problem = await _live_record(ctx, cookie, now)
    if problem is not None or found is None:
        ctx.audit.submit(
            tenant_id=found.tenant_id if found else None,
            action="auth.session_rejected",
            actor=Actor("user", str(found.user_id), found.email) if found else ANONYMOUS,
            outcome="failure",
            target_type="session" if found else None,
            target_id=str(found.id) if found else None,
            details={"reason": problem},
        )
        raise _session_refused(problem or "unknown")
    check_csrf(ctx, found, method, headers)
    await ctx.store.touch(token_hash, found, now)
    return _principal(found)


# --- the caller's sessions ------------------------------------------------------------------


async def list_sessions(
    session: AsyncSession, ctx: BrowserSessions, principal: Principal, params: PageParams
) -> tuple[list[SessionPublic], str | None]:
    """A page of the caller's live sessions, the current one marked."""
    if principal.user_id is None:
        return [], None
    tenant = await get_tenant(session, principal.tenant_id)
    idle, _absolute = tenants.session_timeouts(ctx.settings, tenant)
    stmt = repository.live_for_user(principal.user_id, utcnow(), idle)
    rows, cursor = await paginate(session, stmt, BrowserSession, params)
    items = [
        SessionPublic.model_validate(row).model_copy(
            update={"current": str(row.id) == principal.session_id}
        )
        for row in rows
    ]
    return items, cursor


async def revoke_session(
    session: AsyncSession, ctx: BrowserSessions, principal: Principal, session_id: uuid.UUID
) -> None:
    """Revoke one of the caller's own sessions; anyone else's is a 404."""
    row = await repository.get(session, session_id)
    if row is None or principal.user_id is None or row.user_id != principal.user_id:
        raise NotFound("Session not found.", code="session_not_found")
    if row.revoked_at is not None:
        return
    await ctx.store.revoke(session, [row])
    await record(
        session,
        tenant_id=principal.tenant_id,
        action="session.revoked",
        actor=principal.actor,
        target_type="session",
        target_id=str(row.id),
        details={"current": str(row.id) == principal.session_id},
    )


async def revoke_current(session: AsyncSession, ctx: BrowserSessions, principal: Principal) -> None:
    """Log out: revoke the session that authenticated this request."""
    if principal.session_id is None:
        raise NotFound(
            "This request was not made with a browser session.", code="no_current_session"
        )
    await revoke_session(session, ctx, principal, uuid.UUID(principal.session_id))


# --- east-west exchange ---------------------------------------------------------------------


def normalise_fingerprint(value: str) -> str | None:
    """A SHA-256 certificate fingerprint as 64 lower-case hex digits (colons and quotes dropped)."""
    text = value.strip().strip('"').replace(":", "").lower()
    return text if _FINGERPRINT.match(text) else None


def _split_unquoted(text: str, separator: str) -> list[str]:
    parts: list[str] = []
    current: list[str] = []
    quoted = escaped = False
    for char in text:
        if escaped:
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == '"':
            quoted = not quoted
        elif char == separator and not quoted:
            parts.append("".join(current))
            current = []
            continue
        current.append(char)
    parts.append("".join(current))
    return parts


def client_cert_fingerprint(header: str | None) -> str | None:
    """The client certificate's SHA-256 from a mesh header: a bare fingerprint, or Envoy's
    `x-forwarded-client-cert` (`By=…;Hash=…;Subject="…"`). With several elements (one per
    hop) the last one counts: it is the one our own sidecar appended for its direct peer."""
    if not header or len(header) > 8192:
        return None
    bare = normalise_fingerprint(header)
    if bare is not None:
        return bare
    element = _split_unquoted(header, ",")[-1]
    for pair in _split_unquoted(element, ";"):
        key, _, value = pair.partition("=")
        if key.strip().lower() == "hash":
            return normalise_fingerprint(value)
    return None


def _exchange_failed(
    ctx: BrowserSessions, actor: Actor, tenant_id: uuid.UUID | None, reason: str
) -> None:
    ctx.audit.submit(
        tenant_id=tenant_id,
        action="session.exchanged",
        actor=actor,
        outcome="failure",
        details={"reason": reason},
    )


def check_client_certificate(ctx: BrowserSessions, headers: Mapping[str, str]) -> None:
    """When fingerprints are configured, the mesh must vouch for one of them (else 403)."""
    settings = ctx.settings
    if not settings.internal_client_cert_fingerprints:
        return
    allowed = {normalise_fingerprint(f) for f in settings.internal_client_cert_fingerprints}
    presented = client_cert_fingerprint(headers.get(settings.internal_client_cert_header))
    if presented is None or presented not in allowed:
        _exchange_failed(ctx, ANONYMOUS, None, "client_certificate")
        raise Forbidden(
            "This client certificate may not exchange sessions.",
            code="client_certificate_refused",
        )


def service_key_refused(ctx: BrowserSessions, reason: str) -> None:
    """Audit an exchange attempt refused before any API key was accepted."""
    _exchange_failed(ctx, ANONYMOUS, None, reason)


def require_exchange_scope(ctx: BrowserSessions, caller: Principal) -> None:
    """Only API keys holding `sessions:exchange` may exchange sessions."""
    if caller.kind != "api_key" or EXCHANGE_SCOPE not in caller.scopes:
        _exchange_failed(ctx, caller.actor, caller.tenant_id, "insufficient_scope")
        raise Forbidden(
            f"This API key lacks the {EXCHANGE_SCOPE} scope.", code="insufficient_scope"
        )


async def exchange(
    session: AsyncSession, ctx: BrowserSessions, caller: Principal, cookie: str
) -> ExchangeResponse:
    """A live session of the caller's tenant → a short-lived access token for its user.

    The token never outlives the session's absolute expiry; it carries the session id (`sid`)."""
    now = time.time()
    token_hash, found, problem = await _live_record(ctx, cookie, now)
    # A service key of another tenant learns nothing about this tenant's sessions.
    if found is not None and found.tenant_id != caller.tenant_id:
        found, problem = None, "unknown"
    user = None
    if problem is None and found is not None:
        set_session_tenant(session, caller.tenant_id)
        user = await session.get(User, found.user_id)
        if user is None or not user.is_active or user.token_version != found.version:
            problem = "revoked"
    if problem is not None or found is None or user is None:
        _exchange_failed(ctx, caller.actor, caller.tenant_id, problem or "unknown")
        raise _session_refused(problem or "unknown")
    tenant = await get_tenant(session, caller.tenant_id)
    # The token never outlives the session it was exchanged for.
    ttl = max(1, min(tenants.access_ttl(ctx.settings, tenant), int(found.expires_at - now)))
    access_token, _expires_in, claims = users.access_token_for(
        ctx.tokens, ctx.settings, tenant, user, ttl=ttl, extra={"sid": str(found.id)}
    )
    # An exchange is the user's activity reaching an internal service through the BFF.
    await ctx.store.touch(token_hash, found, now)
    ctx.audit.submit(
        tenant_id=tenant.id,
        action="session.exchanged",
        actor=caller.actor,
        outcome="success",
        target_type="session",
        target_id=str(found.id),
        details={"user_id": str(user.id)},
    )
    return ExchangeResponse(access_token=access_token, claims=claims)
