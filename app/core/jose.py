"""Every JOSE operation Warden performs, over python-jose, used strictly (RFC 8725).

Nothing else in the code base imports `jose`. python-jose's defaults are loose (a key set makes
it ignore `kid`, `exp` is optional, the token's own `alg` is trusted without an allow-list), so
this module parses the compact serialisation itself, looks the key up by `kid` through the
caller, pins the algorithm to the key, verifies the signature against that one key, and checks
the registered claims itself. Every failure is a `TokenError`; callers turn it into one 401.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import math
import re
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jose import jws
from jose.exceptions import JOSEError

MAX_TOKEN_BYTES = 8192
_B64URL = re.compile(r"\A[A-Za-z0-9_-]*\Z")
_EC_CURVES = {"ES256": "P-256", "ES384": "P-384", "ES512": "P-521"}
_CURVE_SIZES = {"P-256": 32, "P-384": 48, "P-521": 66}
_CURVES: dict[str, ec.EllipticCurve] = {
    "P-256": ec.SECP256R1(),
    "P-384": ec.SECP384R1(),
    "P-521": ec.SECP521R1(),
}
# PS256/384/512 are left out: python-jose cannot verify RSASSA-PSS.
RSA_ALGORITHMS = frozenset({"RS256", "RS384", "RS512"})
EC_ALGORITHMS = frozenset(_EC_CURVES)
ASYMMETRIC_ALGORITHMS = RSA_ALGORITHMS | EC_ALGORITHMS
DEFAULT_TYPES = frozenset({"jwt", "at+jwt"})


class TokenError(Exception):
    """The token is not acceptable; `reason` is safe to log, never shown verbatim to clients."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


@dataclass(frozen=True)
class VerificationKey:
    """One public key with the single algorithm it may verify."""

    kid: str | None
    alg: str
    key: Any  # a cryptography public key object, prepared once


@dataclass(frozen=True)
class ParsedToken:
    """A structurally valid compact JWS whose signature is not yet checked."""

    header: dict[str, Any]
    claims: dict[str, Any]
    raw: str


def _b64decode(part: str) -> bytes:
    """Strict base64url (RFC 7515 §2): the URL-safe alphabet only, no padding, no whitespace,
    and the canonical spelling only (RFC 4648 §3.5): the bits a final character carries beyond
    the data must be zero. A lenient decoder ignores them, which gives every token (and every
    JWK member) several spellings that decode alike; they are refused by re-encoding."""
    if not _B64URL.match(part):
        raise TokenError("token is not base64url")
    if len(part) % 4 == 1:
        raise TokenError("token is not base64url")
    try:
        data = base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))
    except (binascii.Error, ValueError) as exc:
        raise TokenError("token is not base64url") from exc
    if base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii") != part:
        raise TokenError("token is not canonical base64url")
    return data


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise TokenError(f"duplicate member {key!r}")
        result[key] = value
    return result


def _reject_constant(name: str) -> Any:
    raise TokenError(f"non-finite number {name}")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise TokenError("non-finite number")
    return value


def _json_object(raw: bytes, what: str) -> dict[str, Any]:
    try:
        # RFC 7515 §5.2: UTF-8 only (json.loads on bytes would guess UTF-16/32 and BOMs).
        value = json.loads(
            raw.decode("utf-8"),
            object_pairs_hook=_no_duplicates,
            parse_constant=_reject_constant,
            parse_float=_finite_float,
        )
    except TokenError:
        raise
    except (ValueError, RecursionError) as exc:
        raise TokenError(f"{what} is not JSON") from exc
    if not isinstance(value, dict):
        raise TokenError(f"{what} is not a JSON object")
    return value


