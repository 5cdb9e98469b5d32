"""Signing a browser in through the tenant's OpenID provider (authorization code + PKCE) and
the IdP side of the east-west exchange (logout: `oidc_logout.py`).

The BFF is the provider's client: `state`, `nonce` and the PKCE verifier stay server-side
(single use, minutes), the code is exchanged server-side, the ID token is verified through
`app/core/jose.py` with the provider's keys from the shared JWKS cache, and the browser gets the
same session as a password login (`open_session`): an HttpOnly cookie and a CSRF token, never a
token. The provider's tokens are kept encrypted beside the session."""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, NamedTuple
from urllib.parse import quote, urlencode, urlsplit

import structlog
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.audit.service import record
from app.browser_sessions.schemas import ExchangeResponse, ProviderIdentity
from app.browser_sessions.service import (
    BrowserSessions,
    NewSession,
    allowed_origins,
    open_session,
    origin_of,
)
from app.core import jose
from app.core.db import set_session_tenant
from app.core.emails import normalize_email
from app.core.errors import AppError, Forbidden, NotFound, ServiceUnavailable, Unauthenticated
from app.core.hashing import sha256_hex
from app.core.identity import ANONYMOUS, Actor, Principal, Role
from app.core.types import utcnow
from app.identity_providers import repository as providers
from app.identity_providers import service as provider_service
from app.identity_providers.discovery import (
    ProviderUnavailable,
    TokenEndpointError,
    token_request,
)
from app.identity_providers.models import (
    IdentityLink,
    IdentityProvider,
    OidcLogin,
    OidcSession,
)
from app.identity_providers.service import ProviderRules
from app.tenants import service as tenants
from app.tenants.models import Tenant
from app.users import repository as users_repository
from app.users import service as users
from app.users.models import User

log = structlog.get_logger("warden.oidc")
LOGIN_TTL_SECONDS = 600
REFRESH_AHEAD_SECONDS = 60
IDP_TOKEN_SCOPE = "sessions:idp_token"  # noqa: S105 (a scope name)
MAX_PARAM = 2048
MAX_GROUPS = 100
_ERROR_CODE = re.compile(r"\A[a-z_]{1,64}\Z")
_ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
BINDING_COOKIE_PREFIX = "warden_oidc_"


@dataclass(frozen=True)
class OidcFlow:
    """What the flow uses: browser sessions (store, audit, settings) and the provider rules
    (master keys, the guarded provider client, Warden's public URL)."""

    browser: BrowserSessions
    rules: ProviderRules


class ProviderDown(ServiceUnavailable):
    """The provider could not be reached; the spent `state` stays spent."""

    commit_changes = True
    code = "identity_provider_unavailable"
    message = "The identity provider is unavailable; try again shortly."


class StartedSignIn(NamedTuple):
    """Where to send the browser, and the cookie that ties the sign-in to that browser."""

    url: str
    cookie_name: str
    cookie_value: str


# --- small helpers --------------------------------------------------------------------------


def binding_cookie(state: str) -> str:
    """The name of the cookie that binds a pending sign-in to the browser that started it
    (RFC 6749 §10.12): a callback arriving in another browser — a victim sent an attacker's
    callback URL — finds no such cookie and is refused (no login CSRF). One per sign-in, so
    sign-ins started in two tabs do not overwrite each other."""
    return BINDING_COOKIE_PREFIX + sha256_hex(state)[:16]


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def pkce_challenge(verifier: str) -> str:
    """The S256 code challenge of a PKCE verifier (RFC 7636)."""
    return _b64(hashlib.sha256(verifier.encode("ascii")).digest())


def _verifier_aad(login: OidcLogin) -> str:
    return f"tenant={login.tenant_id}|oidc_login={login.id}"


def checked_return_to(flow: OidcFlow, value: str | None) -> str:
    """Where to send the browser after signing in: a path on Warden's public origin, or a URL
    on an allowed origin (CORS_ORIGINS, PUBLIC_URL). Anything else is refused: no open
    redirect."""
    settings = flow.browser.settings
    public = settings.public_url.rstrip("/")
    if value is None or value == "":
        return public + "/"
    refused = AppError(
        "return_to must be a path or a URL on an allowed origin.", code="return_to_refused"
    )
    if (
        len(value) > MAX_PARAM
        or any(ch in value for ch in "\\\r\n\t\x00")
        or not value.isprintable()
    ):
        raise refused
    if value.startswith("/") and not value.startswith("//"):
        return public + value
    parts = urlsplit(value)
    origin = origin_of(value)
    if origin is None or origin not in allowed_origins(settings) or parts.username is not None:
        raise refused
    return value


