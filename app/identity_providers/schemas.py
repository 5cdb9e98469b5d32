"""Request and response models of `/identity-providers`."""

from __future__ import annotations

import re
import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import Field, StringConstraints, field_validator, model_validator

from app.core.schemas import PublicModel, StrictModel

NAME_PATTERN = r"^[a-z0-9][a-z0-9-]{0,63}$"
ProviderName = Annotated[str, StringConstraints(pattern=NAME_PATTERN, max_length=64)]
ClaimName = Annotated[
    str, StringConstraints(pattern=r"^[A-Za-z0-9_:/.-]{1,128}$", min_length=1, max_length=128)
]
ClientAuth = Literal["client_secret_basic", "client_secret_post", "private_key_jwt"]
_SCOPE = re.compile(r"\A[\x21\x23-\x5b\x5d-\x7e]{1,64}\Z")
_DOMAIN = re.compile(r"\A(?=.{1,253}\Z)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}\Z")


class ClaimMapping(StrictModel):
    """Which ID-token claims carry the subject, email, display name and groups."""

    subject: ClaimName = "sub"
    email: ClaimName = "email"
    name: ClaimName = "name"
    groups: ClaimName = "groups"


def _check_scopes(value: list[str]) -> list[str]:
    for scope in value:
        if not _SCOPE.match(scope):
            raise ValueError(f"scope {scope!r} is not a valid OAuth scope token")
    if "openid" not in value:
        raise ValueError("scopes must include openid")
    return list(dict.fromkeys(value))


def _check_domains(value: list[str]) -> list[str]:
    cleaned = []
    for domain in value:
        text = domain.strip().lower().removeprefix("@")
        if not _DOMAIN.match(text):
            raise ValueError(f"{domain!r} is not a domain name")
        cleaned.append(text)
    return list(dict.fromkeys(cleaned))


class IdentityProviderCreate(StrictModel):
    """`POST /identity-providers`."""

    name: ProviderName
    issuer: Annotated[str, StringConstraints(min_length=8, max_length=512)]
    client_id: Annotated[str, StringConstraints(min_length=1, max_length=255)]
    client_auth: ClientAuth = "client_secret_basic"
    client_secret: Annotated[str, StringConstraints(min_length=1, max_length=1024)] | None = None
    scopes: list[str] = Field(default_factory=lambda: ["openid", "email", "profile"], max_length=20)
    claim_mapping: ClaimMapping = Field(default_factory=ClaimMapping)
    allowed_email_domains: list[str] = Field(default_factory=list, max_length=100)
    # Never above member, as for satellite tokens: an IdP cannot mint admins.
    default_role: Literal["member", "viewer"] = "member"
    jit_provisioning: bool = False
    enabled: bool = True

    @field_validator("scopes")
    @classmethod
    def _scopes(cls, value: list[str]) -> list[str]:
        return _check_scopes(value)

    @field_validator("allowed_email_domains")
    @classmethod
    def _domains(cls, value: list[str]) -> list[str]:
        return _check_domains(value)

    @field_validator("client_id", "client_secret")
    @classmethod
    def _printable(cls, value: str | None) -> str | None:
        if value is not None and not value.isprintable():
            raise ValueError("must be printable")
        return value

    @model_validator(mode="after")
    def _secret_matches_auth(self) -> IdentityProviderCreate:
        if self.client_auth == "private_key_jwt" and self.client_secret is not None:
            raise ValueError("client_secret: not used with private_key_jwt")
        if self.client_auth != "private_key_jwt" and self.client_secret is None:
            raise ValueError(f"client_secret: required with {self.client_auth}")
        return self


class IdentityProviderUpdate(StrictModel):
    """`PATCH /identity-providers/{id}`: the fields given are changed (discovery re-checked)."""

    issuer: Annotated[str, StringConstraints(min_length=8, max_length=512)] | None = None
    client_id: Annotated[str, StringConstraints(min_length=1, max_length=255)] | None = None
    client_secret: Annotated[str, StringConstraints(min_length=1, max_length=1024)] | None = None
    scopes: list[str] | None = Field(default=None, max_length=20)
    claim_mapping: ClaimMapping | None = None
    allowed_email_domains: list[str] | None = Field(default=None, max_length=100)
    default_role: Literal["member", "viewer"] | None = None
    jit_provisioning: bool | None = None
    enabled: bool | None = None

    @field_validator("scopes")
    @classmethod
    def _scopes(cls, value: list[str] | None) -> list[str] | None:
        return None if value is None else _check_scopes(value)

    @field_validator("allowed_email_domains")
    @classmethod
    def _domains(cls, value: list[str] | None) -> list[str] | None:
        return None if value is None else _check_domains(value)


class SecretView(PublicModel):
    """A write-only secret as reads show it."""

    fingerprint: str
    last4: str


class IdentityProviderPublic(PublicModel):
    """An identity provider as the API shows it (never the secret)."""

    id: uuid.UUID
    name: str
    issuer: str
    client_id: str
    client_auth: str
    client_secret: SecretView | None = None
    client_jwk: dict[str, Any] | None = None
    scopes: list[str]
    claim_mapping: dict[str, str]
    allowed_email_domains: list[str]
    default_role: str
    jit_provisioning: bool
    enabled: bool
    redirect_uri: str
    backchannel_logout_uri: str
    sign_in_url: str
    authorization_endpoint: str
    end_session_endpoint: str | None
    created_at: datetime
    updated_at: datetime


class SignInLink(PublicModel):
    """An enabled provider of a tenant and where a browser starts signing in through it."""

    name: str
    issuer: str
    start_url: str
