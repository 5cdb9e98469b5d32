"""Attacks on `app.core.jose`, the only place Warden touches JOSE (RFC 7515/7519/8725).

Every token is built by hand (base64url JSON + a signature made with `cryptography`, `hmac` or
PyJWT) so each attack is exactly the bytes it claims to be. Every refusal must be a `TokenError`:
`pytest.raises(TokenError)` lets any other exception type escape and fail the test, which is the
point (callers turn a `TokenError` into one 401; anything else is a 500).
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import json
import math
import socket
import time
import urllib.request
from collections.abc import Callable, Mapping
from typing import Any

import jwt as pyjwt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.core import jose
from app.core.jose import MAX_TOKEN_BYTES, ParsedToken, TokenError, VerificationKey

NOW = 1_700_000_000
LEEWAY = 30
ISSUER = "https://warden.example"
AUDIENCE = "warden-api"
KID = "ec-1"
RSA_KID = "rsa-1"
MISSING = object()
B64URL_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"

EC_KEY = ec.generate_private_key(ec.SECP256R1())
EC_ATTACKER = ec.generate_private_key(ec.SECP256R1())
EC_P384 = ec.generate_private_key(ec.SECP384R1())
EC_P521 = ec.generate_private_key(ec.SECP521R1())
RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
RSA_ATTACKER = rsa.generate_private_key(public_exponent=65537, key_size=2048)
RSA_1024 = rsa.generate_private_key(public_exponent=65537, key_size=1024)  # noqa: S505 (the attack)

VK_EC = VerificationKey(kid=KID, alg="ES256", key=EC_KEY.public_key())
VK_RSA = VerificationKey(kid=RSA_KID, alg="RS256", key=RSA_KEY.public_key())

_HASHES: dict[str, Callable[[], hashes.HashAlgorithm]] = {
    "256": hashes.SHA256,
    "384": hashes.SHA384,
    "512": hashes.SHA512,
}
_HMAC_DIGESTS = {"HS256": hashlib.sha256, "HS384": hashlib.sha384, "HS512": hashlib.sha512}


# --------------------------------------------------------------------------------------------
# Hand-made tokens
# --------------------------------------------------------------------------------------------


def b64u(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64u_json(obj: Any) -> str:
    return b64u(json.dumps(obj, separators=(",", ":")).encode())


def b64u_decode(part: str) -> bytes:
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


def claims(**overrides: Any) -> dict[str, Any]:
    """Valid claims at NOW; an override of MISSING removes the claim."""
    base: dict[str, Any] = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": "user-1",
        "iat": NOW,
        "nbf": NOW,
        "exp": NOW + 300,
        "jti": "jti-1",
    }
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not MISSING}


def header(alg: str = "ES256", **overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"alg": alg, "typ": "JWT", "kid": KID}
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not MISSING}


def raw_signature(signing_input: bytes, key: Any, alg: str) -> bytes:
    """A JWS signature exactly as RFC 7518 §3 defines it for `alg`."""
    family, bits = alg[:2], alg[2:]
    if family == "HS":
        return hmac.new(key, signing_input, _HMAC_DIGESTS[alg]).digest()
    hash_alg = _HASHES[bits]()
    if family == "ES":
        r, s = decode_dss_signature(key.sign(signing_input, ec.ECDSA(hash_alg)))
        size = (key.curve.key_size + 7) // 8
        return r.to_bytes(size, "big") + s.to_bytes(size, "big")
    if family == "RS":
        return key.sign(signing_input, padding.PKCS1v15(), hash_alg)
    if family == "PS":
        pss = padding.PSS(mgf=padding.MGF1(hash_alg), salt_length=hash_alg.digest_size)
        return key.sign(signing_input, pss, hash_alg)
    raise AssertionError(f"test helper cannot sign {alg}")


def make_token(
    payload: Mapping[str, Any] | None = None,
    *,
    head: Mapping[str, Any] | None = None,
    key: Any = EC_KEY,
    sign_alg: str = "ES256",
    raw_header: bytes | None = None,
    raw_payload: bytes | None = None,
) -> str:
    """A compact JWS: header and payload as given, signed with `key` under `sign_alg`."""
    h = b64u(raw_header) if raw_header is not None else b64u_json(head or header(sign_alg))
    p = b64u(raw_payload) if raw_payload is not None else b64u_json(payload or claims())
    signature = raw_signature(f"{h}.{p}".encode("ascii"), key, sign_alg)
    return f"{h}.{p}.{b64u(signature)}"


def check(
    token: str,
    key: VerificationKey = VK_EC,
    *,
    issuer: str = ISSUER,
    audiences: Any = (AUDIENCE,),
    leeway: int = LEEWAY,
    now: float | None = NOW,
) -> dict[str, Any]:
    """The full pipeline: strict parse, then verify against the one chosen key."""
    return jose.verify(
        jose.parse(token), key, issuer=issuer, audiences=audiences, leeway=leeway, now=now
    )


def refused(token: Any, key: VerificationKey = VK_EC, match: str | None = None, **kw: Any) -> str:
    """Assert the token is refused with a TokenError (any other exception fails the test)."""
    with pytest.raises(TokenError, match=match) as info:
        check(token, key, **kw)
    return info.value.reason


def parse_refused(token: Any, match: str | None = None) -> str:
    with pytest.raises(TokenError, match=match) as info:
        jose.parse(token)
    return info.value.reason


def resolver(key: VerificationKey) -> Callable[[ParsedToken], VerificationKey]:
    return lambda _parsed: key


def jwk_json(public_key: Any, kid: str, alg: str) -> dict[str, str]:
    return jose.public_jwk(public_key, kid=kid, alg=alg)


def spki_pem(public_key: Any) -> bytes:
    return public_key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def self_signed_cert(private_key: Any) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "warden.example")])
    start = dt.datetime(2020, 1, 1, tzinfo=dt.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(private_key.public_key())
        .serial_number(1)
        .not_valid_before(start)
        .not_valid_after(start + dt.timedelta(days=3650))
        .sign(private_key, hashes.SHA256())
    )


def tamper_part(token: str, index: int, new_part: str) -> str:
    parts = token.split(".")
    parts[index] = new_part
    return ".".join(parts)


# Sanity: the baseline token really is accepted, so every refusal below is caused by the attack.
def test_baseline_token_is_accepted() -> None:
    assert check(make_token())["sub"] == "user-1"
    assert check(make_token(key=RSA_KEY, sign_alg="RS256", head=header("RS256")), VK_RSA)


# --------------------------------------------------------------------------------------------
# Attacks
# --------------------------------------------------------------------------------------------


class TestAlgNone:
    @pytest.mark.parametrize("alg", ["none", "None", "NONE", "nOnE"])
    @pytest.mark.parametrize("signature", ["empty", "junk", "real-es256"])
    def test_alg_none_refused_whatever_the_signature(self, alg: str, signature: str) -> None:
        h, p = b64u_json(header(alg)), b64u_json(claims())
        sig = {
            "empty": "",
            "junk": b64u(b"anything at all"),
            "real-es256": b64u(raw_signature(f"{h}.{p}".encode(), EC_KEY, "ES256")),
        }[signature]
        token = f"{h}.{p}.{sig}"
        parse_refused(token, match="algorithm")
        with pytest.raises(TokenError):
            jose.verify_with(
                token, resolver(VK_EC), issuer=ISSUER, audiences=[AUDIENCE], leeway=LEEWAY
            )

    def test_alg_none_bypassing_parse_is_refused_by_verify(self) -> None:
        h, p = b64u_json(header("none")), b64u_json(claims())
        forged = ParsedToken(header=header("none"), claims=claims(), raw=f"{h}.{p}.")
        with pytest.raises(TokenError, match="algorithm does not match"):
            jose.verify(forged, VK_EC, issuer=ISSUER, audiences=[AUDIENCE], now=NOW)

    def test_key_registered_for_none_verifies_nothing(self) -> None:
        h, p = b64u_json(header("none")), b64u_json(claims())
        forged = ParsedToken(header=header("none"), claims=claims(), raw=f"{h}.{p}.")
        none_key = VerificationKey(kid=KID, alg="none", key=None)
        with pytest.raises(TokenError, match="not accepted"):
            jose.verify(forged, none_key, issuer=ISSUER, audiences=[AUDIENCE], now=NOW)

    def test_missing_alg_refused(self) -> None:
        token = make_token(head={"typ": "JWT", "kid": KID})
        parse_refused(token, match="algorithm")

    @pytest.mark.parametrize("alg", [None, 256, 1.5, True, ["ES256"], {"ES256": 1}, {}])
    def test_alg_not_a_string_refused(self, alg: Any) -> None:
        parse_refused(make_token(head={"alg": alg, "typ": "JWT", "kid": KID}), match="algorithm")

    @pytest.mark.parametrize(
        "alg",
        ["es256", "ES256 ", " ES256", "ES256K", "EdDSA", "RS1", "RSA-OAEP", "dir", "A256KW", ""],
    )
    def test_unlisted_algorithms_refused(self, alg: str) -> None:
        parse_refused(make_token(head=header(alg)), match="algorithm")


def _confusion_secrets() -> list[tuple[str, VerificationKey, bytes]]:
    ec_pub, rsa_pub = EC_KEY.public_key(), RSA_KEY.public_key()
    ec_jwk, rsa_jwk = jwk_json(ec_pub, KID, "ES256"), jwk_json(rsa_pub, RSA_KID, "RS256")
    openssh = (serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    return [
        ("ec-spki-pem", VK_EC, spki_pem(ec_pub)),
        ("ec-jwk-json", VK_EC, json.dumps(ec_jwk).encode()),
        ("ec-jwk-json-compact", VK_EC, json.dumps(ec_jwk, separators=(",", ":")).encode()),
        ("ec-openssh", VK_EC, ec_pub.public_bytes(*openssh)),
        (
            "ec-x962-point",
            VK_EC,
            ec_pub.public_bytes(
                serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
            ),
        ),
        ("rsa-spki-pem", VK_RSA, spki_pem(rsa_pub)),
        (
            "rsa-pkcs1-pem",
            VK_RSA,
            rsa_pub.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.PKCS1),
        ),
        ("rsa-jwk-json", VK_RSA, json.dumps(rsa_jwk).encode()),
        ("rsa-openssh", VK_RSA, rsa_pub.public_bytes(*openssh)),
    ]


CONFUSION = _confusion_secrets()


class TestAlgorithmConfusion:
    """RFC 8725 §2.1/§3.1: an HMAC keyed with the public key must never verify."""

    @pytest.mark.parametrize("hs_alg", ["HS256", "HS384", "HS512"])
    @pytest.mark.parametrize(
        ("key", "secret"),
        [(vk, secret) for _, vk, secret in CONFUSION],
        ids=[name for name, _, _ in CONFUSION],
    )
    def test_hmac_with_public_key_as_secret_refused(
        self, hs_alg: str, key: VerificationKey, secret: bytes
    ) -> None:
        token = make_token(head=header(hs_alg, kid=key.kid), key=secret, sign_alg=hs_alg)
        parse_refused(token, match="algorithm")
        with pytest.raises(TokenError):
            jose.verify_with(
                token, resolver(key), issuer=ISSUER, audiences=[AUDIENCE], leeway=LEEWAY
            )

    @pytest.mark.parametrize("hs_alg", ["HS256", "HS384", "HS512"])
    @pytest.mark.parametrize(
        ("key", "secret"),
        [(vk, secret) for _, vk, secret in CONFUSION],
        ids=[name for name, _, _ in CONFUSION],
    )
    def test_hmac_confusion_refused_even_if_parse_is_bypassed(
        self, hs_alg: str, key: VerificationKey, secret: bytes
    ) -> None:
        token = make_token(head=header(hs_alg, kid=key.kid), key=secret, sign_alg=hs_alg)
        forged = ParsedToken(header=header(hs_alg, kid=key.kid), claims=claims(), raw=token)
        with pytest.raises(TokenError, match="algorithm does not match"):
            jose.verify(forged, key, issuer=ISSUER, audiences=[AUDIENCE], now=NOW)

    @pytest.mark.parametrize(
        "secret",
        [secret for _, _, secret in CONFUSION],
        ids=[name for name, _, _ in CONFUSION],
    )
    def test_key_store_entry_declared_hs256_is_refused(self, secret: bytes) -> None:
        token = make_token(head=header("HS256"), key=secret, sign_alg="HS256")
        forged = ParsedToken(header=header("HS256"), claims=claims(), raw=token)
        hmac_key = VerificationKey(kid=KID, alg="HS256", key=secret)
        with pytest.raises(TokenError, match="not accepted"):
            jose.verify(forged, hmac_key, issuer=ISSUER, audiences=[AUDIENCE], now=NOW)
        with pytest.raises(TokenError):
            jose.check_key_matches_alg(hmac_key)

    @pytest.mark.parametrize(
        ("alg", "secret"),
        [("ES256", spki_pem(EC_KEY.public_key())), ("RS256", spki_pem(RSA_KEY.public_key()))],
    )
    def test_asymmetric_alg_with_bytes_key_material_refused(self, alg: str, secret: bytes) -> None:
        """A key store row holding PEM bytes instead of a key object can't become an HMAC key."""
        token = make_token(head=header(alg), key=secret, sign_alg="HS256")
        bytes_key = VerificationKey(kid=KID, alg=alg, key=secret)
        refused(token, bytes_key, match="non-")


