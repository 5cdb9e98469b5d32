"""Email normalisation: the one canonical form every part of Warden stores, compares and matches.

Users are stored, looked up at login, matched by access policies and taken from IdP claims in
this form, so an address written differently (case, compatibility characters such as fullwidth
letters, surrounding whitespace, a fully-qualified domain's trailing dot) is still the same
address everywhere. An address that cannot be normalised is refused, never used raw.
"""

from __future__ import annotations

import unicodedata
from typing import Final

MAX_EMAIL_LENGTH: Final = 254


def _nfkc_lower(raw: str) -> str:
    # A second NFKC pass because lower() can turn an NFKC string into a non-NFKC one
    # (e.g. U+03AA + U+0301); without it normalisation would not be idempotent.
    once = unicodedata.normalize("NFKC", raw.strip()).lower()
    return unicodedata.normalize("NFKC", once)


def _has_forbidden_char(text: str) -> bool:
    # Category C covers control (Cc), format (Cf: zero-width and bidi overrides used for
    # spoofing), surrogate, private-use and unassigned code points; none belongs in an address.
    return any(ch.isspace() or unicodedata.category(ch).startswith("C") for ch in text)


def canonical_address(raw: str, what: str = "email") -> str:
    """The canonical form of an address (or of a whole-address glob): trimmed, NFKC, lower
    case, without the root label's trailing dot (`evil.example.` is `evil.example`).

    Raises ValueError, naming `what`, unless the result is one `local@domain`."""
    if not isinstance(raw, str):
        raise ValueError(f"{what} must be a string")
    text = _nfkc_lower(raw)
    if not text:
        raise ValueError(f"{what} is empty")
    if len(text) > MAX_EMAIL_LENGTH:
        raise ValueError(f"{what} is longer than {MAX_EMAIL_LENGTH} characters")
    if _has_forbidden_char(text):
        raise ValueError(f"{what} contains whitespace or control characters")
    if text.count("@") != 1:
        raise ValueError(f"{what} must contain exactly one '@'")
    local, domain = text.split("@")
    domain = domain.rstrip(".")
    if not local or not domain:
        raise ValueError(f"{what} needs a non-empty local part and domain")
    return f"{local}@{domain}"


def normalize_email(raw: str) -> str:
    """The canonical form of an email address; ValueError unless it is one address."""
    return canonical_address(raw, "email")