async def _tenant_and_provider(
    session: AsyncSession, tenant_slug: str, name: str
) -> tuple[Tenant, IdentityProvider]:
    """The tenant's enabled provider; 404 for an unknown tenant, an unknown, disabled or other
    tenant's provider alike."""
    not_found = NotFound("Identity provider not found.", code="identity_provider_not_found")
    tenant = await tenants.get_by_slug(session, tenant_slug)
    if tenant is None:
        raise not_found
    set_session_tenant(session, tenant.id)
    provider = await providers.find_by_name(session, name)
    if provider is None or not provider.enabled:
        raise not_found
    return tenant, provider


def _client_auth(
    flow: OidcFlow, provider: IdentityProvider, endpoint: str
) -> tuple[dict[str, str], tuple[str, str] | None]:
    """Form fields and HTTP Basic credentials authenticating Warden at the token endpoint."""
    master = flow.rules.master
    if provider.client_auth == "private_key_jwt":
        key = provider_service.client_private_key(master, provider)
        now = int(time.time())
        assertion = jose.sign(
            {
                "iss": provider.client_id,
                "sub": provider.client_id,
                "aud": endpoint,
                "jti": secrets.token_urlsafe(24),
                "iat": now,
                "exp": now + 60,
            },
            key,
            kid=provider_service.client_key_id(key),
            alg="ES256",
        )
        return {
            "client_id": provider.client_id,
            "client_assertion_type": _ASSERTION_TYPE,
            "client_assertion": assertion,
        }, None
    secret = provider_service.client_secret(master, provider)
    if provider.client_auth == "client_secret_post":
        return {"client_id": provider.client_id, "client_secret": secret}, None
    # RFC 6749 §2.3.1: both are form-encoded before they go into the Basic header.
    return {}, (quote(provider.client_id, safe=""), quote(secret, safe=""))


async def _token_call(
    flow: OidcFlow, provider: IdentityProvider, form: dict[str, str]
) -> dict[str, Any]:
    endpoint = provider.provider_metadata["token_endpoint"]
    extra, basic = _client_auth(flow, provider, endpoint)
    return await token_request(flow.rules.client, endpoint, {**form, **extra}, basic)


async def provider_key(
    flow: OidcFlow, provider: IdentityProvider, parsed: jose.ParsedToken
) -> jose.VerificationKey:
    alg = parsed.header["alg"]
    if alg not in provider.provider_metadata.get("id_token_algorithms", []):
        raise jose.TokenError("algorithm not allowed for this provider")
    uri = provider.provider_metadata["jwks_uri"]
    kid = parsed.header.get("kid")
    jwks = flow.rules.client.jwks
    key = (await jwks.get(uri)).select(kid, alg)
    if key is None:  # the provider may have rotated: refetch (at most once per floor)
        key = (await jwks.refresh_for_kid(uri)).select(kid, alg)
    if key is None:
        raise jose.TokenError("unknown kid")
    return key


async def verify_id_token(
    flow: OidcFlow,
    provider: IdentityProvider,
    raw: str,
    *,
    nonce: str,
    access_token: str | None,
) -> dict[str, Any]:
    """An ID token's claims after every check of OpenID Connect Core §3.1.3.7; `TokenError`
    otherwise (signature with the provider's key, `alg` pinned — never `none` — `iss`, `aud`,
    `azp`, `exp`, `iat`, `nonce`, `at_hash`)."""
    parsed = jose.parse(raw, allowed_types={"jwt"})
    key = await provider_key(flow, provider, parsed)
    claims = jose.verify(
        parsed,
        key,
        issuer=provider.issuer,
        audiences=[provider.client_id],
        leeway=flow.browser.settings.jwt_leeway_seconds,
    )
    if claims.get("iat") is None:
        raise jose.TokenError("missing iat")
    aud = claims.get("aud")
    audiences = [aud] if isinstance(aud, str) else list(aud or [])
    azp = claims.get("azp")
    if (len(audiences) > 1 or azp is not None) and azp != provider.client_id:
        raise jose.TokenError("azp is not this client")
    token_nonce = claims.get("nonce")
    if not isinstance(token_nonce, str) or not hmac.compare_digest(
        token_nonce.encode(), nonce.encode()
    ):
        raise jose.TokenError("nonce mismatch")
    at_hash = claims.get("at_hash")
    if at_hash is not None and access_token is not None:
        expected = jose.half_hash(access_token, parsed.header["alg"])
        if not isinstance(at_hash, str) or not hmac.compare_digest(at_hash, expected):
            raise jose.TokenError("at_hash mismatch")
    sub = claims.get("sub")
    if not isinstance(sub, str) or not sub or len(sub) > 255:
        raise jose.TokenError("sub missing or too long")
    return claims


