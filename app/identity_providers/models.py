"""Tables of the identity-provider domain."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Column, UniqueConstraint
from sqlmodel import Field, SQLModel

from app.core.types import UTCDateTime, new_id, utcnow


class IdentityProvider(SQLModel, table=True):
    """An OpenID provider a tenant's users sign in through. The client secret (or the private
    key of `private_key_jwt`) is AES-256-GCM encrypted, bound to tenant + row."""

    __tablename__ = "identity_providers"
    __table_args__ = (UniqueConstraint("tenant_id", "name", name="uq_identity_providers_name"),)

    id: uuid.UUID = Field(default_factory=new_id, primary_key=True)
    tenant_id: uuid.UUID = Field(foreign_key="tenants.id", ondelete="CASCADE", index=True)
    name: str = Field(max_length=64)
    issuer: str = Field(max_length=512, index=True)
    client_id: str = Field(max_length=255)
    client_auth: str = Field(max_length=32)
    secret_ciphertext: str | None = Field(default=None, max_length=4096)
    secret_fingerprint: str | None = Field(default=None, max_length=16)
    secret_last4: str | None = Field(default=None, max_length=4)
    # The validated subset of the provider's discovery document.
    provider_metadata: dict[str, Any] = Field(
        default_factory=dict, sa_column=Column(JSON, nullable=False)
    )
    scopes: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    claim_mapping: dict[str, str] = Field(
        default_factory=dict, sa_column=Column(JSON, nullable=False)
    )
    allowed_email_domains: list[str] = Field(
        default_factory=list, sa_column=Column(JSON, nullable=False)
    )
    default_role: str = Field(max_length=16)
    jit_provisioning: bool = Field(default=False)
    enabled: bool = Field(default=True)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime, nullable=False)
    updated_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime, nullable=False)


class IdentityLink(SQLModel, table=True):
    """A user as an identity provider knows them: (provider, `sub`) → one local user."""

    __tablename__ = "identity_links"
    __table_args__ = (UniqueConstraint("provider_id", "subject", name="uq_identity_links_subject"),)

    id: uuid.UUID = Field(default_factory=new_id, primary_key=True)
    tenant_id: uuid.UUID = Field(foreign_key="tenants.id", ondelete="CASCADE", index=True)
    provider_id: uuid.UUID = Field(
        foreign_key="identity_providers.id", ondelete="CASCADE", index=True
    )
    subject: str = Field(max_length=255)
    user_id: uuid.UUID = Field(foreign_key="users.id", ondelete="CASCADE", index=True)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime, nullable=False)
    last_login_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime, nullable=False)


class OidcLogin(SQLModel, table=True):
    """A sign-in under way: `state` (SHA-256 only), `nonce` and the PKCE verifier (encrypted),
    single use, expiring in minutes."""

    __tablename__ = "oidc_logins"

    id: uuid.UUID = Field(default_factory=new_id, primary_key=True)
    tenant_id: uuid.UUID = Field(foreign_key="tenants.id", ondelete="CASCADE", index=True)
    provider_id: uuid.UUID = Field(
        foreign_key="identity_providers.id", ondelete="CASCADE", index=True
    )
    state_hash: str = Field(max_length=64, unique=True)
    nonce: str = Field(max_length=128)
    verifier_ciphertext: str = Field(max_length=1024)
    return_to: str = Field(max_length=2048)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime, nullable=False)
    expires_at: datetime = Field(sa_type=UTCDateTime, nullable=False, index=True)
    used_at: datetime | None = Field(default=None, sa_type=UTCDateTime, nullable=True)


class OidcSession(SQLModel, table=True):
    """The IdP side of a browser session signed in through a provider: who the IdP says the
    user is, its session id (`sid`, for back-channel logout), and its tokens, encrypted."""

    __tablename__ = "oidc_sessions"

    browser_session_id: uuid.UUID = Field(
        foreign_key="browser_sessions.id", ondelete="CASCADE", primary_key=True
    )
    tenant_id: uuid.UUID = Field(foreign_key="tenants.id", ondelete="CASCADE", index=True)
    provider_id: uuid.UUID = Field(
        foreign_key="identity_providers.id", ondelete="CASCADE", index=True
    )
    user_id: uuid.UUID = Field(foreign_key="users.id", ondelete="CASCADE", index=True)
    subject: str = Field(max_length=255, index=True)
    sid: str | None = Field(default=None, max_length=255, index=True)
    groups: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    tokens_ciphertext: str = Field(max_length=32768)
    access_expires_at: datetime | None = Field(default=None, sa_type=UTCDateTime, nullable=True)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime, nullable=False)
    refreshed_at: datetime | None = Field(default=None, sa_type=UTCDateTime, nullable=True)


class OidcLogoutToken(SQLModel, table=True):
    """A back-channel logout token already acted on (`iss` + `jti`, SHA-256), kept past its
    expiry so a replay is refused."""

    __tablename__ = "oidc_logout_tokens"

    key: str = Field(primary_key=True, max_length=64)
    expires_at: datetime = Field(sa_type=UTCDateTime, nullable=False, index=True)
