"""Email normalisation shared by accounts and access policies."""

from __future__ import annotations

import unicodedata

MAX_EMAIL_LENGTH = 254


def normalize_email(raw: str) -> str:
    """Trim, NFKC-normalise and lower-case; refuse anything that is not one plausible address."""
    email = unicodedata.normalize("NFKC", raw.strip()).lower()
    if not email:
        raise ValueError("email is empty")
    if len(email) > MAX_EMAIL_LENGTH:
        raise ValueError(f"email is longer than {MAX_EMAIL_LENGTH} characters")
    if any(ch.isspace() or unicodedata.category(ch).startswith("C") for ch in email):
        raise ValueError("email contains whitespace or control characters")
    if email.count("@") != 1:
        raise ValueError("email must contain exactly one @")
    local, domain = email.split("@")
    if not local or not domain:
        raise ValueError("email needs a local part and a domain")
    if "." not in domain or domain.startswith(".") or domain.endswith("."):
        raise ValueError("email domain is not valid")
    return email