# --- start ----------------------------------------------------------------------------------


async def start(
    session: AsyncSession, flow: OidcFlow, tenant_slug: str, name: str, return_to: str | None
) -> StartedSignIn:
    """Begin a sign-in: the provider's authorization URL with `state`, `nonce` and PKCE S256;
    what the callback needs is kept here, single use, for `LOGIN_TTL_SECONDS`; the browser
    keeps the state in a binding cookie the callback must present."""
    tenant, provider = await _tenant_and_provider(session, tenant_slug, name)
    target = checked_return_to(flow, return_to)
    state = secrets.token_urlsafe(32)
    nonce = secrets.token_urlsafe(32)
    verifier = secrets.token_urlsafe(48)
    login = OidcLogin(
        tenant_id=tenant.id,
        provider_id=provider.id,
        state_hash=sha256_hex(state),
        nonce=nonce,
        verifier_ciphertext="",
        return_to=target,
        expires_at=utcnow() + timedelta(seconds=LOGIN_TTL_SECONDS),
    )
    login.verifier_ciphertext = flow.rules.master.encrypt(verifier.encode(), _verifier_aad(login))
    session.add(login)
    await session.flush()
    await record(
        session,
        tenant_id=tenant.id,
        action="oidc.sign_in_started",
        actor=ANONYMOUS,
        target_type="identity_provider",
        target_id=str(provider.id),
        details={"provider": provider.name},
    )
    params = {
        "response_type": "code",
        "client_id": provider.client_id,
        "redirect_uri": provider_service.redirect_uri(
            flow.rules.public_url, tenant.slug, provider.name
        ),
        "scope": " ".join(provider.scopes),
        "state": state,
        "nonce": nonce,
        "code_challenge": pkce_challenge(verifier),
        "code_challenge_method": "S256",
    }
    endpoint = provider.provider_metadata["authorization_endpoint"]
    url = endpoint + ("&" if urlsplit(endpoint).query else "?") + urlencode(params)
    return StartedSignIn(url, binding_cookie(state), state)


# --- callback -------------------------------------------------------------------------------


def _refuse(
    flow: OidcFlow,
    tenant_id: uuid.UUID,
    provider: IdentityProvider,
    reason: str,
    error: AppError,
    actor: Actor = ANONYMOUS,
) -> AppError:
    """Audit a failed sign-in and hand back the error to raise (side effects kept)."""
    flow.browser.audit.submit(
        tenant_id=tenant_id,
        action="oidc.sign_in_failed",
        actor=actor,
        outcome="failure",
        target_type="identity_provider",
        target_id=str(provider.id),
        details={"provider": provider.name, "reason": reason},
    )
    log.info("oidc_sign_in_failed", provider=provider.name, reason=reason)
    error.commit_changes = True
    return error


def _mapped_email(claims: Mapping[str, Any], name: str) -> str | None:
    value = claims.get(name)
    if not isinstance(value, str):
        return None
    try:
        return normalize_email(value)
    except ValueError:
        return None


def _groups(claims: Mapping[str, Any], name: str) -> list[str]:
    value = claims.get(name)
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list):
        return []
    return [g for g in value if isinstance(g, str) and 0 < len(g) <= 256][:MAX_GROUPS]


