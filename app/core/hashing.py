"""The one digest for secrets that are long random strings (API keys, refresh tokens, session
cookies, CSRF tokens, token ids): SHA-256 in hex. They need no stretching; passwords do and use
argon2id (`app.core.passwords`)."""

from __future__ import annotations

import hashlib


def sha256_hex(value: str) -> str:
    """SHA-256 of the UTF-8 text, as 64 hex digits."""
    return hashlib.sha256(value.encode()).hexdigest()
