"""The user table."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import UniqueConstraint
from sqlmodel import Field, SQLModel

from app.core.types import UTCDateTime, new_id, utcnow


class User(SQLModel, table=True):
    """A person in one tenant; the email is normalised and unique within the tenant."""

    __tablename__ = "users"
    __table_args__ = (UniqueConstraint("tenant_id", "email", name="uq_users_tenant_email"),)

    id: uuid.UUID = Field(default_factory=new_id, primary_key=True)
    tenant_id: uuid.UUID = Field(foreign_key="tenants.id", ondelete="CASCADE", index=True)
    email: str = Field(max_length=254)
    password_hash: str = Field(max_length=512)
    role: str = Field(max_length=16)
    is_active: bool = Field(default=True)
    # Bumped on deactivation, role or password change; tokens carry it as `ver`.
    token_version: int = Field(default=0)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime, nullable=False)
    updated_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime, nullable=False)
    password_changed_at: datetime = Field(
        default_factory=utcnow, sa_type=UTCDateTime, nullable=False
    )