async def _find_or_provision(
    session: AsyncSession,
    flow: OidcFlow,
    tenant: Tenant,
    provider: IdentityProvider,
    claims: Mapping[str, Any],
    subject: str,
) -> User:
    """The local user for (provider, sub): linked, linked now by verified email, or created
    just in time; otherwise 403 `not_provisioned` and nothing written."""
    mapping = provider.claim_mapping
    link = await providers.find_link(session, provider.id, subject)
    if link is not None:
        user = await session.get(User, link.user_id)
        if user is not None:
            if not user.is_active:
                raise _refuse(
                    flow,
                    tenant.id,
                    provider,
                    "inactive",
                    Forbidden("This account is deactivated.", code="account_disabled"),
                    Actor("user", str(user.id), user.email),
                )
            link.last_login_at = utcnow()
            return user
        await session.delete(link)  # the user was deleted: start over
        await session.flush()
    email = _mapped_email(claims, mapping.get("email", "email"))
    verified = claims.get("email_verified") is True
    domain = email.rpartition("@")[2] if email else ""
    domain_ok = not provider.allowed_email_domains or domain in provider.allowed_email_domains
    refusal = Forbidden(
        "This identity is not provisioned in this tenant; ask an administrator.",
        code="not_provisioned",
    )
    if email is None or not verified:
        raise _refuse(flow, tenant.id, provider, "email_not_verified", refusal)
    if not domain_ok:
        raise _refuse(flow, tenant.id, provider, "email_domain_not_allowed", refusal)
    actor = Actor("idp", str(provider.id), None)
    user = await users_repository.find_by_email(session, email)
    if user is not None:
        if not user.is_active:
            raise _refuse(flow, tenant.id, provider, "inactive", refusal)
        how = "linked"
    elif provider.jit_provisioning:
        user = await users.add_federated_user(
            session,
            tenant_id=tenant.id,
            email=email,
            role=Role(provider.default_role),
            actor=actor,
            details={"provider": provider.name, "via": "jit_provisioning"},
        )
        how = "provisioned"
    else:
        raise _refuse(flow, tenant.id, provider, "jit_disabled", refusal)
    session.add(
        IdentityLink(tenant_id=tenant.id, provider_id=provider.id, subject=subject, user_id=user.id)
    )
    try:
        await session.flush()
    except IntegrityError as exc:  # the same identity's first sign-in, twice at once
        raise AppError("Sign-in already in progress; try again.", code="conflict") from exc
    await record(
        session,
        tenant_id=tenant.id,
        action=f"oidc.user_{how}",
        actor=actor,
        target_type="user",
        target_id=str(user.id),
        details={"provider": provider.name, "role": user.role},
    )
    return user


def _expiry(tokens: Mapping[str, Any]) -> Any:
    expires_in = tokens.get("expires_in")
    if isinstance(expires_in, int | float) and not isinstance(expires_in, bool) and expires_in > 0:
        return utcnow() + timedelta(seconds=min(float(expires_in), 366 * 86400))
    return None