class TestKeyAlgorithmPinning:
    """RFC 8725 §3.1: each key verifies exactly one algorithm, of its own family and size."""

    def test_es256_token_against_rs256_key_refused(self) -> None:
        refused(make_token(), VK_RSA, match="algorithm does not match")

    def test_es256_token_against_ec_key_declared_rs256_refused(self) -> None:
        refused(make_token(), VerificationKey(KID, "RS256", EC_KEY.public_key()))

    def test_rs256_token_against_ec_key_declared_rs256_refused(self) -> None:
        token = make_token(head=header("RS256"), key=RSA_KEY, sign_alg="RS256")
        refused(token, VerificationKey(KID, "RS256", EC_KEY.public_key()), match="non-RSA")

    def test_rsa_key_declared_es256_refused(self) -> None:
        bad = VerificationKey(KID, "ES256", RSA_KEY.public_key())
        refused(make_token(), bad, match="non-EC")
        with pytest.raises(TokenError, match="non-EC"):
            jose.check_key_matches_alg(bad)

    def test_p384_key_declared_es256_refused(self) -> None:
        token = make_token(key=EC_P384, sign_alg="ES256")  # SHA-256 over P-384, 96-byte sig
        bad = VerificationKey(KID, "ES256", EC_P384.public_key())
        refused(token, bad, match="another curve")
        with pytest.raises(TokenError, match="another curve"):
            jose.check_key_matches_alg(bad)

    def test_p256_key_declared_es384_refused(self) -> None:
        token = make_token(head=header("ES384"), key=EC_KEY, sign_alg="ES256")
        refused(token, VerificationKey(KID, "ES384", EC_KEY.public_key()), match="another curve")

    def test_rsa_1024_refused(self) -> None:
        token = make_token(head=header("RS256"), key=RSA_1024, sign_alg="RS256")
        weak = VerificationKey(KID, "RS256", RSA_1024.public_key())
        refused(token, weak, match="2048")
        with pytest.raises(TokenError, match="2048"):
            jose.check_key_matches_alg(weak)

    @pytest.mark.parametrize("token_alg", ["RS384", "RS512", "PS256", "ES256"])
    def test_other_alg_than_the_keys_refused(self, token_alg: str) -> None:
        token = make_token(head=header(token_alg), key=RSA_KEY, sign_alg="RS256")
        # PS* is refused even earlier: python-jose cannot verify PSS, so it is not accepted.
        refused(token, VK_RSA, match="algorithm does not match|not accepted")

    @pytest.mark.parametrize("alg", ["HS256", "none", "EdDSA", "", "es256"])
    def test_check_key_matches_alg_refuses_unlisted_algorithms(self, alg: str) -> None:
        with pytest.raises(TokenError, match="not accepted"):
            jose.check_key_matches_alg(VerificationKey(KID, alg, EC_KEY.public_key()))

    @pytest.mark.parametrize(
        ("alg", "private"),
        [
            ("ES256", EC_KEY),
            ("ES384", EC_P384),
            ("ES512", EC_P521),
            ("RS256", RSA_KEY),
            ("RS384", RSA_KEY),
            ("RS512", RSA_KEY),
        ],
    )
    def test_each_family_verifies_with_its_own_key(self, alg: str, private: Any) -> None:
        token = make_token(head=header(alg), key=private, sign_alg=alg)
        assert check(token, VerificationKey(KID, alg, private.public_key()))["sub"] == "user-1"


