"""Upstream credentials, encrypted at rest."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlmodel import Field, SQLModel

from app.core.types import UTCDateTime, new_id, utcnow


class UpstreamCredential(SQLModel, table=True):
    """The header Warden injects when forwarding to an endpoint's upstream.

    `ciphertext` is AES-256-GCM under master key `key_id`, bound to tenant, row and endpoint."""

    __tablename__ = "upstream_credentials"

    id: uuid.UUID = Field(default_factory=new_id, primary_key=True)
    tenant_id: uuid.UUID = Field(foreign_key="tenants.id", ondelete="CASCADE", index=True)
    endpoint_id: uuid.UUID = Field(foreign_key="endpoints.id", ondelete="CASCADE", unique=True)
    header: str = Field(max_length=100)
    ciphertext: str = Field(max_length=4096)
    key_id: str = Field(max_length=32, index=True)
    fingerprint: str = Field(max_length=64)
    last4: str = Field(max_length=4)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime, nullable=False)
    updated_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime, nullable=False)