async def callback(
    session: AsyncSession,
    flow: OidcFlow,
    tenant_slug: str,
    name: str,
    params: Mapping[str, str],
    cookies: Mapping[str, str],
) -> tuple[NewSession, str]:
    """Finish a sign-in: the state checked against the browser's binding cookie and spent
    once, the code exchanged, the ID token verified, the user found or provisioned, a browser
    session opened. Returns it and where to go next."""
    tenant, provider = await _tenant_and_provider(session, tenant_slug, name)
    state = params.get("state", "")
    if not state or len(state) > MAX_PARAM:
        raise _refuse(
            flow,
            tenant.id,
            provider,
            "state_missing",
            AppError("The sign-in has no state; start again.", code="oidc_state_invalid"),
        )
    bound = cookies.get(binding_cookie(state), "")
    if not hmac.compare_digest(bound.encode(), state.encode()):
        # Refused before the state is spent: a forwarded callback cannot burn the real one.
        raise _refuse(
            flow,
            tenant.id,
            provider,
            "browser_mismatch",
            AppError(
                "This sign-in was started in another browser; start again here.",
                code="oidc_state_invalid",
            ),
        )
    login = await providers.consume_login(session, provider.id, sha256_hex(state), utcnow())
    if login is None:
        raise _refuse(
            flow,
            tenant.id,
            provider,
            "state_invalid",
            AppError(
                "This sign-in is unknown, expired or already used; start again.",
                code="oidc_state_invalid",
            ),
        )
    error = params.get("error")
    if error is not None:
        code = error if _ERROR_CODE.match(error) else "invalid_error"
        if code == "access_denied":
            raise _refuse(
                flow,
                tenant.id,
                provider,
                "idp:access_denied",
                Forbidden(
                    "The identity provider did not allow this sign-in (access_denied).",
                    code="oidc_access_denied",
                ),
            )
        raise _refuse(
            flow,
            tenant.id,
            provider,
            f"idp:{code}",
            AppError(
                f"The identity provider refused the sign-in ({code}).", code="oidc_provider_error"
            ),
        )
    if "iss" in params and params["iss"] != provider.issuer:  # RFC 9207 mix-up defence
        raise _refuse(
            flow,
            tenant.id,
            provider,
            "iss_mismatch",
            AppError("The response came from another issuer.", code="oidc_issuer_mismatch"),
        )
    code_value = params.get("code", "")
    if not code_value or len(code_value) > MAX_PARAM:
        raise _refuse(
            flow,
            tenant.id,
            provider,
            "code_missing",
            AppError("The identity provider sent no code.", code="oidc_code_missing"),
        )
    verifier = flow.rules.master.decrypt(login.verifier_ciphertext, _verifier_aad(login)).decode()
    form = {
        "grant_type": "authorization_code",
        "code": code_value,
        "redirect_uri": provider_service.redirect_uri(
            flow.rules.public_url, tenant.slug, provider.name
        ),
        "code_verifier": verifier,
    }
    try:
        tokens = await _token_call(flow, provider, form)
    except ProviderUnavailable as exc:
        raise _refuse(
            flow, tenant.id, provider, f"unavailable:{exc.reason}", ProviderDown()
        ) from exc
    except TokenEndpointError as exc:
        raise _refuse(
            flow,
            tenant.id,
            provider,
            f"token_endpoint:{exc.error[:64]}",
            AppError(
                "The identity provider refused the code; start again.", code="oidc_code_rejected"
            ),
        ) from exc
    raw_id_token = tokens.get("id_token")
    access_token = tokens.get("access_token")
    try:
        if not isinstance(raw_id_token, str):
            raise jose.TokenError("no id_token")
        claims = await verify_id_token(
            flow,
            provider,
            raw_id_token,
            nonce=login.nonce,
            access_token=access_token if isinstance(access_token, str) else None,
        )
    except jose.TokenError as exc:
        raise _refuse(
            flow,
            tenant.id,
            provider,
            f"id_token:{exc.reason}",
            Unauthenticated(
                "The identity provider's ID token is not valid.", code="oidc_id_token_invalid"
            ),
        ) from exc
    subject = claims.get(provider.claim_mapping.get("subject", "sub"))
    if not isinstance(subject, str) or not subject or len(subject) > 255:
        raise _refuse(
            flow,
            tenant.id,
            provider,
            "subject_missing",
            Unauthenticated("The ID token names no subject.", code="oidc_id_token_invalid"),
        )
    user = await _find_or_provision(session, flow, tenant, provider, claims, subject)
    new = await open_session(
        session, flow.browser, tenant, user, {"method": "oidc", "provider": provider.name}
    )
    sid = claims.get("sid")
    oidc_row = OidcSession(
        browser_session_id=new.row.id,
        tenant_id=tenant.id,
        provider_id=provider.id,
        user_id=user.id,
        subject=subject,
        sid=sid if isinstance(sid, str) and 0 < len(sid) <= 255 else None,
        groups=_groups(claims, provider.claim_mapping.get("groups", "groups")),
        tokens_ciphertext="",
        access_expires_at=_expiry(tokens),
    )
    provider_service.seal_tokens(
        flow.rules.master,
        oidc_row,
        {
            "access_token": access_token,
            "refresh_token": tokens.get("refresh_token"),
            "id_token": raw_id_token,
        },
    )
    session.add(oidc_row)
    await session.flush()
    await record(
        session,
        tenant_id=tenant.id,
        action="oidc.signed_in",
        actor=Actor("user", str(user.id), user.email),
        target_type="session",
        target_id=str(new.row.id),
        details={"provider": provider.name, "subject_hash": sha256_hex(subject)[:16]},
    )
    return new, login.return_to


# --- the IdP side of the exchange -----------------------------------------------------------