class TestSignatureIntegrity:
    def test_other_key_same_kid_refused(self) -> None:
        refused(make_token(key=EC_ATTACKER), match="bad signature")

    def test_other_rsa_key_same_kid_refused(self) -> None:
        token = make_token(head=header("RS256", kid=RSA_KID), key=RSA_ATTACKER, sign_alg="RS256")
        refused(token, VK_RSA, match="bad signature")

    @pytest.mark.parametrize("position", [0, 1, 31, 32, 33, 62, 63])
    @pytest.mark.parametrize("bit", [0, 7])
    def test_es256_signature_bit_flip_refused(self, position: int, bit: int) -> None:
        token = make_token()
        sig = bytearray(b64u_decode(token.split(".")[2]))
        sig[position] ^= 1 << bit
        refused(tamper_part(token, 2, b64u(bytes(sig))), match="signature")

    @pytest.mark.parametrize("position", [0, 128, 255])
    def test_rs256_signature_bit_flip_refused(self, position: int) -> None:
        token = make_token(head=header("RS256", kid=RSA_KID), key=RSA_KEY, sign_alg="RS256")
        sig = bytearray(b64u_decode(token.split(".")[2]))
        sig[position] ^= 0x01
        refused(tamper_part(token, 2, b64u(bytes(sig))), VK_RSA, match="signature")

    @pytest.mark.parametrize(
        "change",
        [
            {"sub": "admin"},
            {"exp": NOW + 10**6},
            {"aud": [AUDIENCE, "billing"]},
            {"role": "owner"},
        ],
    )
    def test_payload_modified_after_signing_refused(self, change: dict[str, Any]) -> None:
        token = make_token()
        refused(tamper_part(token, 1, b64u_json(claims(**change))), match="bad signature")

    def test_payload_reencoded_identically_but_reordered_refused(self) -> None:
        token = make_token()
        reordered = dict(reversed(list(claims().items())))
        refused(tamper_part(token, 1, b64u_json(reordered)), match="bad signature")

    @pytest.mark.parametrize(
        "change",
        [{"kid": "other-kid"}, {"typ": "at+jwt"}, {"kid": MISSING}, {"typ": MISSING}],
    )
    def test_header_modified_after_signing_refused(self, change: dict[str, Any]) -> None:
        token = make_token()
        refused(tamper_part(token, 0, b64u_json(header(**change))), match="bad signature")

    def test_signature_of_another_token_refused(self) -> None:
        other = make_token(claims(sub="someone-else"))
        token = make_token()
        refused(tamper_part(token, 2, other.split(".")[2]), match="signature")

    @pytest.mark.parametrize(
        "sig",
        [
            "",
            b64u(bytes(64)),  # r = s = 0 ("psychic signature", CVE-2022-21449)
            b64u(b"\x00" * 31 + b"\x01" + b"\x00" * 31 + b"\x01"),
            b64u(b"\xff" * 64),
            b64u(bytes(63)),
            b64u(bytes(65)),
            b64u(bytes(128)),
        ],
        ids=["empty", "zero", "one-one", "all-ff", "63-bytes", "65-bytes", "128-bytes"],
    )
    def test_degenerate_signatures_refused(self, sig: str) -> None:
        refused(tamper_part(make_token(), 2, sig), match="signature")

    def test_truncated_and_extended_signature_refused(self) -> None:
        token = make_token()
        sig = b64u_decode(token.split(".")[2])
        refused(tamper_part(token, 2, b64u(sig[:-1])), match="signature")
        refused(tamper_part(token, 2, b64u(sig + b"\x00")), match="signature")

    def test_der_encoded_ecdsa_signature_refused(self) -> None:
        """JWS ES256 is raw r||s; a DER signature must not be accepted as an alternative form."""
        token = make_token()
        signing_input = token.rsplit(".", 1)[0].encode()
        der = EC_KEY.sign(signing_input, ec.ECDSA(hashes.SHA256()))
        refused(tamper_part(token, 2, b64u(der)), match="signature")


class TestTimeClaims:
    def test_exp_missing_refused(self) -> None:
        refused(make_token(claims(exp=MISSING)), match="missing exp")

    def test_exp_null_refused(self) -> None:
        refused(make_token(claims(exp=None)), match="missing exp")

    @pytest.mark.parametrize(
        "exp", ["123", str(NOW + 300), True, False, [NOW + 300], {"t": NOW + 300}, ""]
    )
    def test_exp_not_a_number_refused(self, exp: Any) -> None:
        refused(make_token(claims(exp=exp)), match="exp is not a number")

    @pytest.mark.parametrize("exp", [NOW - LEEWAY - 1, NOW - LEEWAY, NOW - 10**6, 0, -1])
    def test_exp_in_the_past_beyond_leeway_refused(self, exp: int) -> None:
        refused(make_token(claims(exp=exp, iat=exp - 60, nbf=exp - 60)), match="expired")

    @pytest.mark.parametrize("exp", [NOW - LEEWAY + 1, NOW - 1, NOW, NOW + 0.5])
    def test_exp_within_leeway_accepted(self, exp: float) -> None:
        assert check(make_token(claims(exp=exp, iat=NOW - 60, nbf=NOW - 60)))["exp"] == exp

    def test_exp_now_with_zero_leeway_refused(self) -> None:
        refused(make_token(claims(exp=NOW)), leeway=0, match="expired")

    def test_expiry_uses_the_clock_when_now_is_not_given(self) -> None:
        stale = make_token(claims(exp=int(time.time()) - 3600, iat=MISSING, nbf=MISSING))
        refused(stale, now=None, match="expired")
        fresh = make_token(claims(exp=int(time.time()) + 3600, iat=MISSING, nbf=MISSING))
        assert check(fresh, now=None)

    @pytest.mark.parametrize("nbf", [NOW + LEEWAY + 1, NOW + 3600])
    def test_nbf_in_the_future_beyond_leeway_refused(self, nbf: int) -> None:
        refused(make_token(claims(nbf=nbf, exp=nbf + 300)), match="not yet valid")

    def test_nbf_within_leeway_accepted(self) -> None:
        assert check(make_token(claims(nbf=NOW + LEEWAY)))

    @pytest.mark.parametrize("nbf", ["0", True, [NOW]])
    def test_nbf_not_a_number_refused(self, nbf: Any) -> None:
        refused(make_token(claims(nbf=nbf)), match="nbf is not a number")

    @pytest.mark.parametrize("iat", [NOW + LEEWAY + 1, NOW + 86400])
    def test_iat_in_the_future_refused(self, iat: int) -> None:
        refused(make_token(claims(iat=iat, nbf=MISSING)), match="issued in the future")

    @pytest.mark.parametrize("iat", [str(NOW), True, {"t": NOW}])
    def test_iat_not_a_number_refused(self, iat: Any) -> None:
        refused(make_token(claims(iat=iat)), match="iat is not a number")

    def test_nbf_and_iat_are_optional(self) -> None:
        assert check(make_token(claims(nbf=MISSING, iat=MISSING)))


