"""Response models of a user's data export."""

from __future__ import annotations

import uuid
from datetime import datetime

from pydantic import BaseModel

from app.apikeys.schemas import ApiKeyPublic
from app.audit.schemas import AuditEventPublic
from app.core.schemas import PublicModel
from app.tenants.schemas import TenantPublic


class ProfileView(PublicModel):
    """The user's own record (never the password hash or token version)."""

    id: uuid.UUID
    email: str
    role: str
    is_active: bool
    created_at: datetime
    updated_at: datetime
    password_changed_at: datetime


class RefreshSessionView(PublicModel):
    """A refresh token's metadata (never the token or its hash)."""

    id: uuid.UUID
    family_id: uuid.UUID
    created_at: datetime
    expires_at: datetime
    used_at: datetime | None
    revoked_at: datetime | None


class BrowserSessionView(PublicModel):
    """A browser session's metadata (never the cookie, the CSRF token or their hashes)."""

    id: uuid.UUID
    created_at: datetime
    last_seen_at: datetime
    expires_at: datetime
    revoked_at: datetime | None
    user_agent: str | None
    ip: str | None


class IdentityLinkView(BaseModel):
    """An identity provider's account linked to the user (signing in through it)."""

    provider: str
    issuer: str
    subject: str
    created_at: datetime
    last_login_at: datetime


class MeExport(BaseModel):
    """`GET /me/export`: everything Warden holds about the caller (streamed as one JSON object)."""

    exported_at: datetime
    profile: ProfileView
    tenant: TenantPublic
    refresh_sessions: list[RefreshSessionView]
    browser_sessions: list[BrowserSessionView]
    api_keys: list[ApiKeyPublic]
    identity_links: list[IdentityLinkView]
    audit_events: list[AuditEventPublic]
