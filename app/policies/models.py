"""Policies attached to endpoints."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Column
from sqlmodel import Field, SQLModel

from app.core.types import UTCDateTime, new_id, utcnow


class Policy(SQLModel, table=True):
    """One `access`, `rate_limit` or `rule` policy of an endpoint (configuration validated)."""

    __tablename__ = "policies"

    id: uuid.UUID = Field(default_factory=new_id, primary_key=True)
    tenant_id: uuid.UUID = Field(foreign_key="tenants.id", ondelete="CASCADE", index=True)
    endpoint_id: uuid.UUID = Field(foreign_key="endpoints.id", ondelete="CASCADE", index=True)
    policy_type: str = Field(max_length=16)
    configuration: dict[str, Any] = Field(sa_column=Column(JSON, nullable=False))
    enabled: bool = Field(default=True)
    priority: int = Field(default=0)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime, nullable=False)
    updated_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime, nullable=False)