class TestNonFiniteAndHugeNumericDates:
    """NumericDate is a finite JSON number (RFC 7519 §2); `NaN`/`Infinity` are not JSON at all."""

    @pytest.mark.parametrize(
        "literal", [b"Infinity", b"1e400", b"NaN"], ids=["Infinity", "1e400", "NaN"]
    )
    def test_non_finite_exp_refused(self, literal: bytes) -> None:
        payload = b'{"iss":"%s","aud":"%s","exp":%s}' % (
            ISSUER.encode(),
            AUDIENCE.encode(),
            literal,
        )
        refused(make_token(raw_payload=payload))

    @pytest.mark.parametrize("name", ["nbf", "iat"])
    def test_nan_nbf_and_iat_refused(self, name: str) -> None:
        payload = b'{"iss":"%s","aud":"%s","exp":%d,"%s":NaN}' % (
            ISSUER.encode(),
            AUDIENCE.encode(),
            NOW + 300,
            name.encode(),
        )
        refused(make_token(raw_payload=payload))

    @pytest.mark.parametrize("name", ["exp", "nbf", "iat"])
    def test_integer_too_large_for_a_float_is_a_token_error(self, name: str) -> None:
        refused(make_token(claims(**{name: 10**400})))


class TestIssuer:
    @pytest.mark.parametrize(
        "iss",
        [
            MISSING,
            None,
            "https://evil.example",
            ISSUER.upper(),
            "HTTPS://warden.example",
            ISSUER + "/",
            ISSUER + " ",
            " " + ISSUER,
            ISSUER + "\x00",
            "",
            [ISSUER],
            {"iss": ISSUER},
            1,
        ],
        ids=[
            "missing",
            "null",
            "different",
            "upper",
            "scheme-case",
            "trailing-slash",
            "trailing-space",
            "leading-space",
            "nul",
            "empty",
            "list",
            "object",
            "number",
        ],
    )
    def test_wrong_issuer_refused(self, iss: Any) -> None:
        refused(make_token(claims(iss=iss)), match="issuer mismatch")


class TestAudience:
    def test_missing_refused(self) -> None:
        refused(make_token(claims(aud=MISSING)), match="audience")

    @pytest.mark.parametrize("aud", ["billing", AUDIENCE.upper(), AUDIENCE + " ", ""])
    def test_wrong_refused(self, aud: str) -> None:
        refused(make_token(claims(aud=aud)), match="audience mismatch")

    def test_list_intersecting_accepted(self) -> None:
        assert check(make_token(claims(aud=["billing", AUDIENCE])))["aud"] == ["billing", AUDIENCE]

    def test_token_audience_matching_one_of_several_accepted(self) -> None:
        assert check(make_token(claims(aud="billing")), audiences=[AUDIENCE, "billing"])

    @pytest.mark.parametrize("aud", [["billing", "reports"], [], [AUDIENCE.upper()]])
    def test_list_not_intersecting_refused(self, aud: list[str]) -> None:
        refused(make_token(claims(aud=aud)), match="audience mismatch")

    @pytest.mark.parametrize(
        "aud",
        [1, 1.5, True, None, {"aud": AUDIENCE}, [AUDIENCE, 1], [AUDIENCE, None], [[AUDIENCE]]],
    )
    def test_malformed_refused(self, aud: Any) -> None:
        refused(make_token(claims(aud=aud)), match="audience")

    def test_no_configured_audiences_accepts_nothing(self) -> None:
        refused(make_token(), audiences=[], match="audience mismatch")


class TestSubject:
    @pytest.mark.parametrize("sub", [123, 1.5, True, ["user-1"], {"id": "user-1"}])
    def test_sub_not_a_string_refused(self, sub: Any) -> None:
        refused(make_token(claims(sub=sub)), match="sub is not a string")

    def test_sub_absent_accepted(self) -> None:
        assert "sub" not in check(make_token(claims(sub=MISSING)))


class TestTyp:
    @pytest.mark.parametrize(
        "typ",
        [
            "JWT",
            "jwt",
            "at+jwt",
            "AT+JWT",
            "application/at+jwt",
            "application/jwt",
            "Application/JWT",
        ],
    )
    def test_accepted_types(self, typ: str) -> None:
        assert check(make_token(head=header(typ=typ)))

    def test_typ_absent_accepted(self) -> None:
        assert check(make_token(head=header(typ=MISSING)))

    @pytest.mark.parametrize(
        "typ",
        [
            "JWE",
            "jwt+evil",
            "JOSE",
            "JOSE+JSON",
            "secevent+jwt",
            "application/application/jwt",
            "application/",
            "JWT ",
            "",
            "jwt\x00",
        ],
    )
    def test_other_types_refused(self, typ: str) -> None:
        parse_refused(make_token(head=header(typ=typ)), match="typ")

    @pytest.mark.parametrize("typ", [1, True, ["JWT"], {"typ": "JWT"}])
    def test_non_string_typ_refused(self, typ: Any) -> None:
        parse_refused(make_token(head=header(typ=typ)), match="typ is not a string")

    def test_allowed_types_narrows(self) -> None:
        token = make_token(head=header(typ="JWT"))
        with pytest.raises(TokenError, match="typ"):
            jose.parse(token, allowed_types={"at+jwt"})
        assert jose.parse(make_token(head=header(typ="at+jwt")), allowed_types={"at+jwt"})


