"""Password hashing (argon2id through passlib's CryptContext) and the password rules."""

from __future__ import annotations

from functools import lru_cache
from importlib import resources

from passlib.context import CryptContext

from app.core.config import get_settings

MIN_PASSWORD_LENGTH = 10
MAX_PASSWORD_LENGTH = 256


@lru_cache
def password_context() -> CryptContext:
    """argon2id for new hashes; bcrypt only to verify imported legacy hashes."""
    settings = get_settings()
    return CryptContext(
        schemes=["argon2", "bcrypt"],
        deprecated="auto",
        argon2__type="ID",
        argon2__time_cost=settings.argon2_time_cost,
        argon2__memory_cost=settings.argon2_memory_cost,
        argon2__parallelism=settings.argon2_parallelism,
    )


@lru_cache
def common_passwords() -> frozenset[str]:
    """The shipped list of common passwords, lower-cased."""
    text = resources.files("app.core").joinpath("data/common_passwords.txt").read_text("utf-8")
    return frozenset(
        line.strip().lower() for line in text.splitlines() if line and not line.startswith("#")
    )


def password_problem(password: str, *, email: str | None = None) -> str | None:
    """Why a new password is unacceptable, or None when it is fine."""
    if len(password) < MIN_PASSWORD_LENGTH:
        return f"password must be at least {MIN_PASSWORD_LENGTH} characters"
    if len(password) > MAX_PASSWORD_LENGTH:
        return f"password must be at most {MAX_PASSWORD_LENGTH} characters"
    lowered = password.lower()
    if lowered in common_passwords():
        return "password is too common"
    if len(set(password)) < 4:
        return "password is too repetitive"
    if email and lowered == email.lower():
        return "password must not be the email address"
    return None


def hash_password(password: str) -> str:
    """Hash a password with the current argon2id parameters."""
    return str(password_context().hash(password))


@lru_cache
def _dummy_hash() -> str:
    return hash_password("warden-timing-equaliser-password")


def verify_password(password: str, password_hash: str | None) -> tuple[bool, str | None]:
    """Check a password; returns (ok, new_hash_if_the_stored_one_needs_upgrading).

    With no stored hash (unknown account) a dummy hash is still verified, so an unknown email
    and a wrong password take comparable time.
    """
    if len(password) > MAX_PASSWORD_LENGTH:
        password_context().verify("x", password_hash or _dummy_hash())
        return False, None
    if password_hash is None:
        password_context().verify(password, _dummy_hash())
        return False, None
    try:
        ok, new_hash = password_context().verify_and_update(password, password_hash)
    except (ValueError, TypeError):
        # e.g. a >72-byte password against a legacy bcrypt hash: a mismatch, not an error.
        return False, None
    return bool(ok), new_hash
