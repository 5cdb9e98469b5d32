"""Request and response models of trusted issuers."""

from __future__ import annotations

import json
import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import Field, StringConstraints, field_validator, model_validator

from app.core.schemas import PublicModel, StrictModel

Algorithm = Literal["RS256", "RS384", "RS512", "ES256", "ES384", "ES512"]
# A claim name may be a URL (Auth0 namespaced claims) or a dotted path (`realm_access.roles`).
ClaimName = Annotated[
    str, StringConstraints(min_length=1, max_length=128, pattern=r"^[\x21-\x7e]+$")
]
IssuerText = Annotated[str, StringConstraints(min_length=1, max_length=512)]
Audience = Annotated[str, StringConstraints(min_length=1, max_length=512)]
JwksUri = Annotated[str, StringConstraints(min_length=8, max_length=2048)]
PemText = Annotated[str, StringConstraints(min_length=1, max_length=16_384)]
MAX_INLINE_JWKS_BYTES = 64 * 1024


def _printable(value: str, what: str) -> str:
    if value != value.strip():
        raise ValueError(f"{what} must not start or end with whitespace")
    if any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in value):
        raise ValueError(f"{what} must not contain control characters")
    return value


class ClaimMapping(StrictModel):
    """Which claims of a satellite token carry the subject, the email and the roles."""

    subject: ClaimName = "sub"
    email: ClaimName = "email"
    roles: ClaimName = "roles"


class IssuerCreate(StrictModel):
    """`POST /issuers`: exactly one of `jwks_uri`, `jwks`, `public_keys_pem`."""

    issuer: IssuerText = Field(description="Matched exactly against the token's `iss`.")
    jwks_uri: JwksUri | None = None
    jwks: dict[str, Any] | None = Field(default=None, description="An inline JWK Set.")
    public_keys_pem: list[PemText] | None = Field(default=None, min_length=1, max_length=20)
    audiences: list[Audience] = Field(min_length=1, max_length=20)
    algorithms: list[Algorithm] = Field(min_length=1, max_length=6)
    claim_mapping: ClaimMapping = Field(default_factory=ClaimMapping)

    @field_validator("issuer")
    @classmethod
    def _issuer(cls, value: str) -> str:
        return _printable(value, "issuer")

    @field_validator("audiences")
    @classmethod
    def _audiences(cls, value: list[str]) -> list[str]:
        for audience in value:
            _printable(audience, "audience")
        return list(dict.fromkeys(value))

    @field_validator("algorithms")
    @classmethod
    def _algorithms(cls, value: list[str]) -> list[str]:
        return list(dict.fromkeys(value))

    @field_validator("jwks")
    @classmethod
    def _jwks_size(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value is not None and len(json.dumps(value)) > MAX_INLINE_JWKS_BYTES:
            raise ValueError("an inline JWKS may not exceed 64 KiB")
        return value

    @model_validator(mode="after")
    def _one_key_source(self) -> IssuerCreate:
        given = [
            name
            for name in ("jwks_uri", "jwks", "public_keys_pem")
            if getattr(self, name) is not None
        ]
        if len(given) != 1:
            raise ValueError("give exactly one of jwks_uri, jwks, public_keys_pem")
        return self


class IssuerPublic(PublicModel):
    """A trusted issuer as the API shows it (only public key material is ever stored)."""

    id: uuid.UUID
    issuer: str
    jwks_uri: str | None
    jwks: dict[str, Any] | None
    public_keys_pem: list[str] | None
    audiences: list[str]
    algorithms: list[str]
    claim_mapping: ClaimMapping
    key_ids: list[str] | None = Field(
        default=None,
        description="The `kid`s of inline keys (a PEM key's is its RFC 7638 thumbprint).",
    )
    created_at: datetime
    updated_at: datetime
