"""A user's right of access (export) and right to erasure.

Erasure deletes the user (refresh tokens and browser sessions go with the row), revokes every
token they hold, and pseudonymises their audit events: `actor_id` becomes a stable pseudonym,
`actor_email` and `ip` are cleared. The chain hashes `actor_digest`, not those fields, so it
still verifies (see app/audit/verify.py). The pseudonym is `erased:` + the first 16 hex digits of
HMAC-SHA256(k_tenant, user id), with k_tenant derived by HKDF from the active master key and the
tenant id: one user always maps to one pseudonym, two tenants never share one, and nobody
without the master key can link a pseudonym back to an id.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.apikeys import service as apikeys
from app.apikeys.schemas import ApiKeyPublic
from app.audit import repository as audit_events
from app.audit.schemas import AuditFilters, event_view
from app.audit.service import AuditWriter, SeqTally, record
from app.core.errors import NotFound
from app.core.identity import Principal
from app.core.types import utcnow
from app.credentials import browser_repository as browser_sessions
from app.credentials import refresh as refresh_tokens
from app.credentials.browser import SessionStore
from app.credentials.revocation import RevocationStore
from app.identity_providers import repository as identity_providers
from app.privacy.schemas import (
    BrowserSessionView,
    IdentityLinkView,
    ProfileView,
    RefreshSessionView,
)
from app.tenants.models import Tenant
from app.tenants.schemas import TenantPublic
from app.users.models import User
from app.users.service import ensure_not_last_owner, revoke_user_credentials


def _tenant_key(master_key_entry: str, tenant_id: uuid.UUID) -> bytes:
    raw = base64.urlsafe_b64decode(master_key_entry + "=" * (-len(master_key_entry) % 4))
    return HKDF(
        algorithm=hashes.SHA256(),
        length=32,
        salt=b"warden-audit-pseudonym",
        info=tenant_id.bytes,
    ).derive(raw)


def pseudonym(master_key_entry: str, tenant_id: uuid.UUID, user_id: uuid.UUID) -> str:
    """The stable, tenant-scoped pseudonym an erased user's audit events carry (keyed by the
    active, first, `WARDEN_MASTER_KEY` entry)."""
    key = _tenant_key(master_key_entry, tenant_id)
    digest = hmac.new(key, str(user_id).encode(), hashlib.sha256).hexdigest()
    return audit_events.ERASED_PREFIX + digest[:16]


async def _own_user(session: AsyncSession, principal: Principal) -> User:
    user = await session.get(User, principal.user_id)
    if user is None:
        raise NotFound("This account no longer exists.", code="user_not_found")
    return user


async def export_me(
    session: AsyncSession, sessionmaker: async_sessionmaker[AsyncSession], principal: Principal
) -> AsyncIterator[str]:
    """Record the export in the caller's transaction; return the JSON document as a stream.

    Profile, tenant, sessions and keys are read now; the audit events (possibly many) are
    streamed in chunks through their own sessions, so memory stays flat."""
    user = await _own_user(session, principal)
    tenant = await session.get(Tenant, principal.tenant_id)
    if tenant is None:
        raise NotFound("Tenant not found.", code="tenant_not_found")
    head: dict[str, Any] = {
        "exported_at": utcnow().isoformat(),
        "profile": ProfileView.model_validate(user).model_dump(mode="json"),
        "tenant": TenantPublic.model_validate(tenant).model_dump(mode="json"),
        "refresh_sessions": [
            RefreshSessionView.model_validate(r).model_dump(mode="json")
            for r in await refresh_tokens.of_user(session, user.id)
        ],
        "browser_sessions": [
            BrowserSessionView.model_validate(r).model_dump(mode="json")
            for r in await browser_sessions.of_user(session, user.id)
        ],
        "api_keys": [
            ApiKeyPublic.model_validate(r).model_dump(mode="json")
            for r in await apikeys.created_by(session, user.id)
        ],
        "identity_links": [
            IdentityLinkView(
                provider=provider.name,
                issuer=provider.issuer,
                subject=link.subject,
                created_at=link.created_at,
                last_login_at=link.last_login_at,
            ).model_dump(mode="json")
            for link, provider in await identity_providers.links_of_user(session, user.id)
        ],
    }
    await record(
        session,
        tenant_id=principal.tenant_id,
        action="privacy.exported",
        actor=principal.actor,
        target_type="user",
        target_id=str(user.id),
    )
    return _document(sessionmaker, principal.tenant_id, str(user.id), head)


async def _document(
    sessionmaker: async_sessionmaker[AsyncSession],
    tenant_id: uuid.UUID,
    user_id: str,
    head: dict[str, Any],
) -> AsyncIterator[str]:
    # One JSON object: the head's members, then "audit_events" written element by element.
    yield json.dumps(head, separators=(",", ":"))[:-1] + ',"audit_events":['
    first = True
    async for rows in audit_events.iter_chunks(
        sessionmaker, tenant_id, AuditFilters(actor=user_id)
    ):
        parts = [json.dumps(event_view(row), separators=(",", ":")) for row in rows]
        yield ("" if first else ",") + ",".join(parts)
        first = False
    yield "]}"


async def erase_me(
    session: AsyncSession,
    audit: AuditWriter,
    revocations: RevocationStore,
    sessions: SessionStore,
    master_key_entry: str,
    principal: Principal,
) -> None:
    """`DELETE /me`: delete the account, revoke its tokens, pseudonymise its audit trail."""
    # Events of this user still queued in this process must be in the chain before the rows are
    # rewritten. Flushed first, before this request's transaction takes SQLite's write lock.
    await audit.flush()
    user = await _own_user(session, principal)
    await ensure_not_last_owner(
        session,
        user,
        "You are the tenant's last owner: make someone else owner first, or delete the tenant.",
    )
    await revoke_user_credentials(session, revocations, sessions, user)
    alias = pseudonym(master_key_entry, principal.tenant_id, user.id)
    # The erasure event tallies the rows it rewrites, so `verify` can tell them from rows that
    # someone later passes off as this erased user's. It is recorded under the real actor and
    # rewritten with the rest.
    tally = SeqTally()
    async for seqs in audit_events.actor_seqs(session, str(user.id)):
        for seq in seqs:
            tally.add(seq)
    await record(
        session,
        tenant_id=principal.tenant_id,
        action="privacy.erased",
        actor=principal.actor,
        target_type="user",
        target_id=alias,
        details=tally.as_details(),
    )
    await audit_events.pseudonymise_actor(session, str(user.id), alias)
    await apikeys.credit_to(session, user.id, alias)
    await session.delete(user)
    await session.flush()
