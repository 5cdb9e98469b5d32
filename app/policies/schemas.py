"""Request and response models of policies."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, Literal

from pydantic import Field

from app.core.schemas import PublicModel, StrictModel

PolicyType = Literal["access", "rate_limit", "rule"]


class PolicyCreate(StrictModel):
    """`POST /endpoints/{slug}/policies`; `configuration` is validated per type."""

    policy_type: PolicyType
    configuration: dict[str, Any]
    enabled: bool = True
    priority: int = Field(default=0, ge=-1000, le=1000)


class PolicyUpdate(StrictModel):
    """`PATCH /endpoints/{slug}/policies/{id}`."""

    configuration: dict[str, Any] | None = None
    enabled: bool | None = None
    priority: int | None = Field(default=None, ge=-1000, le=1000)


class PolicyPublic(PublicModel):
    """A policy as the API shows it."""

    id: uuid.UUID
    endpoint_id: uuid.UUID
    policy_type: PolicyType
    configuration: dict[str, Any]
    enabled: bool
    priority: int
    created_at: datetime
    updated_at: datetime
