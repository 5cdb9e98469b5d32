"""Envelope encryption under the master keys from `WARDEN_MASTER_KEY` (AES-256-GCM).

Ciphertexts look like `v1.<kid>.<urlsafe-b64(nonce || ciphertext+tag)>`; the key id names the
master key, so rotation adds a key, re-encrypts rows in the background and retires the old one.
Associated data binds a ciphertext to its row (tenant + object), so a ciphertext copied to
another row or tenant fails to decrypt.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import secrets
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

PREFIX = "v1"


class MasterKeyError(RuntimeError):
    """The master key setting is missing or malformed."""


class DecryptionError(RuntimeError):
    """A ciphertext could not be decrypted (wrong key, wrong row, tampered)."""


def generate_master_key() -> str:
    """A fresh 32-byte master key, URL-safe base64 (what `WARDEN_MASTER_KEY` expects)."""
    return base64.urlsafe_b64encode(secrets.token_bytes(32)).decode().rstrip("=")


def _decode_key(text: str) -> bytes:
    padded = text.strip() + "=" * (-len(text.strip()) % 4)
    try:
        raw = base64.urlsafe_b64decode(padded)
    except (binascii.Error, ValueError) as exc:
        raise MasterKeyError("WARDEN_MASTER_KEY entries must be URL-safe base64") from exc
    if len(raw) != 32:
        raise MasterKeyError("each WARDEN_MASTER_KEY entry must decode to 32 bytes")
    return raw


def key_id(raw: bytes) -> str:
    """A short, stable, non-secret name for a master key."""
    return hashlib.sha256(b"warden-kid|" + raw).hexdigest()[:12]


@dataclass(frozen=True)
class KeyRing:
    """The master keys: the first encrypts, all of them decrypt."""

    keys: dict[str, AESGCM]
    active_kid: str

    @classmethod
    def from_settings(cls, entries: list[str]) -> KeyRing:
        """Build the ring from the setting's entries (first one active)."""
        if not entries:
            raise MasterKeyError(
                "WARDEN_MASTER_KEY is not set; generate one with `warden keys generate-master`"
            )
        keys: dict[str, AESGCM] = {}
        active = ""
        for entry in entries:
            raw = _decode_key(entry)
            kid = key_id(raw)
            keys.setdefault(kid, AESGCM(raw))
            active = active or kid
        return cls(keys=keys, active_kid=active)

    def encrypt(self, plaintext: bytes, associated_data: str) -> str:
        """Encrypt under the active key, bound to `associated_data`."""
        nonce = os.urandom(12)
        sealed = self.keys[self.active_kid].encrypt(nonce, plaintext, associated_data.encode())
        body = base64.urlsafe_b64encode(nonce + sealed).decode().rstrip("=")
        return f"{PREFIX}.{self.active_kid}.{body}"

    def decrypt(self, token: str, associated_data: str) -> bytes:
        """Decrypt a value made by `encrypt` with the same associated data."""
        try:
            prefix, kid, body = token.split(".", 2)
        except ValueError as exc:
            raise DecryptionError("malformed ciphertext") from exc
        if prefix != PREFIX:
            raise DecryptionError("unknown ciphertext version")
        aead = self.keys.get(kid)
        if aead is None:
            raise DecryptionError(f"master key {kid} is not configured")
        try:
            blob = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
            return aead.decrypt(blob[:12], blob[12:], associated_data.encode())
        except (InvalidTag, ValueError, binascii.Error) as exc:
            raise DecryptionError("ciphertext does not decrypt for this row") from exc

    def fingerprint(self, tenant_id: object, value: str) -> str:
        """A keyed fingerprint of a write-only secret: recognisable, no offline guessing."""
        key = hashlib.sha256(f"fingerprint|{self.active_kid}|{tenant_id}".encode()).digest()
        return hmac.new(key, value.encode(), hashlib.sha256).hexdigest()[:16]

    @staticmethod
    def kid_of(token: str) -> str:
        """The master key id a ciphertext was made with."""
        return token.split(".", 2)[1] if token.count(".") >= 2 else ""
