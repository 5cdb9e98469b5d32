"""Request and response models of decisions."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field, IPvAnyAddress

from app.core.identity import Role
from app.core.schemas import EmailText, Slug, StrictModel


class WhatIf(StrictModel):
    """A hypothetical principal of the caller's tenant (admins only)."""

    email: EmailText | None = None
    role: Role = Role.MEMBER
    claims: dict[str, Any] = Field(default_factory=dict, max_length=50)


class CheckRequest(StrictModel):
    """`POST /authz/check`."""

    endpoint: Slug
    as_: WhatIf | None = Field(default=None, alias="as")
    method: str = Field(default="POST", pattern=r"^[A-Z]{3,7}$")
    path: str | None = Field(default=None, max_length=2048)
    ip: IPvAnyAddress | None = Field(
        default=None, description="The client address to decide for (admins only; default: yours)."
    )


class CheckResponse(BaseModel):
    """A decision and its explanation."""

    allowed: bool
    decided_by: str | None
    reasons: list[str]
    code: str