class TestForbiddenAndIgnoredHeaders:
    @pytest.mark.parametrize("crit", [[], ["exp"], ["b64"], "b64", None, {}, ["unknown"]])
    def test_crit_refused_whatever_its_value(self, crit: Any) -> None:
        parse_refused(make_token(head=header(crit=crit, b64=False)), match="critical")

    @pytest.mark.parametrize(
        "extra",
        [{"enc": "A256GCM"}, {"enc": None}, {"zip": "DEF"}, {"zip": None}, {"enc": "", "zip": ""}],
    )
    def test_enc_and_zip_refused(self, extra: dict[str, Any]) -> None:
        parse_refused(make_token(head=header(**extra)), match="encrypted or compressed")

    @pytest.fixture
    def no_network(self, monkeypatch: pytest.MonkeyPatch) -> list[Any]:
        """Record any attempt to reach the network (jose must never fetch jku/x5u)."""
        attempts: list[Any] = []

        def record(*args: Any, **kwargs: Any) -> Any:
            attempts.append(args)
            raise OSError("network disabled in tests")

        monkeypatch.setattr(socket.socket, "connect", record)
        monkeypatch.setattr(socket, "create_connection", record)
        monkeypatch.setattr(socket, "getaddrinfo", record)
        monkeypatch.setattr(urllib.request, "urlopen", record)
        return attempts

    def test_embedded_jwk_of_the_attacker_is_never_used(self, no_network: list[Any]) -> None:
        attacker_jwk = jwk_json(EC_ATTACKER.public_key(), KID, "ES256")
        token = make_token(head=header(jwk=attacker_jwk), key=EC_ATTACKER)
        refused(token, match="bad signature")
        with pytest.raises(TokenError):
            jose.verify_with(
                token, resolver(VK_EC), issuer=ISSUER, audiences=[AUDIENCE], leeway=LEEWAY
            )
        assert no_network == []

    def test_embedded_x5c_of_the_attacker_is_never_used(self, no_network: list[Any]) -> None:
        der = self_signed_cert(EC_ATTACKER).public_bytes(serialization.Encoding.DER)
        x5c = [base64.b64encode(der).decode()]
        token = make_token(head=header(x5c=x5c), key=EC_ATTACKER)
        refused(token, match="bad signature")
        assert no_network == []

    @pytest.mark.parametrize("name", ["jku", "x5u"])
    def test_key_urls_are_never_fetched(self, name: str, no_network: list[Any]) -> None:
        token = make_token(head=header(**{name: "https://attacker.example/keys"}), key=EC_ATTACKER)
        refused(token, match="bad signature")
        assert no_network == []

    def test_all_key_headers_together_are_ignored(self, no_network: list[Any]) -> None:
        attacker_jwk = jwk_json(EC_ATTACKER.public_key(), KID, "ES256")
        der = self_signed_cert(EC_ATTACKER).public_bytes(serialization.Encoding.DER)
        head = header(
            jwk=attacker_jwk,
            x5c=[base64.b64encode(der).decode()],
            jku="https://attacker.example/jwks.json",
            x5u="https://attacker.example/cert.pem",
        )
        refused(make_token(head=head, key=EC_ATTACKER), match="bad signature")
        # The same headers on a token the real key signed change nothing: they are just ignored.
        assert check(make_token(head=head, key=EC_KEY))
        assert no_network == []


class TestSerialisation:
    def _parts(self) -> tuple[str, str, str]:
        h, p, s = make_token().split(".")
        return h, p, s

    def test_general_json_serialisation_refused(self) -> None:
        h, p, s = self._parts()
        general = json.dumps({"payload": p, "signatures": [{"protected": h, "signature": s}]})
        parse_refused(general, match="compact")
        with pytest.raises(TokenError):
            jose.verify_with(
                general, resolver(VK_EC), issuer=ISSUER, audiences=[AUDIENCE], leeway=LEEWAY
            )

    def test_flattened_json_serialisation_refused(self) -> None:
        h, p, s = self._parts()
        parse_refused(json.dumps({"payload": p, "protected": h, "signature": s}), match="compact")

    def test_json_serialisation_with_dots_in_it_still_refused(self) -> None:
        h, p, s = self._parts()
        parse_refused(json.dumps({"payload": p, "protected": h, "signature": s, "x": "a.b"}))

    def test_five_part_jwe_refused(self) -> None:
        jwe_head = b64u_json({"alg": "RSA-OAEP", "enc": "A256GCM", "kid": KID})
        parts = [jwe_head] + [b64u(bytes([i]) * 16) for i in range(4)]
        parse_refused(".".join(parts), match="compact")

    def test_five_part_with_a_signing_alg_refused(self) -> None:
        parse_refused(make_token() + ".AAAA.AAAA", match="compact")

    @pytest.mark.parametrize(
        "shape",
        ["h", "h.p", "h.p.s.x", "h.p.s.x.y.z", "..", "...", ".", "h..s", ".p.s", "h.p.s."],
    )
    def test_wrong_number_or_empty_parts_refused(self, shape: str) -> None:
        h, p, s = self._parts()
        token = ".".join(
            {"h": h, "p": p, "s": s, "x": s, "y": s, "z": s, "": ""}[x] for x in shape.split(".")
        )
        parse_refused(token)

    def test_empty_signature_refused(self) -> None:
        h, p, _ = self._parts()
        refused(f"{h}.{p}.", match="signature")

    @pytest.mark.parametrize("token", ["", None, b"", 0, [], b"a.b.c"])
    def test_empty_or_not_a_string_refused(self, token: Any) -> None:
        parse_refused(token, match="empty")

    @pytest.mark.parametrize("index", [0, 1, 2])
    @pytest.mark.parametrize(
        "char", ["+", "/", "=", " ", "\n", "\r", "\t", "%", "\x00", "é", "\u200b"]
    )
    def test_non_base64url_characters_refused(self, index: int, char: str) -> None:
        parts = list(self._parts())
        middle = len(parts[index]) // 2
        parts[index] = parts[index][:middle] + char + parts[index][middle:]
        parse_refused(".".join(parts), match="base64url")

    @pytest.mark.parametrize("index", [0, 1, 2])
    @pytest.mark.parametrize("suffix", ["=", "==", "\n", " ", "\r\n"])
    def test_padding_or_trailing_whitespace_on_a_part_refused(
        self, index: int, suffix: str
    ) -> None:
        parts = list(self._parts())
        parts[index] += suffix
        parse_refused(".".join(parts), match="base64url")

    @pytest.mark.parametrize("wrap", [" {}", "{} ", "\n{}", "{}\n", "Bearer {}", "\t{}"])
    def test_whitespace_around_the_token_refused(self, wrap: str) -> None:
        parse_refused(wrap.format(make_token()))

    def test_standard_base64_alphabet_refused(self) -> None:
        # A payload whose standard base64 contains both '+' and '/'.
        raw = b'{"x":"\xfb\xff\xbf"}'
        standard = base64.b64encode(raw).decode().rstrip("=")
        assert "+" in standard or "/" in standard
        h, _, s = self._parts()
        parse_refused(f"{h}.{standard}.{s}", match="base64url")

    @pytest.mark.parametrize("index", [0, 1, 2])
    def test_impossible_base64_length_refused(self, index: int) -> None:
        parts = list(self._parts())
        parts[index] = "AAAAA"  # 5 characters cannot encode whole bytes
        parse_refused(".".join(parts))

    @pytest.mark.parametrize(
        "raw",
        [b'["alg","ES256"]', b'"ES256"', b"123", b"null", b"true", b"", b"{", b'{"alg":"ES256"} x'],
    )
    def test_header_not_a_json_object_refused(self, raw: bytes) -> None:
        parse_refused(make_token(raw_header=raw), match="header")

    @pytest.mark.parametrize(
        "raw", [b'["sub","x"]', b'"claims"', b"1", b"null", b"false", b"", b"{", b"{}{}"]
    )
    def test_payload_not_a_json_object_refused(self, raw: bytes) -> None:
        parse_refused(make_token(raw_payload=raw), match="payload")

    @pytest.mark.parametrize(
        "bad",
        [b"\xff", b"\xc0\xaf", b"\xe2\x82", b"\xf4\x90\x80\x80", b"\x80"],
        ids=["ff", "overlong", "truncated", "above-max", "lone-continuation"],
    )
    def test_invalid_utf8_refused(self, bad: bytes) -> None:
        parse_refused(make_token(raw_header=b'{"alg":"ES256","x":"' + bad + b'"}'), match="header")
        parse_refused(make_token(raw_payload=b'{"sub":"' + bad + b'"}'), match="payload")

    def test_utf8_encoded_surrogate_refused(self) -> None:
        """ED A0 80 is not UTF-8 (RFC 3629 §3); json.loads(bytes) lets it through."""
        bad = b"\xed\xa0\x80"
        parse_refused(make_token(raw_header=b'{"alg":"ES256","x":"' + bad + b'"}'))
        parse_refused(make_token(raw_payload=b'{"sub":"' + bad + b'"}'))

    @pytest.mark.parametrize(
        "encoding", ["utf-16-le", "utf-16-be", "utf-16", "utf-32", "utf-8-sig"]
    )
    def test_json_in_another_unicode_encoding_refused(self, encoding: str) -> None:
        """RFC 7515 §5.2: the header is UTF-8; UTF-16/32 or a BOM is not a JWS."""
        raw = json.dumps(header()).encode(encoding)
        parse_refused(make_token(raw_header=raw))

    @pytest.mark.parametrize(
        "raw",
        [
            b'{"alg":"none","alg":"ES256","kid":"ec-1"}',
            b'{"alg":"ES256","kid":"ec-1","kid":"other"}',
            b'{"alg":"ES256","typ":"JWE","typ":"JWT"}',
            b'{"alg":"ES256","x":{"a":1,"a":2}}',
        ],
    )
    def test_duplicate_header_members_refused(self, raw: bytes) -> None:
        parse_refused(make_token(raw_header=raw), match="duplicate")

    @pytest.mark.parametrize(
        "dup",
        [
            b'"sub":"admin","sub":"user-1"',
            b'"aud":"billing","aud":"warden-api"',
            b'"exp":1,"exp":1700000300',
            b'"iss":"https://evil.example","iss":"https://warden.example"',
            b'"ctx":{"role":"owner","role":"viewer"}',
        ],
    )
    def test_duplicate_payload_members_refused(self, dup: bytes) -> None:
        base = json.dumps(claims(sub=MISSING, aud=MISSING, exp=MISSING, iss=MISSING)).encode()
        payload = (
            b'{"iss":"https://warden.example","aud":"warden-api","exp":1700000300,'
            + dup
            + b","
            + base[1:]
        )
        parse_refused(make_token(raw_payload=payload), match="duplicate")

    @pytest.mark.parametrize("where", ["header", "payload"])
    @pytest.mark.parametrize(
        ("opener", "closer", "depth"),
        [(b"[", b"]", 2500), (b'{"":', b"}", 1150)],
        ids=["array", "object"],
    )
    def test_deeply_nested_json_is_a_token_error(
        self, where: str, opener: bytes, closer: bytes, depth: int
    ) -> None:
        """Unauthenticated input: nesting past the recursion limit must still be one 401."""
        nested = opener * depth + b"1" + closer * depth
        if where == "header":
            raw_header = b'{"alg":"ES256","x":' + nested + b"}"
            token = make_token(raw_header=raw_header)
        else:
            token = make_token(raw_payload=b'{"x":' + nested + b"}")
        assert len(token) <= MAX_TOKEN_BYTES
        parse_refused(token)


