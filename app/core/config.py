"""Settings read from the environment (and `.env`); the single source of configuration."""

from __future__ import annotations

import os
import re
from functools import lru_cache
from typing import Annotated, Literal

from pydantic import Field, field_validator
from pydantic_settings import (
    BaseSettings,
    DotEnvSettingsSource,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

# Names the dotenv file settings are read from instead of `.env` in the working directory; set
# but empty, no dotenv file is read at all (the test suite runs so, whatever `.env` lies around).
ENV_FILE_VARIABLE = "WARDEN_ENV_FILE"


def _split_csv(value: object) -> object:
    if isinstance(value, str):
        return [item.strip() for item in value.split(",") if item.strip()]
    return value


IDENTITY_SOURCES = frozenset({"id", "email", "tenant", "tenant_id", "role", "kind"})
DEFAULT_IDENTITY_HEADERS = {"X-User-ID": "id", "X-User-Email": "email", "X-Tenant": "tenant"}
_HEADER_NAME = re.compile(r"\A[A-Za-z][A-Za-z0-9-]{0,63}\Z")
_CLAIM_SOURCE = re.compile(r"\Aclaim:[A-Za-z0-9_.:-]{1,64}\Z")
# Headers a gateway must never take from an auth answer and hand to an upstream.
_RESERVED_HEADERS = frozenset(
    "authorization cookie set-cookie host content-length content-type connection keep-alive "
    "transfer-encoding upgrade te trailer proxy-authorization www-authenticate retry-after "
    "x-forwarded-for x-forwarded-host x-forwarded-uri x-forwarded-method x-request-id".split()
)


def parse_identity_headers(value: str) -> dict[str, str]:
    """`X-User-ID=id,X-User-Email=email` → {header: source}; sources are the principal's `id`,
    `email`, `tenant` (slug), `tenant_id`, `role`, `kind`, or `claim:<name>` (a token claim)."""
    mapping: dict[str, str] = {}
    for item in (part.strip() for part in value.split(",")):
        if not item:
            continue
        header, sep, source = (side.strip() for side in item.partition("="))
        if not sep or not _HEADER_NAME.match(header):
            raise ValueError(f"identity header {header!r}: expected Header-Name=source")
        if header.lower() in _RESERVED_HEADERS:
            raise ValueError(f"identity header {header!r} is reserved")
        if header.lower() in {name.lower() for name in mapping}:
            raise ValueError(f"identity header {header!r} is listed twice")
        if source not in IDENTITY_SOURCES and not _CLAIM_SOURCE.match(source):
            raise ValueError(f"identity header {header!r}: unknown source {source!r}")
        mapping[header] = source
    if len(mapping) > 20:
        raise ValueError("at most 20 identity headers")
    return mapping


class Settings(BaseSettings):
    """Every setting Warden reads; names match PRODUCT.md and `.env.example`."""

    model_config = SettingsConfigDict(env_file=".env", extra="ignore", case_sensitive=False)

    database_url: str = "sqlite:///warden.db"
    redis_url: str | None = None
    warden_master_key: Annotated[list[str], NoDecode] = Field(default_factory=list)
    allow_signup: bool = True
    upstream_allowed_hosts: Annotated[list[str], NoDecode] = Field(default_factory=list)
    cors_origins: Annotated[list[str], NoDecode] = Field(default_factory=list)
    session_cookie_secure: bool = True
    global_rate_limit: str = "600/minute"
    login_rate_limit: str = "10/minute"
    # Lookups of API keys that turn out not to exist, per client address and minute; past it, an
    # address's further unknown keys are refused without a database lookup (cached keys, and
    # every other address, are unaffected).
    api_key_miss_budget: int = Field(default=30, ge=1, le=100_000)
    audit_retention_days: int = Field(default=90, ge=1)
    # Every dependency call is bounded, so a frozen database or Redis turns into a 503 with
    # Retry-After instead of a hung request. Redis: socket connect and read/write timeout of
    # every client (each call makes at most two attempts).
    redis_timeout_seconds: float = Field(default=0.5, gt=0, le=30)
    # PostgreSQL: opening a connection (libpq counts whole seconds, at least 2), a statement
    # (the server cancels it; the client gives up one second later if the server cannot answer),
    # and waiting for a free pooled connection.
    database_connect_timeout_seconds: int = Field(default=3, ge=1, le=300)
    database_statement_timeout_seconds: float = Field(default=5.0, gt=0, le=3600)
    database_pool_timeout_seconds: float = Field(default=5.0, gt=0, le=300)
    # SQLite: how long a statement waits for another writer's lock.
    database_busy_timeout_seconds: float = Field(default=30.0, gt=0, le=3600)
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    # `auto`: readable lines when stdout is a terminal, JSON otherwise (see app.core.logging).
    log_format: Literal["auto", "json", "console"] = "auto"

    public_url: str = "http://127.0.0.1:8000"
    jwt_issuer: str | None = None
    jwt_audience: str = "warden"
    access_token_ttl_seconds: int = Field(default=900, ge=60, le=86_400)
    refresh_token_ttl_seconds: int = Field(default=30 * 86_400, ge=300)
    jwt_leeway_seconds: int = Field(default=30, ge=0, le=300)
    trust_forwarded_for: bool = False
    hsts: bool = False
    # Gateways (`/authz/forward`): the cookie that may carry the token, and the identity headers
    # every 200 answer sets (`Header=source,…`; see `parse_identity_headers`).
    forward_auth_cookie: str = Field(default="warden_token", pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    forward_identity_headers: Annotated[dict[str, str], NoDecode] = Field(
        default_factory=lambda: dict(DEFAULT_IDENTITY_HEADERS)
    )
    # argon2id cost; production defaults follow OWASP guidance, tests lower them for speed.
    argon2_time_cost: int = Field(default=3, ge=1)
    argon2_memory_cost: int = Field(default=65_536, ge=8)
    argon2_parallelism: int = Field(default=4, ge=1)
    # A deadline for a whole forwarded exchange: waiting for a connection, connecting, sending,
    # the answer and its whole body (a streamed answer is cut when it passes).
    upstream_timeout_seconds: float = Field(default=10.0, gt=0, le=300)
    # Open connections to upstreams per process (callers beyond it wait for a free one, within
    # the upstream timeout).
    upstream_max_connections: int = Field(default=64, ge=1, le=10_000)
    # Of those, at most this many to one upstream origin (scheme, host, port): a slow upstream
    # holds its share of the pool, never all of it.
    upstream_max_connections_per_origin: int = Field(default=16, ge=1, le=10_000)
    # Each upstream socket's receive buffer: bounds what a stream whose caller stopped reading
    # holds (whatever the event loop), and one connection's throughput (~2x this per round trip).
    upstream_receive_buffer_bytes: int = Field(default=128 * 1024, ge=16 * 1024, le=16 * 1024**2)
    # Trusted issuers' JWKS: total fetch deadline, floor between unknown-kid refetches (and
    # between retries of a failing IdP), and how long expired keys serve while the IdP is down.
    jwks_timeout_seconds: float = Field(default=3.0, gt=0, le=30)
    jwks_refetch_floor_seconds: float = Field(default=10.0, ge=1, le=3600)
    jwks_stale_seconds: int = Field(default=86_400, ge=0, le=7 * 86_400)
    audit_flush_interval_ms: int = Field(default=200, ge=10, le=5_000)
    host: str = "127.0.0.1"
    port: int = 8000
    # Browser sessions (BFF): tenants may override both timeouts in their settings.
    session_idle_timeout_seconds: int = Field(default=1800, ge=60)
    session_absolute_timeout_seconds: int = Field(default=43_200, ge=300)
    # The internal (east-west) app: session exchange for service principals only.
    internal_host: str = "127.0.0.1"
    internal_port: int = 8001
    internal_client_cert_fingerprints: Annotated[list[str], NoDecode] = Field(default_factory=list)
    internal_client_cert_header: str = "x-forwarded-client-cert"

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Arguments, then the environment, then the dotenv file (`WARDEN_ENV_FILE` or `.env`)."""
        if ENV_FILE_VARIABLE in os.environ:
            dotenv_settings = DotEnvSettingsSource(
                settings_cls, env_file=os.environ[ENV_FILE_VARIABLE] or None
            )
        return init_settings, env_settings, dotenv_settings, file_secret_settings

    @field_validator(
        "warden_master_key",
        "upstream_allowed_hosts",
        "cors_origins",
        "internal_client_cert_fingerprints",
        mode="before",
    )
    @classmethod
    def _csv(cls, value: object) -> object:
        return _split_csv(value)

    @field_validator("forward_identity_headers", mode="before")
    @classmethod
    def _identity_headers(cls, value: object) -> object:
        return parse_identity_headers(value) if isinstance(value, str) else value

    @property
    def issuer(self) -> str:
        """The `iss` of Warden's own tokens (defaults to the public URL)."""
        return (self.jwt_issuer or self.public_url).rstrip("/")


@lru_cache
def get_settings() -> Settings:
    """The process-wide settings, read once."""
    return Settings()
