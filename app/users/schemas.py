"""Request and response models of the user domain."""

from __future__ import annotations

import uuid
from datetime import datetime

from app.core.identity import Role
from app.core.schemas import EmailText, Password, PublicModel, Slug, StrictModel


class UserPublic(PublicModel):
    """A user as the API shows it (never the hash)."""

    id: uuid.UUID
    email: str
    role: Role
    is_active: bool
    created_at: datetime


class UserCreate(StrictModel):
    """`POST /users`."""

    email: EmailText
    password: Password
    role: Role = Role.MEMBER


class UserUpdate(StrictModel):
    """`PATCH /users/{id}`: any subset."""

    role: Role | None = None
    is_active: bool | None = None
    password: Password | None = None


class LoginRequest(StrictModel):
    """Email + password within one tenant."""

    email: EmailText
    password: Password
    tenant: Slug
