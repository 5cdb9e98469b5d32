"""Request and response models of API keys."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Literal

from pydantic import Field, field_validator

from app.core.schemas import Name, PublicModel, StrictModel

Scope = Literal[
    "endpoints:query", "authz:check", "authz:forward", "sessions:exchange", "sessions:idp_token"
]
SCOPES: tuple[str, ...] = (
    "endpoints:query",
    "authz:check",
    "authz:forward",
    "sessions:exchange",
    "sessions:idp_token",
)


class ApiKeyCreate(StrictModel):
    """`POST /api-keys`."""

    name: Name
    scopes: list[Scope] = Field(min_length=1, max_length=len(SCOPES))
    expires_at: datetime | None = None

    @field_validator("scopes")
    @classmethod
    def _unique(cls, value: list[str]) -> list[str]:
        return sorted(set(value))

    @field_validator("expires_at")
    @classmethod
    def _aware(cls, value: datetime | None) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("expires_at needs a time zone (e.g. 2030-01-01T00:00:00Z)")
        return value


class ApiKeyPublic(PublicModel):
    """An API key's metadata (never the secret)."""

    id: uuid.UUID
    name: str
    prefix: str
    scopes: list[str]
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None
    last_used_at: datetime | None


class ApiKeyCreated(ApiKeyPublic):
    """The answer to a creation: `key` is shown this once."""

    key: str
