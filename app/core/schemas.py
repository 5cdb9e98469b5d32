"""Base classes for request and response models."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, StringConstraints

SLUG_PATTERN = r"^[a-z0-9-]{3,64}$"
Slug = Annotated[str, StringConstraints(pattern=SLUG_PATTERN, min_length=3, max_length=64)]
Password = Annotated[str, StringConstraints(min_length=1, max_length=256)]
EmailText = Annotated[str, StringConstraints(min_length=3, max_length=254)]
Name = Annotated[str, StringConstraints(min_length=1, max_length=200, strip_whitespace=True)]


class StrictModel(BaseModel):
    """Request bodies: unknown fields are rejected with 422."""

    model_config = ConfigDict(extra="forbid")


class PublicModel(BaseModel):
    """Response bodies, built from ORM rows."""

    model_config = ConfigDict(from_attributes=True)
