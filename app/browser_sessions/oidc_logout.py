"""Ending sessions that came from an identity provider: RP-initiated logout, OpenID Connect
Back-Channel Logout 1.0, and the sessions of a deleted provider. Sessions end through the
session store (`revoked_at` plus a Redis tombstone in the same transaction), so every process
refuses them on the next request."""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode, urlsplit

import structlog
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from app.audit.service import record
from app.browser_sessions.oidc import OidcFlow, checked_return_to, provider_key
from app.core import jose
from app.core.db import set_session_tenant
from app.core.errors import AppError
from app.core.hashing import sha256_hex
from app.core.identity import ANONYMOUS, Actor, Principal
from app.credentials import browser_repository
from app.credentials.models import BrowserSession
from app.identity_providers import repository as providers
from app.identity_providers import service as provider_service
from app.identity_providers.models import IdentityProvider, OidcLogoutToken, OidcSession

log = structlog.get_logger("warden.oidc")
BACKCHANNEL_EVENT = "http://schemas.openid.net/event/backchannel-logout"


async def _revoke_linked(
    session: AsyncSession, flow: OidcFlow, rows: list[OidcSession]
) -> list[BrowserSession]:
    """Revoke the live browser sessions behind these IdP sessions (every process, at once)."""
    browser_rows: list[BrowserSession] = []
    for row in rows:
        found = await browser_repository.get(session, row.browser_session_id)
        if found is not None and found.revoked_at is None:
            browser_rows.append(found)
    await flow.browser.store.revoke(session, browser_rows)
    return browser_rows


async def delete_provider(
    session: AsyncSession, flow: OidcFlow, principal: Principal, provider_id: uuid.UUID
) -> None:
    """`DELETE /identity-providers/{id}`: the sessions it vouched for end with it."""
    provider = await provider_service.get_provider(session, provider_id)
    rows = await providers.oidc_sessions_for(session, provider.id, sid=None, subject=None)
    ended = await _revoke_linked(session, flow, rows)
    await provider_service.delete_provider(
        session, principal, provider_id, sessions_ended=len(ended)
    )


# --- logout ---------------------------------------------------------------------------------


def checked_post_logout_uri(flow: OidcFlow, value: str | None) -> str:
    """Where the provider sends the browser after logging out (allow-listed like return_to)."""
    return checked_return_to(flow, value)


async def end_session_url(
    session: AsyncSession,
    flow: OidcFlow,
    principal: Principal,
    post_logout_redirect_uri: str | None,
) -> str | None:
    """RP-initiated logout: the provider's `end_session_endpoint` with `id_token_hint` for a
    session signed in through a provider that has one; None otherwise."""
    if principal.session_id is None:
        return None
    target = checked_post_logout_uri(flow, post_logout_redirect_uri)
    row = await providers.oidc_session(session, uuid.UUID(principal.session_id))
    if row is None:
        return None
    provider = await session.get(IdentityProvider, row.provider_id)
    endpoint = provider.provider_metadata.get("end_session_endpoint") if provider else None
    if provider is None or not endpoint:
        return None
    tokens = provider_service.open_tokens(flow.rules.master, row)
    params = {"client_id": provider.client_id, "post_logout_redirect_uri": target}
    if isinstance(tokens.get("id_token"), str):
        params["id_token_hint"] = tokens["id_token"]
    await record(
        session,
        tenant_id=row.tenant_id,
        action="oidc.logout_redirect",
        actor=principal.actor,
        target_type="session",
        target_id=str(row.browser_session_id),
        details={"provider": provider.name},
    )
    return str(endpoint) + ("&" if urlsplit(str(endpoint)).query else "?") + urlencode(params)


def _logout_refused(flow: OidcFlow, reason: str, tenant_id: uuid.UUID | None = None) -> AppError:
    flow.browser.audit.submit(
        tenant_id=tenant_id,
        action="oidc.backchannel_logout",
        actor=ANONYMOUS,
        outcome="failure",
        details={"reason": reason},
    )
    log.info("oidc_backchannel_logout_refused", reason=reason)
    return AppError("The logout token is not valid.", code="invalid_logout_token")


