"""Request and response models of endpoints."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated

from pydantic import Field, StringConstraints, field_validator

from app.core.hosts import bindable_host
from app.core.schemas import Name, PublicModel, Slug, StrictModel

Description = Annotated[str, StringConstraints(max_length=2000)]
Url = Annotated[str, StringConstraints(min_length=8, max_length=2048)]
Path = Annotated[str, StringConstraints(min_length=1, max_length=512, pattern=r"^/[\x21-\x7e]*$")]


def _check_host(value: str | None) -> str | None:
    if value is None:
        return None
    return bindable_host(value)


class EndpointCreate(StrictModel):
    """`POST /endpoints`."""

    name: Name
    slug: Slug
    description: Description | None = None
    upstream_url: Url | None = None
    host: str | None = Field(default=None, max_length=253)
    path_prefix: Path | None = None
    exempt_paths: list[Path] = Field(default_factory=list, max_length=50)
    require_host_audience: bool = False
    is_active: bool = True

    _host = field_validator("host")(classmethod(lambda cls, v: _check_host(v)))


class EndpointUpdate(StrictModel):
    """`PATCH /endpoints/{slug}`: any subset (null clears optional fields)."""

    name: Name | None = None
    description: Description | None = None
    upstream_url: Url | None = None
    host: str | None = Field(default=None, max_length=253)
    path_prefix: Path | None = None
    exempt_paths: list[Path] | None = Field(default=None, max_length=50)
    require_host_audience: bool | None = None
    is_active: bool | None = None

    _host = field_validator("host")(classmethod(lambda cls, v: _check_host(v)))


class CredentialInfo(PublicModel):
    """What can be shown of an upstream credential: never the value."""

    header: str
    fingerprint: str
    last4: str
    key_id: str
    updated_at: datetime


class EndpointPublic(PublicModel):
    """An endpoint as the API shows it."""

    id: uuid.UUID
    name: str
    slug: str
    description: str | None
    upstream_url: str | None
    host: str | None
    path_prefix: str | None
    exempt_paths: list[str]
    require_host_audience: bool
    is_active: bool
    created_at: datetime
    updated_at: datetime
    credential: CredentialInfo | None = None
