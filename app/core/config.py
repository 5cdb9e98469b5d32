"""Settings read from the environment (and `.env`); the single source of configuration."""

from __future__ import annotations

from functools import lru_cache
from typing import Annotated, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


def _split_csv(value: object) -> object:
    if isinstance(value, str):
        return [item.strip() for item in value.split(",") if item.strip()]
    return value


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
    audit_retention_days: int = Field(default=90, ge=1)
    log_level: Literal["debug", "info", "warning", "error"] = "info"

    public_url: str = "http://127.0.0.1:8000"
    jwt_issuer: str | None = None
    jwt_audience: str = "warden"
    access_token_ttl_seconds: int = Field(default=900, ge=60, le=86_400)
    refresh_token_ttl_seconds: int = Field(default=30 * 86_400, ge=300)
    jwt_leeway_seconds: int = Field(default=30, ge=0, le=300)
    trust_forwarded_for: bool = False
    hsts: bool = False
    # argon2id cost; production defaults follow OWASP guidance, tests lower them for speed.
    argon2_time_cost: int = Field(default=3, ge=1)
    argon2_memory_cost: int = Field(default=65_536, ge=8)
    argon2_parallelism: int = Field(default=4, ge=1)
    upstream_timeout_seconds: float = Field(default=10.0, gt=0, le=300)
    audit_flush_interval_ms: int = Field(default=200, ge=10, le=5_000)
    host: str = "127.0.0.1"
    port: int = 8000
    internal_port: int = 8001

    @field_validator("warden_master_key", "upstream_allowed_hosts", "cors_origins", mode="before")
    @classmethod
    def _csv(cls, value: object) -> object:
        return _split_csv(value)

    @property
    def issuer(self) -> str:
        """The `iss` of Warden's own tokens (defaults to the public URL)."""
        return (self.jwt_issuer or self.public_url).rstrip("/")

    @property
    def is_sqlite(self) -> bool:
        """True when the embedded SQLite database is in use."""
        return self.database_url.startswith("sqlite")


@lru_cache
def get_settings() -> Settings:
    """The process-wide settings, read once."""
    return Settings()
