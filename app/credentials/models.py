"""Tables of the credentials domain: signing keys, refresh tokens, the revocation list, browser
sessions."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Column
from sqlmodel import Field, SQLModel

from app.core.types import UTCDateTime, new_id, utcnow


class SigningKey(SQLModel, table=True):
    """One of Warden's own token-signing keys; the private half is encrypted at rest."""

    __tablename__ = "signing_keys"

    kid: str = Field(primary_key=True, max_length=64)
    alg: str = Field(max_length=16)
    public_jwk: dict[str, Any] = Field(sa_column=Column(JSON, nullable=False))
    private_key_ciphertext: str = Field(max_length=4096)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime, nullable=False)
    retired_at: datetime | None = Field(default=None, sa_type=UTCDateTime, nullable=True)


class RefreshToken(SQLModel, table=True):
    """A rotating refresh token; only its hash is stored. Tokens of one login share a family."""

    __tablename__ = "refresh_tokens"

    id: uuid.UUID = Field(default_factory=new_id, primary_key=True)
    tenant_id: uuid.UUID = Field(foreign_key="tenants.id", ondelete="CASCADE", index=True)
    user_id: uuid.UUID = Field(foreign_key="users.id", ondelete="CASCADE", index=True)
    family_id: uuid.UUID = Field(index=True)
    token_hash: str = Field(max_length=64, unique=True, index=True)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime, nullable=False)
    expires_at: datetime = Field(sa_type=UTCDateTime, nullable=False)
    used_at: datetime | None = Field(default=None, sa_type=UTCDateTime, nullable=True)
    revoked_at: datetime | None = Field(default=None, sa_type=UTCDateTime, nullable=True)


class Revocation(SQLModel, table=True):
    """A revoked subject, kept until `expires_at` (when every token it could affect is dead).

    `jti:<sha256>` and `tenant:<id>`: revoked outright. `user:<id>`: tokens whose `ver` claim is
    below `min_version` are revoked (deactivation, role or password change bump the version)."""

    __tablename__ = "revocations"

    subject: str = Field(primary_key=True, max_length=128)
    min_version: int = Field(default=0)
    expires_at: datetime = Field(sa_type=UTCDateTime, nullable=False, index=True)


class BrowserSession(SQLModel, table=True):
    """A logged-in browser. `token_hash` is SHA-256 of the cookie value; `csrf_hash` of the
    CSRF token bound to it."""

    __tablename__ = "browser_sessions"

    id: uuid.UUID = Field(default_factory=new_id, primary_key=True)
    tenant_id: uuid.UUID = Field(foreign_key="tenants.id", ondelete="CASCADE", index=True)
    user_id: uuid.UUID = Field(foreign_key="users.id", ondelete="CASCADE", index=True)
    token_hash: str = Field(max_length=64, unique=True, index=True)
    csrf_hash: str = Field(max_length=64)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime, nullable=False)
    last_seen_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime, nullable=False)
    expires_at: datetime = Field(sa_type=UTCDateTime, nullable=False)
    revoked_at: datetime | None = Field(default=None, sa_type=UTCDateTime, nullable=True)
    user_agent: str | None = Field(default=None, max_length=512)
    ip: str | None = Field(default=None, max_length=64)