class TestSize:
    @staticmethod
    def _token_of_length(length: int) -> str:
        base = len(make_token(claims(pad="")))
        start = max(0, (length - base) * 3 // 4 - 8)
        for kid_pad in range(4):
            for filler in range(start, length):
                token = make_token(claims(pad="x" * filler), head=header(kid=KID + "k" * kid_pad))
                if len(token) == length:
                    return token
                if len(token) > length:
                    break
        raise AssertionError(f"could not build a token of {length} characters")

    def test_token_at_the_limit_is_parsed(self) -> None:
        token = self._token_of_length(MAX_TOKEN_BYTES)
        assert jose.parse(token).claims["sub"] == "user-1"

    def test_token_over_the_limit_refused(self) -> None:
        token = self._token_of_length(MAX_TOKEN_BYTES + 1)
        refused(token, match="too large")

    @pytest.mark.parametrize("size", [MAX_TOKEN_BYTES + 1, 10 * MAX_TOKEN_BYTES, 2**20])
    def test_oversized_junk_refused_before_any_work(self, size: int) -> None:
        parse_refused("A" * size, match="too large")
        parse_refused("é" * size, match="too large")


class TestKid:
    @pytest.mark.parametrize("kid", [1, 1.5, True, ["ec-1"], {"kid": "ec-1"}])
    def test_kid_not_a_string_refused(self, kid: Any) -> None:
        parse_refused(make_token(head=header(kid=kid)), match="kid")

    def test_very_long_kid_refused(self) -> None:
        parse_refused(make_token(head=header(kid="k" * 257)), match="kid")
        parse_refused(make_token(head=header(kid="k" * 4000)), match="kid")

    def test_kid_at_the_limit_accepted(self) -> None:
        assert jose.parse(make_token(head=header(kid="k" * 256))).header["kid"] == "k" * 256

    def test_kid_absent_is_left_to_the_resolver(self) -> None:
        assert "kid" not in jose.parse(make_token(head=header(kid=MISSING))).header


# --------------------------------------------------------------------------------------------
# JWK handling
# --------------------------------------------------------------------------------------------


def pyjwt_jwk(key: Any) -> dict[str, Any]:
    if isinstance(key, rsa.RSAPrivateKey | rsa.RSAPublicKey):
        return dict(pyjwt.algorithms.RSAAlgorithm.to_jwk(key, as_dict=True))
    return dict(pyjwt.algorithms.ECAlgorithm.to_jwk(key, as_dict=True))


def real_time_claims(**overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    return claims(iat=now, nbf=now, exp=now + 300, **overrides)


class TestKeyFromJwkRefusals:
    @pytest.mark.parametrize("private", [EC_KEY, RSA_KEY], ids=["ec", "rsa"])
    def test_private_jwk_refused(self, private: Any) -> None:
        jwk = pyjwt_jwk(private)
        assert "d" in jwk
        with pytest.raises(TokenError, match="private"):
            jose.key_from_jwk(jwk)

    @pytest.mark.parametrize("member", ["d", "p", "q", "k"])
    def test_any_private_member_refused(self, member: str) -> None:
        jwk = pyjwt_jwk(RSA_KEY.public_key()) | {member: "AQAB"}
        with pytest.raises(TokenError, match="private"):
            jose.key_from_jwk(jwk)

    def test_symmetric_oct_refused(self) -> None:
        with pytest.raises(TokenError):
            jose.key_from_jwk({"kty": "oct", "k": b64u(b"secret"), "alg": "HS256"})
        with pytest.raises(TokenError, match="unsupported key type"):
            jose.key_from_jwk({"kty": "oct", "alg": "HS256"})

    @pytest.mark.parametrize("kty", ["OKP", "ec", "rsa", "", None, 1, ["EC"], MISSING])
    def test_unknown_kty_refused(self, kty: Any) -> None:
        jwk = pyjwt_jwk(EC_KEY.public_key()) | {"kty": kty}
        if kty is MISSING:
            del jwk["kty"]
        with pytest.raises(TokenError, match="unsupported key type"):
            jose.key_from_jwk(jwk)

    @pytest.mark.parametrize("member", ["x", "y"])
    def test_ec_point_not_on_the_curve_refused(self, member: str) -> None:
        jwk = jwk_json(EC_KEY.public_key(), KID, "ES256")
        value = int.from_bytes(b64u_decode(jwk[member]), "big")
        jwk[member] = b64u(((value + 1) % 2**256).to_bytes(32, "big"))
        with pytest.raises(TokenError, match="not on the curve"):
            jose.key_from_jwk(jwk)

    def test_ec_point_at_zero_refused(self) -> None:
        jwk = {"kty": "EC", "crv": "P-256", "x": b64u(bytes(32)), "y": b64u(bytes(32))}
        with pytest.raises(TokenError):
            jose.key_from_jwk(jwk)

    def test_ec_point_from_another_curve_refused(self) -> None:
        jwk = jwk_json(EC_P384.public_key(), KID, "ES384") | {"crv": "P-256", "alg": "ES256"}
        with pytest.raises(TokenError):
            jose.key_from_jwk(jwk)

    @pytest.mark.parametrize("crv", ["P-192", "P-224", "secp256k1", "Ed25519", "p-256", "", None])
    def test_unknown_curve_refused(self, crv: Any) -> None:
        jwk = jwk_json(EC_KEY.public_key(), KID, "ES256") | {"crv": crv}
        with pytest.raises(TokenError, match="curve"):
            jose.key_from_jwk(jwk)

    def test_missing_curve_refused(self) -> None:
        jwk = jwk_json(EC_KEY.public_key(), KID, "ES256")
        del jwk["crv"]
        with pytest.raises(TokenError, match="curve"):
            jose.key_from_jwk(jwk)

    @pytest.mark.parametrize("crv", [["P-256"], {"P-256": 1}], ids=["list", "object"])
    def test_curve_of_unhashable_type_is_a_token_error(self, crv: Any) -> None:
        jwk = jwk_json(EC_KEY.public_key(), KID, "ES256") | {"crv": crv}
        with pytest.raises(TokenError):
            jose.key_from_jwk(jwk)

    @pytest.mark.parametrize(
        ("kty", "member", "value"),
        [
            ("EC", "x", MISSING),
            ("EC", "y", 1),
            ("EC", "x", "A+B/"),
            ("EC", "y", "AAAAA"),
            ("RSA", "n", MISSING),
            ("RSA", "e", 65537),
            ("RSA", "n", "AQAB=="),
        ],
    )
    def test_missing_or_malformed_members_refused(self, kty: str, member: str, value: Any) -> None:
        public = EC_KEY.public_key() if kty == "EC" else RSA_KEY.public_key()
        jwk: dict[str, Any] = dict(jwk_json(public, KID, "ES256" if kty == "EC" else "RS256"))
        if value is MISSING:
            del jwk[member]
        else:
            jwk[member] = value
        with pytest.raises(TokenError, match=f"JWK member {member}"):
            jose.key_from_jwk(jwk)

    @pytest.mark.parametrize(
        ("n", "e"),
        [
            (b"\x01", b"\x01\x00\x01"),
            (b"\x00", b"\x03"),
            (b"\xff" * 256, b"\x00"),
            (b"\xff" * 256, b"\x02"),
            (b"\x05", b"\x07"),
        ],
        ids=["n-1", "n-0", "e-0", "e-even", "e-above-n"],
    )
    def test_invalid_rsa_numbers_are_a_token_error(self, n: bytes, e: bytes) -> None:
        with pytest.raises(TokenError):
            jose.key_from_jwk({"kty": "RSA", "n": b64u(n), "e": b64u(e), "alg": "RS256"})

    def test_rsa_1024_jwk_refused(self) -> None:
        with pytest.raises(TokenError, match="2048"):
            jose.key_from_jwk(pyjwt_jwk(RSA_1024.public_key()))

    @pytest.mark.parametrize(
        ("public", "alg"),
        [
            (EC_KEY.public_key(), "RS256"),
            (EC_KEY.public_key(), "ES384"),
            (EC_P384.public_key(), "ES256"),
            (RSA_KEY.public_key(), "ES256"),
            (EC_KEY.public_key(), "HS256"),
            (RSA_KEY.public_key(), "HS256"),
            (RSA_KEY.public_key(), "none"),
            (EC_KEY.public_key(), "EdDSA"),
        ],
    )
    def test_jwk_alg_not_matching_the_key_refused(self, public: Any, alg: str) -> None:
        jwk = pyjwt_jwk(public) | {"alg": alg}
        with pytest.raises(TokenError):
            jose.key_from_jwk(jwk)
        with pytest.raises(TokenError):
            jose.key_from_jwk(pyjwt_jwk(public), alg)

    @pytest.mark.parametrize("alg", [1, ["ES256"], True])
    def test_jwk_alg_not_a_string_refused(self, alg: Any) -> None:
        with pytest.raises(TokenError):
            jose.key_from_jwk(pyjwt_jwk(EC_KEY.public_key()) | {"alg": alg})


class TestKeyFromJwkInterop:
    @pytest.mark.parametrize(
        ("private", "alg"),
        [
            (EC_KEY, "ES256"),
            (EC_P384, "ES384"),
            (EC_P521, "ES512"),
            (RSA_KEY, "RS256"),
            (RSA_KEY, "RS384"),
            (RSA_KEY, "RS512"),
        ],
    )
    def test_pyjwt_signed_token_verifies_with_key_from_pyjwt_jwk(
        self, private: Any, alg: str
    ) -> None:
        jwk = pyjwt_jwk(private.public_key()) | {"kid": "interop", "alg": alg}
        key = jose.key_from_jwk(jwk)
        assert (key.kid, key.alg) == ("interop", alg)
        token = pyjwt.encode(real_time_claims(), private, algorithm=alg, headers={"kid": "interop"})
        got = jose.verify_with(
            token, resolver(key), issuer=ISSUER, audiences=[AUDIENCE], leeway=LEEWAY
        )
        assert got["sub"] == "user-1"

    @pytest.mark.parametrize(
        ("public", "expected"),
        [
            (EC_KEY.public_key(), "ES256"),
            (EC_P384.public_key(), "ES384"),
            (EC_P521.public_key(), "ES512"),
            (RSA_KEY.public_key(), "RS256"),
        ],
    )
    def test_default_alg_follows_the_key(self, public: Any, expected: str) -> None:
        jwk = pyjwt_jwk(public)
        jwk.pop("alg", None)
        assert jose.key_from_jwk(jwk).alg == expected

    def test_explicit_alg_overrides_the_jwk(self) -> None:
        jwk = pyjwt_jwk(RSA_KEY.public_key()) | {"alg": "RS256"}
        assert jose.key_from_jwk(jwk, "RS512").alg == "RS512"

    def test_non_string_kid_is_dropped(self) -> None:
        assert jose.key_from_jwk(pyjwt_jwk(EC_KEY.public_key()) | {"kid": 7}).kid is None

    def test_key_from_jwk_rejects_tokens_of_another_key(self) -> None:
        key = jose.key_from_jwk(pyjwt_jwk(EC_KEY.public_key()) | {"kid": KID})
        token = pyjwt.encode(real_time_claims(), EC_ATTACKER, algorithm="ES256")
        with pytest.raises(TokenError, match="bad signature"):
            jose.verify_with(
                token, resolver(key), issuer=ISSUER, audiences=[AUDIENCE], leeway=LEEWAY
            )


class TestRoundTrip:
    @pytest.mark.parametrize(
        ("private", "alg"),
        [(EC_KEY, "ES256"), (EC_P384, "ES384"), (EC_P521, "ES512"), (RSA_KEY, "RS256")],
    )
    def test_sign_then_verify_with(self, private: Any, alg: str) -> None:
        token = jose.sign(real_time_claims(), private, kid="rt", alg=alg)
        key = jose.key_from_jwk(jose.public_jwk(private.public_key(), kid="rt", alg=alg))
        got = jose.verify_with(
            token, resolver(key), issuer=ISSUER, audiences=[AUDIENCE], leeway=LEEWAY
        )
        assert (got["iss"], got["aud"], got["sub"], got["jti"]) == (
            ISSUER,
            AUDIENCE,
            "user-1",
            "jti-1",
        )

    def test_sign_header_is_exactly_alg_kid_typ(self) -> None:
        token = jose.sign(claims(), EC_KEY, kid=KID)
        assert jose.parse(token).header == {"alg": "ES256", "kid": KID, "typ": "JWT"}
        assert check(token)["sub"] == "user-1"

    def test_signed_token_is_not_accepted_by_another_key(self) -> None:
        token = jose.sign(claims(), EC_ATTACKER, kid=KID)
        refused(token, match="bad signature")

    @pytest.mark.parametrize(
        ("private", "alg"),
        [(EC_KEY, "ES256"), (EC_P384, "ES384"), (EC_P521, "ES512"), (RSA_KEY, "RS256")],
    )
    def test_pyjwt_verifies_sign_output_with_public_jwk(self, private: Any, alg: str) -> None:
        jwk = jose.public_jwk(private.public_key(), kid="rt", alg=alg)
        token = jose.sign(real_time_claims(), private, kid="rt", alg=alg)
        assert pyjwt.get_unverified_header(token)["kid"] == "rt"
        got = pyjwt.decode(
            token, pyjwt.PyJWK(jwk).key, algorithms=[alg], audience=AUDIENCE, issuer=ISSUER
        )
        assert got["sub"] == "user-1"

    @pytest.mark.parametrize(
        ("public", "alg"),
        [
            (EC_KEY.public_key(), "ES256"),
            (EC_P521.public_key(), "ES512"),
            (RSA_KEY.public_key(), "RS256"),
        ],
    )
    def test_public_jwk_is_public_and_round_trips(self, public: Any, alg: str) -> None:
        jwk = jose.public_jwk(public, kid="k", alg=alg)
        assert not {"d", "p", "q", "dp", "dq", "qi", "k"} & set(jwk)
        assert jwk["use"] == "sig"
        assert jwk["alg"] == alg
        assert jose.key_from_jwk(jwk).key.public_numbers() == public.public_numbers()
        # The same JWK, as PyJWT reads it, is the same key.
        assert pyjwt.PyJWK(jwk).key.public_numbers() == public.public_numbers()

    def test_ec_coordinates_are_fixed_length(self) -> None:
        jwk = jose.public_jwk(EC_P521.public_key(), kid="k", alg="ES512")
        assert len(b64u_decode(jwk["x"])) == len(b64u_decode(jwk["y"])) == 66


# --------------------------------------------------------------------------------------------
# Properties (hypothesis)
# --------------------------------------------------------------------------------------------

FAST = settings(
    max_examples=200,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)


def parse_is_total(token: Any) -> None:
    """`parse` returns a ParsedToken or raises TokenError: nothing else, ever."""
    try:
        result = jose.parse(token)
    except TokenError:
        return
    assert isinstance(result, ParsedToken)
    assert isinstance(result.header, dict)
    assert isinstance(result.claims, dict)
    assert result.header.get("alg") in jose.ASYMMETRIC_ALGORITHMS
    assert result.raw == token


JSON_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(),
    st.text(max_size=12),
)
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(st.text(max_size=6), children, max_size=4)
    ),
    max_leaves=12,
)
HEADER_DICTS = st.fixed_dictionaries(
    {"alg": st.one_of(st.sampled_from(["ES256", "RS256", "none", "HS256", "PS512"]), JSON_VALUES)},
    optional={
        "typ": st.one_of(st.sampled_from(["JWT", "at+jwt", "JWE"]), JSON_VALUES),
        "kid": st.one_of(st.text(max_size=300), JSON_VALUES),
        "crit": JSON_VALUES,
        "enc": JSON_VALUES,
        "jwk": JSON_VALUES,
    },
)
B64URL_TEXT = st.text(alphabet=B64URL_ALPHABET, max_size=80)