async def _fresh_tokens(
    session: AsyncSession,
    flow: OidcFlow,
    provider: IdentityProvider,
    row: OidcSession,
    margin: int = REFRESH_AHEAD_SECONDS,
) -> dict[str, Any]:
    """The session's IdP tokens, the access token refreshed when it expires within `margin`
    seconds."""
    ahead = utcnow() + timedelta(seconds=margin)
    if row.access_expires_at is None or row.access_expires_at > ahead:
        return provider_service.open_tokens(flow.rules.master, row)
    # One refresh at a time per session (PostgreSQL row lock; SQLite serialises writers): two
    # processes spending one rotating refresh token would look like reuse to the provider.
    locked = await session.get(
        OidcSession, row.browser_session_id, with_for_update=True, populate_existing=True
    )
    row = locked if locked is not None else row
    tokens = provider_service.open_tokens(flow.rules.master, row)
    if row.access_expires_at is None or row.access_expires_at > ahead:
        return tokens  # refreshed by someone else meanwhile
    refresh_token = tokens.get("refresh_token")
    if not isinstance(refresh_token, str):
        return tokens
    try:
        fresh = await _token_call(
            flow, provider, {"grant_type": "refresh_token", "refresh_token": refresh_token}
        )
    except ProviderUnavailable as exc:
        raise ServiceUnavailable(
            "The identity provider is unavailable; try again shortly.",
            code="identity_provider_unavailable",
        ) from exc
    except TokenEndpointError as exc:
        raise Unauthenticated(
            "The identity provider no longer honours this session.", code="idp_session_ended"
        ) from exc
    if not isinstance(fresh.get("access_token"), str):
        raise Unauthenticated(
            "The identity provider sent no access token.", code="idp_session_ended"
        )
    tokens["access_token"] = fresh["access_token"]
    if isinstance(fresh.get("refresh_token"), str):
        tokens["refresh_token"] = fresh["refresh_token"]
    if isinstance(fresh.get("id_token"), str):
        tokens["id_token"] = fresh["id_token"]
    provider_service.seal_tokens(flow.rules.master, row, tokens)
    row.access_expires_at = _expiry(fresh)
    row.refreshed_at = utcnow()
    await session.flush()
    flow.browser.audit.submit(
        tenant_id=row.tenant_id,
        action="oidc.token_refreshed",
        actor=Actor("user", str(row.user_id), None),
        outcome="success",
        target_type="session",
        target_id=str(row.browser_session_id),
        details={"provider": provider.name},
    )
    return tokens


async def add_provider_identity(
    session: AsyncSession, flow: OidcFlow, caller: Principal, response: ExchangeResponse
) -> ExchangeResponse:
    """The exchange's answer plus the provider's identity (and, for a key with
    `sessions:idp_token`, its current access token) when the session came from a provider."""
    sid = response.claims.get("sid")
    if not isinstance(sid, str):
        return response
    set_session_tenant(session, caller.tenant_id)
    row = await providers.oidc_session(session, uuid.UUID(sid))
    if row is None:
        return response
    provider = await session.get(IdentityProvider, row.provider_id)
    if provider is None:
        return response
    response.identity = ProviderIdentity(
        idp=provider.name, issuer=provider.issuer, sub=row.subject, groups=row.groups
    )
    if IDP_TOKEN_SCOPE in caller.scopes:
        tokens = await _fresh_tokens(session, flow, provider, row)
        access = tokens.get("access_token")
        response.idp_access_token = access if isinstance(access, str) else None
    return response


async def refresh_expiring(
    sessionmaker: async_sessionmaker[AsyncSession], flow: OidcFlow, *, limit: int = 200
) -> int:
    """Refresh the IdP access tokens of live sessions that expire within two minutes, so a
    session's provider token stays usable while the session lives (the runtime calls this
    every minute; the row lock keeps two processes from spending one refresh token). Tokens
    already expired are left to the next exchange. Returns how many were refreshed."""
    now = utcnow()
    margin = 2 * REFRESH_AHEAD_SECONDS
    async with sessionmaker() as session:
        due = await providers.sessions_to_refresh(
            session, now, now + timedelta(seconds=margin), limit
        )
    refreshed = 0
    for browser_session_id, tenant_id in due:
        try:
            async with sessionmaker() as session, session.begin():
                set_session_tenant(session, tenant_id)
                row = await providers.oidc_session(session, browser_session_id)
                provider = await session.get(IdentityProvider, row.provider_id) if row else None
                if row is None or provider is None:
                    continue
                before = row.refreshed_at
                await _fresh_tokens(session, flow, provider, row, margin)
                refreshed += row.refreshed_at != before
        except AppError as exc:  # the provider refused or is down: the next round tries again
            log.info("oidc_refresh_skipped", reason=exc.code)
    return refreshed