def parse(token: str, *, allowed_types: Collection[str] = DEFAULT_TYPES) -> ParsedToken:
    """Parse a compact JWS strictly: size, shape, header rules; no signature check yet."""
    if not isinstance(token, str) or not token:
        raise TokenError("empty token")
    if len(token) > MAX_TOKEN_BYTES:
        raise TokenError("token too large")
    parts = token.split(".")
    if len(parts) != 3:
        raise TokenError("not a compact JWS")
    header = _json_object(_b64decode(parts[0]), "header")
    claims = _json_object(_b64decode(parts[1]), "payload")
    _b64decode(parts[2])
    alg = header.get("alg")
    if not isinstance(alg, str) or alg not in ASYMMETRIC_ALGORITHMS:
        raise TokenError(f"algorithm {alg!r} not accepted")
    if "crit" in header:
        raise TokenError("unsupported critical header")
    if "enc" in header or "zip" in header:
        raise TokenError("encrypted or compressed tokens are not accepted")
    kid = header.get("kid")
    if kid is not None and (not isinstance(kid, str) or len(kid) > 256):
        raise TokenError("kid is not a short string")
    typ = header.get("typ")
    if typ is not None:
        if not isinstance(typ, str):
            raise TokenError("typ is not a string")
        normalised = typ.lower().removeprefix("application/")
        if normalised not in allowed_types:
            raise TokenError(f"typ {typ!r} not accepted")
    # jku, x5u, jwk and x5c are deliberately never read: keys come only from configuration.
    return ParsedToken(header=header, claims=claims, raw=token)


def _numeric(claims: Mapping[str, Any], name: str, required: bool) -> float | None:
    value = claims.get(name)
    if value is None:
        if required:
            raise TokenError(f"missing {name}")
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TokenError(f"{name} is not a number")
    try:
        number = float(value)
    except OverflowError as exc:
        raise TokenError(f"{name} is out of range") from exc
    if not math.isfinite(number):
        raise TokenError(f"{name} is not finite")
    return number


def _primes(limit: int) -> list[int]:
    return [n for n in range(2, limit + 1) if all(n % d for d in range(2, math.isqrt(n) + 1))]


# ROCA (CVE-2017-15361, Nemec et al., CCS 2017): an affected library (Infineon RSALib) made each
# prime p = k*M + (65537^a mod M), M the product of the first n primes (39 primes, up to 167, for
# the smallest keys; more for larger ones). So the modulus is N = 65537^c (mod M): for every
# prime r dividing M, N mod r lies in the subgroup that 65537 generates modulo r. The published
# fingerprint tests exactly that for the primes up to 167, which divide M for every key size;
# a modulus that passes all of them is (up to a negligible chance) such a key, and it can be
# factored (Coppersmith's method). Each mask has bit x set for every x in <65537> mod r.
_ROCA_PRIMES = tuple(p for p in _primes(167) if p > 2)
_ROCA_MASKS = tuple(
    (r, sum(1 << x for x in {pow(65537, i, r) for i in range(r - 1)})) for r in _ROCA_PRIMES
)


def has_roca_fingerprint(modulus: int) -> bool:
    """True when an RSA modulus carries the ROCA fingerprint (a factorable Infineon key)."""
    return all((mask >> (modulus % r)) & 1 for r, mask in _ROCA_MASKS)


def check_rsa_public_key(public_key: Any) -> None:
    """Refuse an RSA public key with the ROCA fingerprint. Checked when keys are registered or
    fetched (inline JWKS, PEM, an IdP's JWKS), not per token."""
    if isinstance(public_key, rsa.RSAPublicKey) and has_roca_fingerprint(
        public_key.public_numbers().n
    ):
        raise TokenError("RSA key has the ROCA fingerprint (CVE-2017-15361)")


def check_key_matches_alg(key: VerificationKey) -> None:
    """Refuse a key/algorithm pairing that could be confused (RFC 8725 §3.1)."""
    if key.alg in RSA_ALGORITHMS:
        if not isinstance(key.key, rsa.RSAPublicKey | rsa.RSAPrivateKey):
            raise TokenError("RSA algorithm with a non-RSA key")
        if key.key.key_size < 2048:
            raise TokenError("RSA key shorter than 2048 bits")
    elif key.alg in EC_ALGORITHMS:
        if not isinstance(key.key, ec.EllipticCurvePublicKey | ec.EllipticCurvePrivateKey):
            raise TokenError("EC algorithm with a non-EC key")
        if _CURVES[_EC_CURVES[key.alg]].name != key.key.curve.name:
            raise TokenError("EC algorithm with a key on another curve")
    else:
        raise TokenError(f"algorithm {key.alg!r} not accepted")


