"""Trusted external token issuers (satellite tokens)."""

from __future__ import annotations

import hashlib
import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Column, UniqueConstraint
from sqlmodel import Field, SQLModel

from app.core.types import UTCDateTime, new_id, utcnow


class TrustedIssuer(SQLModel, table=True):
    """An external IdP whose JWTs a tenant accepts, with how to verify and map them."""

    __tablename__ = "trusted_issuers"
    __table_args__ = (
        UniqueConstraint("tenant_id", "issuer", name="uq_trusted_issuers_tenant_iss"),
    )

    id: uuid.UUID = Field(default_factory=new_id, primary_key=True)
    tenant_id: uuid.UUID = Field(foreign_key="tenants.id", ondelete="CASCADE", index=True)
    issuer: str = Field(max_length=512, index=True)
    jwks_uri: str | None = Field(default=None, max_length=2048)
    jwks: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON, nullable=True))
    public_keys_pem: list[str] | None = Field(default=None, sa_column=Column(JSON, nullable=True))
    audiences: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    algorithms: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    claim_mapping: dict[str, str] = Field(
        default_factory=dict, sa_column=Column(JSON, nullable=False)
    )
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime, nullable=False)
    updated_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime, nullable=False)


def audience_key(issuer: str, audience: str) -> str:
    """The unique key of an (issuer, audience) pair (a digest: both may be 512 characters)."""
    return hashlib.sha256(f"{issuer}\x00{audience}".encode()).hexdigest()


class IssuerAudience(SQLModel, table=True):
    """One (issuer, audience) pair and the one tenant trusting it: the tenant that registered
    it first. The unique key makes a second claim fail in the database itself, so two tenants
    registering the same pair at once cannot both win; another audience of the same issuer is
    free for another tenant."""

    __tablename__ = "issuer_audiences"

    id: uuid.UUID = Field(default_factory=new_id, primary_key=True)
    tenant_id: uuid.UUID = Field(foreign_key="tenants.id", ondelete="CASCADE", index=True)
    issuer_id: uuid.UUID = Field(foreign_key="trusted_issuers.id", ondelete="CASCADE", index=True)
    key: str = Field(max_length=64, unique=True)
    issuer: str = Field(max_length=512)
    audience: str = Field(max_length=512)
