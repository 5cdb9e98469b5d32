"""Warden's own signing keys: ES256, private halves encrypted under the master key.

Each process holds the key ring in memory (keys parsed once). The newest unretired key signs;
retired keys stay published in the JWKS until every token they signed has expired. A token
naming an unknown `kid` triggers a reload from the database (at most once per second), so a
rotation made by another process is picked up without a restart.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import structlog
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.core import jose
from app.core.crypto import KeyRing
from app.core.types import utcnow
from app.credentials.models import SigningKey

log = structlog.get_logger("warden.keys")
ALG = "ES256"
RELOAD_FLOOR_SECONDS = 1.0


def _associated_data(kid: str) -> str:
    return f"signing-key|{kid}"


def new_signing_key(master: KeyRing) -> SigningKey:
    """Generate a key pair and seal its private half."""
    private = ec.generate_private_key(ec.SECP256R1())
    kid = uuid.uuid4().hex[:16]
    pem = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return SigningKey(
        kid=kid,
        alg=ALG,
        public_jwk=jose.public_jwk(private.public_key(), kid=kid, alg=ALG),
        private_key_ciphertext=master.encrypt(pem, _associated_data(kid)),
    )


async def rotate_signing_key(session: AsyncSession, master: KeyRing) -> SigningKey:
    """Retire the current keys and add a new active one (in the caller's transaction)."""
    now = utcnow()
    current = (
        await session.execute(select(SigningKey).where(SigningKey.retired_at.is_(None)))  # type: ignore[union-attr]
    ).scalars()
    for key in current:
        key.retired_at = now
    key = new_signing_key(master)
    session.add(key)
    await session.flush()
    return key


@dataclass(frozen=True)
class LoadedKey:
    """A signing key parsed once."""

    kid: str
    created_at: datetime
    retired_at: datetime | None
    public: jose.VerificationKey
    public_jwk: dict[str, Any]
    private: Any | None


class SigningKeyring:
    """The in-process view of the signing keys."""

    def __init__(
        self,
        sessionmaker: async_sessionmaker[AsyncSession],
        master: KeyRing,
        publish_for: timedelta,
    ) -> None:
        self.sessionmaker = sessionmaker
        self.master = master
        self.publish_for = publish_for
        self._keys: dict[str, LoadedKey] = {}
        self._active: LoadedKey | None = None
        self._last_reload = 0.0
        self._lock = asyncio.Lock()

    async def load(self, *, create_if_missing: bool = True) -> None:
        """Read the keys from the database; create the first one on a fresh install."""
        async with self._lock:
            async with self.sessionmaker() as session, session.begin():
                rows = list((await session.execute(select(SigningKey))).scalars())
                if not rows and create_if_missing:
                    key = new_signing_key(self.master)
                    session.add(key)
                    rows = [key]
                    log.info("signing_key_created", kid=key.kid)
            keys: dict[str, LoadedKey] = {}
            for row in rows:
                keys[row.kid] = self._parse(row)
            self._keys = keys
            active = [k for k in keys.values() if k.retired_at is None and k.private is not None]
            self._active = max(active, key=lambda k: k.created_at) if active else None
            self._last_reload = time.monotonic()

    def _parse(self, row: SigningKey) -> LoadedKey:
        public = jose.key_from_jwk(row.public_jwk, row.alg)
        private = None
        if row.retired_at is None:
            pem = self.master.decrypt(row.private_key_ciphertext, _associated_data(row.kid))
            private = serialization.load_pem_private_key(pem, password=None)
        return LoadedKey(
            kid=row.kid,
            created_at=row.created_at,
            retired_at=row.retired_at,
            public=jose.VerificationKey(kid=row.kid, alg=row.alg, key=public.key),
            public_jwk=row.public_jwk,
            private=private,
        )

    @property
    def active(self) -> LoadedKey:
        """The key that signs new tokens."""
        if self._active is None:
            raise RuntimeError("no active signing key; run `warden keys rotate`")
        return self._active

    def sign(self, claims: dict[str, Any]) -> str:
        """Sign claims with the active key."""
        key = self.active
        return jose.sign(claims, key.private, kid=key.kid, alg=ALG)

    async def resolve(self, kid: str | None) -> jose.VerificationKey:
        """The verification key for a `kid`, reloading once if another process rotated."""
        if kid is None:
            raise jose.TokenError("token has no kid")
        key = self._keys.get(kid)
        if key is None and time.monotonic() - self._last_reload >= RELOAD_FLOOR_SECONDS:
            await self.load(create_if_missing=False)
            key = self._keys.get(kid)
        if key is None:
            raise jose.TokenError("unknown kid")
        if key.retired_at is not None and utcnow() - key.retired_at > self.publish_for:
            raise jose.TokenError("signing key retired")
        return key.public

    def jwks(self) -> dict[str, list[dict[str, Any]]]:
        """The published key set: active keys and recently retired ones."""
        now = utcnow()
        keys = [
            k.public_jwk
            for k in sorted(self._keys.values(), key=lambda k: k.created_at, reverse=True)
            if k.retired_at is None or now - k.retired_at <= self.publish_for
        ]
        return {"keys": keys}


async def reencrypt_signing_keys(session: AsyncSession, master: KeyRing) -> int:
    """Re-seal every signing key's private half under the active master key."""
    done = 0
    for key in (await session.execute(select(SigningKey))).scalars():
        if KeyRing.kid_of(key.private_key_ciphertext) == master.active_kid:
            continue
        pem = master.decrypt(key.private_key_ciphertext, _associated_data(key.kid))
        key.private_key_ciphertext = master.encrypt(pem, _associated_data(key.kid))
        done += 1
    await session.flush()
    return done