def verify(
    token: ParsedToken,
    key: VerificationKey,
    *,
    issuer: str,
    audiences: Collection[str],
    leeway: int = 30,
    now: float | None = None,
) -> dict[str, Any]:
    """Verify signature and registered claims of a parsed token against one chosen key."""
    if token.header.get("alg") != key.alg:
        raise TokenError("algorithm does not match the key")
    check_key_matches_alg(key)
    try:
        jws.verify(token.raw, key.key, algorithms=[key.alg])
    except JOSEError as exc:
        raise TokenError("bad signature") from exc
    except Exception as exc:  # python-jose can raise anything on hostile input
        raise TokenError("signature could not be checked") from exc
    claims = token.claims
    now = time.time() if now is None else now
    exp = _numeric(claims, "exp", required=True)
    nbf = _numeric(claims, "nbf", required=False)
    iat = _numeric(claims, "iat", required=False)
    if exp is not None and exp <= now - leeway:
        raise TokenError("token expired")
    if nbf is not None and nbf > now + leeway:
        raise TokenError("token not yet valid")
    if iat is not None and iat > now + leeway:
        raise TokenError("token issued in the future")
    if claims.get("iss") != issuer:
        raise TokenError("issuer mismatch")
    aud = claims.get("aud")
    token_auds = [aud] if isinstance(aud, str) else aud
    if not isinstance(token_auds, list) or not all(isinstance(a, str) for a in token_auds):
        raise TokenError("audience missing or malformed")
    accepted = {audiences} if isinstance(audiences, str) else set(audiences)
    if not accepted or not set(token_auds) & accepted:
        raise TokenError("audience mismatch")
    sub = claims.get("sub")
    if sub is not None and not isinstance(sub, str):
        raise TokenError("sub is not a string")
    return claims


def verify_with(
    raw: str,
    resolve_key: Callable[[ParsedToken], VerificationKey],
    *,
    issuer: str,
    audiences: Collection[str],
    leeway: int = 30,
    allowed_types: Collection[str] = DEFAULT_TYPES,
) -> dict[str, Any]:
    """Parse, resolve the one key by `kid` through the caller, and verify."""
    parsed = parse(raw, allowed_types=allowed_types)
    return verify(parsed, resolve_key(parsed), issuer=issuer, audiences=audiences, leeway=leeway)


_HALF_HASHES = {"256": hashlib.sha256, "384": hashlib.sha384, "512": hashlib.sha512}


