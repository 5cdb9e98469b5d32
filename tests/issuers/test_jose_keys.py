"""The key helpers trusted issuers need from `app.core.jose`: PEM keys, their algorithms, and
RFC 7638 thumbprints."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import NameOID

from app.core import jose
from app.core.jose import TokenError

RSA = rsa.generate_private_key(public_exponent=65537, key_size=2048)
P256 = ec.generate_private_key(ec.SECP256R1())
P384 = ec.generate_private_key(ec.SECP384R1())
P521 = ec.generate_private_key(ec.SECP521R1())


def pem(public, fmt=serialization.PublicFormat.SubjectPublicKeyInfo) -> str:
    return public.public_bytes(serialization.Encoding.PEM, fmt).decode()


def certificate(private) -> str:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "idp.example")])
    start = dt.datetime(2020, 1, 1, tzinfo=dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(private.public_key())
        .serial_number(1)
        .not_valid_before(start)
        .not_valid_after(start + dt.timedelta(days=3650))
        .sign(private, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def b64u_int(value: int, size: int) -> str:
    return base64.urlsafe_b64encode(value.to_bytes(size, "big")).rstrip(b"=").decode()


class TestKeyFromPem:
    @pytest.mark.parametrize(
        ("text", "expected"),
        [
            (pem(RSA.public_key()), RSA.public_key()),
            (pem(RSA.public_key(), serialization.PublicFormat.PKCS1), RSA.public_key()),
            (pem(P256.public_key()), P256.public_key()),
            (pem(P521.public_key()), P521.public_key()),
            (certificate(P384), P384.public_key()),
        ],
        ids=["rsa-spki", "rsa-pkcs1", "p256", "p521", "certificate"],
    )
    def test_public_keys_and_certificates(self, text, expected):
        assert jose.key_from_pem(text).public_numbers() == expected.public_numbers()

    @pytest.mark.parametrize(
        ("text", "reason"),
        [
            (
                P256.private_bytes(
                    serialization.Encoding.PEM,
                    serialization.PrivateFormat.PKCS8,
                    serialization.NoEncryption(),
                ).decode(),
                "private",
            ),
            (
                RSA.private_bytes(
                    serialization.Encoding.PEM,
                    serialization.PrivateFormat.TraditionalOpenSSL,
                    serialization.NoEncryption(),
                ).decode(),
                "private",
            ),
            (pem(P256.public_key()) + pem(P384.public_key()), "exactly one"),
            (pem(ed25519.Ed25519PrivateKey.generate().public_key()), "neither RSA nor EC"),
            (pem(ec.generate_private_key(ec.SECP256K1()).public_key()), "neither RSA nor EC"),
            ("-----BEGIN PUBLIC KEY-----\nnot base64\n-----END PUBLIC KEY-----", "not a public"),
            ("-----BEGIN PUBLIC KEY-----\nÄÖ\n-----END PUBLIC KEY-----", "not a public"),
            ("", "empty"),
            ("x" * 20_000, "too large"),
        ],
        ids=[
            "pkcs8-private",
            "rsa-private",
            "two-keys",
            "ed25519",
            "secp256k1",
            "garbage",
            "non-ascii",
            "empty",
            "huge",
        ],
    )
    def test_refusals(self, text, reason):
        with pytest.raises(TokenError, match=reason):
            jose.key_from_pem(text)


class TestAlgorithmsForKey:
    def test_each_key_type_verifies_its_own_family(self):
        assert jose.algorithms_for_key(RSA.public_key()) == {"RS256", "RS384", "RS512"}
        assert jose.algorithms_for_key(P256.public_key()) == {"ES256"}
        assert jose.algorithms_for_key(P384.public_key()) == {"ES384"}
        assert jose.algorithms_for_key(P521.public_key()) == {"ES512"}
        assert jose.algorithms_for_key(b"secret") == frozenset()


class TestThumbprint:
    def test_rsa_thumbprint_follows_rfc7638(self):
        numbers = RSA.public_key().public_numbers()
        canonical = (
            f'{{"e":"{b64u_int(numbers.e, 3)}","kty":"RSA","n":"{b64u_int(numbers.n, 256)}"}}'
        )
        expected = base64.urlsafe_b64encode(hashlib.sha256(canonical.encode()).digest())
        assert jose.jwk_thumbprint(RSA.public_key()) == expected.rstrip(b"=").decode()

    @pytest.mark.parametrize(("key", "crv", "size"), [(P256, "P-256", 32), (P521, "P-521", 66)])
    def test_ec_thumbprint_follows_rfc7638(self, key, crv, size):
        numbers = key.public_key().public_numbers()
        members = {
            "crv": crv,
            "kty": "EC",
            "x": b64u_int(numbers.x, size),
            "y": b64u_int(numbers.y, size),
        }
        canonical = json.dumps(members, separators=(",", ":"))
        expected = base64.urlsafe_b64encode(hashlib.sha256(canonical.encode()).digest())
        assert jose.jwk_thumbprint(key.public_key()) == expected.rstrip(b"=").decode()

    def test_distinct_keys_distinct_thumbprints(self):
        prints = {jose.jwk_thumbprint(k.public_key()) for k in (RSA, P256, P384, P521)}
        assert len(prints) == 4

    def test_unsupported_key(self):
        with pytest.raises(TokenError):
            jose.jwk_thumbprint(ed25519.Ed25519PrivateKey.generate().public_key())