@st.composite
def three_part_tokens(draw: st.DrawFn) -> str:
    def part(json_objects: st.SearchStrategy[Any]) -> str:
        return draw(
            st.one_of(
                B64URL_TEXT,
                st.binary(max_size=60).map(b64u),
                json_objects.map(lambda v: b64u(json.dumps(v).encode())),
            )
        )

    return ".".join(
        [part(st.one_of(HEADER_DICTS, JSON_VALUES)), part(JSON_VALUES), part(JSON_VALUES)]
    )


class TestParseProperties:
    @FAST
    @given(st.text(max_size=300))
    def test_parse_text(self, token: str) -> None:
        parse_is_total(token)

    @FAST
    @given(st.binary(max_size=300).map(lambda b: b.decode("latin-1")))
    def test_parse_binary_as_latin1(self, token: str) -> None:
        parse_is_total(token)

    @FAST
    @given(three_part_tokens())
    def test_parse_structured_three_parts(self, token: str) -> None:
        parse_is_total(token)

    @FAST
    @given(st.lists(B64URL_TEXT, min_size=0, max_size=7).map(".".join))
    def test_parse_any_number_of_base64url_parts(self, token: str) -> None:
        parse_is_total(token)


def _near_now() -> st.SearchStrategy[Any]:
    return st.one_of(
        st.integers(min_value=NOW - 1000, max_value=NOW + 1000),
        st.floats(min_value=NOW - 1000, max_value=NOW + 1000),
    )


