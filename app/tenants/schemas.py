"""Request and response models of the tenant domain."""

from __future__ import annotations

import uuid
from datetime import datetime

from pydantic import Field

from app.core.schemas import Name, PublicModel, StrictModel

# The longest access-token lifetime a tenant may choose (revocations must outlive it).
MAX_ACCESS_TTL_SECONDS = 86_400


class TenantSettings(StrictModel):
    """Per-tenant overrides; unset values fall back to the server's settings."""

    access_token_ttl_seconds: int | None = Field(default=None, ge=60, le=MAX_ACCESS_TTL_SECONDS)
    refresh_token_ttl_seconds: int | None = Field(default=None, ge=300, le=365 * 86_400)
    session_idle_timeout_seconds: int | None = Field(default=None, ge=60, le=30 * 86_400)
    session_absolute_timeout_seconds: int | None = Field(default=None, ge=300, le=365 * 86_400)


class TenantPublic(PublicModel):
    """A tenant as the API shows it."""

    id: uuid.UUID
    slug: str
    name: str
    settings: TenantSettings
    created_at: datetime


class TenantUpdate(StrictModel):
    """`PATCH /tenant`."""

    name: Name | None = None
    settings: TenantSettings | None = None