def half_hash(value: str, alg: str) -> str:
    """OpenID Connect's `at_hash`/`c_hash`: the left half of the value's hash under the hash of
    the token's algorithm, base64url without padding."""
    hasher = _HALF_HASHES.get(alg[-3:])
    if alg not in ASYMMETRIC_ALGORITHMS or hasher is None:
        raise TokenError(f"algorithm {alg!r} not accepted")
    digest = hasher(value.encode("ascii", errors="replace")).digest()
    return base64.urlsafe_b64encode(digest[: len(digest) // 2]).decode("ascii").rstrip("=")


def sign(claims: Mapping[str, Any], private_key: Any, *, kid: str, alg: str = "ES256") -> str:
    """Sign claims as a compact JWS with `kid` and `typ: JWT` in the header."""
    headers = {"kid": kid, "typ": "JWT"}
    return str(jws.sign(dict(claims), private_key, headers=headers, algorithm=alg))


def _b64int(value: int, size: int) -> str:
    return base64.urlsafe_b64encode(value.to_bytes(size, "big")).decode().rstrip("=")


def public_jwk(public_key: Any, *, kid: str, alg: str) -> dict[str, str]:
    """The JWK (RFC 7517) of a public key, as published in a JWKS."""
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        crv = _EC_CURVES[alg]
        numbers = public_key.public_numbers()
        size = _CURVE_SIZES[crv]
        return {
            "kty": "EC",
            "crv": crv,
            "x": _b64int(numbers.x, size),
            "y": _b64int(numbers.y, size),
            "kid": kid,
            "alg": alg,
            "use": "sig",
        }
    if isinstance(public_key, rsa.RSAPublicKey):
        rsa_numbers = public_key.public_numbers()
        return {
            "kty": "RSA",
            "n": _b64int(rsa_numbers.n, (rsa_numbers.n.bit_length() + 7) // 8),
            "e": _b64int(rsa_numbers.e, (rsa_numbers.e.bit_length() + 7) // 8),
            "kid": kid,
            "alg": alg,
            "use": "sig",
        }
    raise TypeError("unsupported key type")


def _jwk_int(jwk: Mapping[str, Any], name: str) -> int:
    value = jwk.get(name)
    if not isinstance(value, str):
        raise TokenError(f"JWK member {name} missing")
    try:
        return int.from_bytes(_b64decode(value), "big")
    except TokenError as exc:
        raise TokenError(f"JWK member {name} is not base64url") from exc


def key_from_jwk(jwk: Mapping[str, Any], alg: str | None = None) -> VerificationKey:
    """Build a verification key from a public JWK; private members are refused."""
    if any(member in jwk for member in ("d", "p", "q", "k")):
        raise TokenError("JWK carries private or symmetric key material")
    kty = jwk.get("kty")
    kid = jwk.get("kid") if isinstance(jwk.get("kid"), str) else None
    key_alg = alg or jwk.get("alg")
    if kty == "RSA":
        try:
            public: Any = rsa.RSAPublicNumbers(_jwk_int(jwk, "e"), _jwk_int(jwk, "n")).public_key()
        except ValueError as exc:
            raise TokenError("RSA JWK numbers are invalid") from exc
        check_rsa_public_key(public)
        key_alg = key_alg or "RS256"
    elif kty == "EC":
        crv = jwk.get("crv")
        if not isinstance(crv, str) or crv not in _CURVES:
            raise TokenError("unsupported EC curve")
        numbers = ec.EllipticCurvePublicNumbers(
            _jwk_int(jwk, "x"), _jwk_int(jwk, "y"), _CURVES[str(crv)]
        )
        try:
            public = numbers.public_key()
        except ValueError as exc:
            raise TokenError("EC point is not on the curve") from exc
        key_alg = key_alg or {v: k for k, v in _EC_CURVES.items()}[str(crv)]
    else:
        raise TokenError(f"unsupported key type {kty!r}")
    if not isinstance(key_alg, str):
        raise TokenError("JWK alg is not a string")
    key = VerificationKey(kid=kid, alg=key_alg, key=public)
    check_key_matches_alg(key)
    return key


MAX_PEM_CHARS = 16_384
_ALG_BY_CURVE = {_CURVES[crv].name: alg for alg, crv in _EC_CURVES.items()}


def key_from_pem(pem: str) -> Any:
    """One public RSA/EC key from a PEM public key or certificate; private keys are refused."""
    if not isinstance(pem, str) or not pem.strip():
        raise TokenError("PEM is empty")
    if len(pem) > MAX_PEM_CHARS:
        raise TokenError("PEM is too large")
    if "PRIVATE KEY" in pem:
        raise TokenError("PEM holds a private key")
    if pem.count("-----BEGIN ") != 1:
        raise TokenError("PEM must hold exactly one key")
    try:
        data = pem.strip().encode("ascii")
        if "-----BEGIN CERTIFICATE-----" in pem:
            public: Any = x509.load_pem_x509_certificate(data).public_key()
        else:
            public = serialization.load_pem_public_key(data)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:  # UnicodeError is a ValueError
        raise TokenError("PEM is not a public key") from exc
    if isinstance(public, rsa.RSAPublicKey):
        check_rsa_public_key(public)
        return public
    if isinstance(public, ec.EllipticCurvePublicKey) and public.curve.name in _ALG_BY_CURVE:
        return public
    raise TokenError("PEM key is neither RSA nor EC on P-256/P-384/P-521")


def algorithms_for_key(public_key: Any) -> frozenset[str]:
    """The algorithms a public key may verify: RS* for RSA, the one ES* of an EC curve."""
    if isinstance(public_key, rsa.RSAPublicKey):
        return RSA_ALGORITHMS
    if isinstance(public_key, ec.EllipticCurvePublicKey) and public_key.curve.name in _ALG_BY_CURVE:
        return frozenset({_ALG_BY_CURVE[public_key.curve.name]})
    return frozenset()


def jwk_thumbprint(public_key: Any) -> str:
    """The RFC 7638 SHA-256 thumbprint of a public RSA/EC key (a stable `kid` for PEM keys)."""
    algorithms = algorithms_for_key(public_key)
    if not algorithms:
        raise TokenError("unsupported key type")
    jwk = public_jwk(public_key, kid="", alg=min(algorithms))
    required = ("crv", "kty", "x", "y") if jwk["kty"] == "EC" else ("e", "kty", "n")
    canonical = json.dumps({k: jwk[k] for k in required}, sort_keys=True, separators=(",", ":"))
    digest = hashlib.sha256(canonical.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).decode("ascii").rstrip("=")
