"""A real identity provider for tests: a Starlette JWKS server on 127.0.0.1 with realms whose
keys can rotate and whose JWKS endpoint can be made to fail, stall, flood or redirect, counting
every fetch; and token minting (PyJWT for well-formed tokens, raw bytes for attacks)."""

from __future__ import annotations

import asyncio
import base64
import json
import secrets
import threading
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import jwt as pyjwt
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import Route

from app.core import jose

MISSING = object()


def b64u(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64u_json(obj: Any) -> str:
    return b64u(json.dumps(obj, separators=(",", ":")).encode())


def raw_signature(signing_input: bytes, key: Any, alg: str) -> bytes:
    """A JWS signature as RFC 7518 defines it (HS* keyed with bytes)."""
    import hashlib
    import hmac

    bits = alg[2:]
    if alg.startswith("HS"):
        return hmac.new(key, signing_input, getattr(hashlib, f"sha{bits}")).digest()
    hash_alg = {"256": hashes.SHA256, "384": hashes.SHA384, "512": hashes.SHA512}[bits]()
    if alg.startswith("ES"):
        r, s = decode_dss_signature(key.sign(signing_input, ec.ECDSA(hash_alg)))
        size = (key.curve.key_size + 7) // 8
        return r.to_bytes(size, "big") + s.to_bytes(size, "big")
    return key.sign(signing_input, padding.PKCS1v15(), hash_alg)


def raw_token(header: dict[str, Any], claims: dict[str, Any] | bytes, key: Any, alg: str) -> str:
    """A compact JWS built byte by byte (for attacks PyJWT would refuse to make)."""
    h = b64u_json(header)
    p = b64u(claims) if isinstance(claims, bytes) else b64u_json(claims)
    if alg == "none":
        return f"{h}.{p}."
    return f"{h}.{p}.{b64u(raw_signature(f'{h}.{p}'.encode(), key, alg))}"


def pem_of(public_key: Any) -> str:
    return public_key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()


@dataclass
class SigningKey:
    kid: str
    alg: str
    private: Any

    @property
    def public(self) -> Any:
        return self.private.public_key()

    def jwk(self, *, with_alg: bool = True) -> dict[str, str]:
        jwk = jose.public_jwk(self.public, kid=self.kid, alg=self.alg)
        if not with_alg:
            jwk.pop("alg")
        return jwk


@dataclass
class Realm:
    """One issuer at the IdP: its keys, its JWKS endpoint's behaviour and counters."""

    name: str
    base_url: str
    audience: str
    keys: list[SigningKey] = field(default_factory=list)
    mode: str = "ok"  # ok | fail | slow | huge | huge_declared | redirect | garbage
    delay: float = 0.0
    cache_control: str | None = None
    fetches: int = 0
    redirect_target_fetches: int = 0
    extra_jwks: list[dict[str, Any]] = field(default_factory=list)

    @property
    def issuer(self) -> str:
        return f"https://idp.test/realms/{self.name}"

    @property
    def jwks_uri(self) -> str:
        return f"{self.base_url}/{self.name}/jwks.json"

    def add_key(self, alg: str = "ES256", kid: str | None = None) -> SigningKey:
        if alg.startswith("RS"):
            private: Any = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        else:
            curve = {"ES256": ec.SECP256R1, "ES384": ec.SECP384R1, "ES512": ec.SECP521R1}[alg]
            private = ec.generate_private_key(curve())
        key = SigningKey(kid or f"{alg.lower()}-{secrets.token_hex(4)}", alg, private)
        self.keys.append(key)
        return key

    def rotate(self, alg: str = "ES256") -> SigningKey:
        """A new key replaces every old one at the IdP."""
        self.keys.clear()
        return self.add_key(alg)

    def jwks(self) -> dict[str, Any]:
        return {"keys": [k.jwk() for k in self.keys] + self.extra_jwks}

    def claims(self, **overrides: Any) -> dict[str, Any]:
        now = int(time.time())
        base: dict[str, Any] = {
            "iss": self.issuer,
            "aud": self.audience,
            "sub": "user-1",
            "email": "alice@corp.example",
            "iat": now,
            "nbf": now,
            "exp": now + 300,
            "jti": uuid.uuid4().hex,
        }
        base.update(overrides)
        return {k: v for k, v in base.items() if v is not MISSING}

    def token(
        self,
        key: SigningKey | None = None,
        headers: dict[str, Any] | None = None,
        **claims: Any,
    ) -> str:
        """A well-formed token signed with one of the realm's keys (PyJWT)."""
        key = key or self.keys[0]
        head = {"kid": key.kid, "typ": "JWT", **(headers or {})}
        head = {k: v for k, v in head.items() if v is not MISSING}
        return pyjwt.encode(self.claims(**claims), key.private, algorithm=key.alg, headers=head)


class IdpServer:
    """Serves every realm's JWKS under `/{realm}/jwks.json`."""

    def __init__(self) -> None:
        self.realms: dict[str, Realm] = {}
        self.base_url = ""
        self.lock = threading.Lock()

    def realm(self, alg: str = "ES256", audience: str | None = None) -> Realm:
        name = f"r{uuid.uuid4().hex[:10]}"
        realm = Realm(name, self.base_url, audience or f"api://{name}")
        realm.add_key(alg)
        self.realms[name] = realm
        return realm

    async def _jwks(self, request: Request) -> Response:
        realm = self.realms.get(request.path_params["realm"])
        if realm is None:
            return JSONResponse({"error": "no realm"}, status_code=404)
        with self.lock:
            realm.fetches += 1
        headers = {"Cache-Control": realm.cache_control} if realm.cache_control else {}
        if realm.mode == "fail":
            return JSONResponse({"error": "down"}, status_code=503)
        if realm.mode == "garbage":
            return Response("<html>not json</html>", media_type="text/html")
        if realm.mode == "redirect":
            return RedirectResponse(f"/{realm.name}/moved.json", status_code=302)
        if realm.mode == "huge_declared":
            return Response(b"{" + b" " * (5 * 1024 * 1024) + b"}", media_type="application/json")
        if realm.mode == "huge":

            async def flood() -> AsyncIterator[bytes]:
                yield b'{"keys": [], "pad": "'
                for _ in range(80):  # 5 MiB, chunked: no Content-Length to refuse up front
                    yield b"x" * 65536
                yield b'"}'

            return StreamingResponse(flood(), media_type="application/json")
        if realm.mode == "slow":
            await asyncio.sleep(realm.delay)
        return JSONResponse(realm.jwks(), headers=headers)

    async def _moved(self, request: Request) -> Response:
        realm = self.realms[request.path_params["realm"]]
        with self.lock:
            realm.redirect_target_fetches += 1
        return JSONResponse(realm.jwks())

    def app(self) -> Starlette:
        return Starlette(
            routes=[
                Route("/{realm}/jwks.json", self._jwks),
                Route("/{realm}/moved.json", self._moved),
            ]
        )
