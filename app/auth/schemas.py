"""Request and response models of the auth domain."""

from __future__ import annotations

import uuid
from typing import Annotated, Literal

from pydantic import BaseModel, StringConstraints

from app.core.identity import Role
from app.core.schemas import EmailText, Name, Password, Slug, StrictModel
from app.tenants.schemas import TenantPublic
from app.users.schemas import UserPublic

OpaqueToken = Annotated[str, StringConstraints(min_length=1, max_length=512)]


class RegisterRequest(StrictModel):
    """Self-service sign-up: a new tenant and its owner."""

    tenant: Slug
    tenant_name: Name
    email: EmailText
    password: Password


class RegisterResponse(BaseModel):
    """The tenant and owner just created."""

    tenant: TenantPublic
    user: UserPublic


class TokenResponse(BaseModel):
    """A fresh access token and its refresh token."""

    access_token: str
    token_type: Literal["bearer"] = "bearer"  # noqa: S105 (a token type, not a secret)
    expires_in: int
    refresh_token: str


class RefreshRequest(StrictModel):
    """Exchange a refresh token for a new pair."""

    refresh_token: OpaqueToken


class LogoutRequest(StrictModel):
    """End the session this refresh token belongs to."""

    refresh_token: OpaqueToken


class MeResponse(BaseModel):
    """The caller, as Warden sees them."""

    id: str
    kind: str
    email: str | None
    role: Role
    tenant: str
    tenant_id: uuid.UUID
    scopes: list[str]