def _check_logout_claims(claims: Mapping[str, Any]) -> None:
    if claims.get("iat") is None:
        raise jose.TokenError("missing iat")
    jti = claims.get("jti")
    if not isinstance(jti, str) or not jti or len(jti) > 256:
        raise jose.TokenError("missing jti")
    events = claims.get("events")
    if not isinstance(events, Mapping) or not isinstance(events.get(BACKCHANNEL_EVENT), Mapping):
        raise jose.TokenError("no back-channel logout event")
    if "nonce" in claims:
        raise jose.TokenError("a logout token carries no nonce")
    sid, sub = claims.get("sid"), claims.get("sub")
    if sid is None and sub is None:
        raise jose.TokenError("neither sid nor sub")
    for value in (sid, sub):
        if value is not None and (not isinstance(value, str) or not value or len(value) > 255):
            raise jose.TokenError("sid or sub malformed")


async def backchannel_logout(session: AsyncSession, flow: OidcFlow, raw: str) -> int:
    """OpenID Connect Back-Channel Logout 1.0: verify the logout token, refuse a replay, and
    revoke the matching sessions (every process refuses them from the commit on). Returns how
    many sessions ended."""
    try:
        parsed = jose.parse(raw, allowed_types={"logout+jwt", "jwt"})
    except jose.TokenError as exc:
        raise _logout_refused(flow, f"malformed:{exc.reason}") from exc
    iss = parsed.claims.get("iss")
    aud = parsed.claims.get("aud")
    audiences = [aud] if isinstance(aud, str) else aud
    if (
        not isinstance(iss, str)
        or not isinstance(audiences, list)
        or not all(isinstance(a, str) for a in audiences)
        or len(audiences) > 10
    ):
        raise _logout_refused(flow, "iss_or_aud_malformed")
    candidates = await providers.by_issuer_and_client(session, iss, audiences)
    found: tuple[IdentityProvider, dict[str, Any]] | None = None
    last_reason = "unknown_provider"
    for provider in candidates:
        try:
            key = await provider_key(flow, provider, parsed)
            claims = jose.verify(
                parsed,
                key,
                issuer=provider.issuer,
                audiences=[provider.client_id],
                leeway=flow.browser.settings.jwt_leeway_seconds,
            )
            _check_logout_claims(claims)
        except jose.TokenError as exc:
            last_reason = exc.reason
            continue
        found = (provider, claims)
        break
    if found is None:
        tenant_id = candidates[0].tenant_id if len(candidates) == 1 else None
        raise _logout_refused(flow, last_reason, tenant_id)
    provider, claims = found
    replay_key = sha256_hex(f"{iss}\x00{claims['jti']}")
    if await session.get(OidcLogoutToken, replay_key) is not None:
        raise _logout_refused(flow, "replayed", provider.tenant_id)
    exp = float(claims["exp"])
    keep_until = max(exp, time.time()) + flow.browser.settings.jwt_leeway_seconds + 60
    session.add(OidcLogoutToken(key=replay_key, expires_at=_at(keep_until)))
    try:
        await session.flush()
    except IntegrityError as exc:  # the same token, twice at once
        raise _logout_refused(flow, "replayed", provider.tenant_id) from exc
    set_session_tenant(session, provider.tenant_id)
    sid, sub = claims.get("sid"), claims.get("sub")
    rows = await providers.oidc_sessions_for(session, provider.id, sid=sid, subject=sub)
    browser_rows = await _revoke_linked(session, flow, rows)
    await record(
        session,
        tenant_id=provider.tenant_id,
        action="oidc.backchannel_logout",
        actor=Actor("idp", str(provider.id), None),
        target_type="identity_provider",
        target_id=str(provider.id),
        details={
            "provider": provider.name,
            "sessions": [str(r.id) for r in browser_rows],
            "by": "sid" if sid is not None else "sub",
        },
    )
    return len(browser_rows)


def _at(timestamp: float) -> datetime:
    return datetime.fromtimestamp(timestamp, UTC)