MIXED = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=-(2**1100), max_value=2**1100),
    st.floats(),
    st.text(max_size=20),
    st.sampled_from([ISSUER, AUDIENCE, "123", str(NOW + 100), ISSUER + "/"]),
    st.lists(st.one_of(st.text(max_size=10), st.integers(), st.just(AUDIENCE)), max_size=3),
    st.dictionaries(st.text(max_size=5), st.integers(), max_size=2),
)
CLAIM_VALUES = {
    "exp": st.one_of(_near_now(), MIXED),
    "nbf": st.one_of(_near_now(), MIXED),
    "iat": st.one_of(_near_now(), MIXED),
    "iss": st.one_of(st.just(ISSUER), MIXED),
    "aud": st.one_of(st.just(AUDIENCE), st.just([AUDIENCE, "x"]), MIXED),
    "sub": st.one_of(st.text(max_size=10), MIXED),
}


@st.composite
def claim_dicts(draw: st.DrawFn) -> dict[str, Any]:
    present = draw(st.sets(st.sampled_from(sorted(CLAIM_VALUES))))
    result = {name: draw(CLAIM_VALUES[name]) for name in sorted(CLAIM_VALUES) if name in present}
    result.update(draw(st.dictionaries(st.text(max_size=5), JSON_SCALARS, max_size=3)))
    return result


def _finite_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


class TestVerifyProperties:
    @FAST
    @given(claim_dicts())
    def test_verify_random_claims_with_a_valid_signature(self, payload: dict[str, Any]) -> None:
        token = make_token(raw_payload=json.dumps(payload).encode())
        try:
            parsed = jose.parse(token)
        except TokenError:
            return
        try:
            result = jose.verify(
                parsed, VK_EC, issuer=ISSUER, audiences=[AUDIENCE], leeway=LEEWAY, now=NOW
            )
        except TokenError:
            return
        # Accepted: every registered claim must really be valid.
        assert _finite_number(result["exp"])
        assert result["exp"] > NOW - LEEWAY
        for name in ("nbf", "iat"):
            if result.get(name) is not None:
                assert _finite_number(result[name])
                assert result[name] <= NOW + LEEWAY
        assert result["iss"] == ISSUER
        aud = result["aud"]
        assert aud == AUDIENCE or (isinstance(aud, list) and AUDIENCE in aud)
        assert result.get("sub") is None or isinstance(result["sub"], str)

    @FAST
    @given(claim_dicts(), st.sampled_from([0, 1, 2]), st.integers(min_value=0, max_value=7))
    def test_tampered_tokens_never_verify(
        self, payload: dict[str, Any], index: int, bit: int
    ) -> None:
        token = make_token(raw_payload=json.dumps(payload).encode())
        part = bytearray(b64u_decode(token.split(".")[index]))
        part[len(part) // 2] ^= 1 << bit
        tampered = tamper_part(token, index, b64u(bytes(part)))
        with pytest.raises(TokenError):
            check(tampered)
