"""Protected endpoints."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import JSON, Column, UniqueConstraint
from sqlmodel import Field, SQLModel

from app.core.types import UTCDateTime, new_id, utcnow


class Endpoint(SQLModel, table=True):
    """An API a tenant protects: where to forward, and how gateways find it (host + prefix)."""

    __tablename__ = "endpoints"
    __table_args__ = (UniqueConstraint("tenant_id", "slug", name="uq_endpoints_tenant_slug"),)

    id: uuid.UUID = Field(default_factory=new_id, primary_key=True)
    tenant_id: uuid.UUID = Field(foreign_key="tenants.id", ondelete="CASCADE", index=True)
    name: str = Field(max_length=200)
    slug: str = Field(max_length=64)
    description: str | None = Field(default=None, max_length=2000)
    upstream_url: str | None = Field(default=None, max_length=2048)
    host: str | None = Field(default=None, max_length=253, index=True)
    path_prefix: str | None = Field(default=None, max_length=512)
    exempt_paths: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    require_host_audience: bool = Field(default=False)
    is_active: bool = Field(default=True)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime, nullable=False)
    updated_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime, nullable=False)
