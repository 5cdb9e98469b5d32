"""ROCA (CVE-2017-15361): RSA keys from Infineon's RSALib are factorable; their modulus carries
a fingerprint (N = 65537^c mod M, M a primorial). Such keys are refused when an issuer's keys
are registered (inline JWKS, PEM) and skipped when an IdP's JWKS serves them."""

from __future__ import annotations

import math
import random
import time

import jwt as pyjwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from hypothesis import given, settings
from hypothesis import strategies as st

from app.core import jose
from app.core.jose import TokenError
from tests.issuers.conftest import bearer, trust
from tests.issuers.idp import pem_of

ME = "/api/v1/auth/me"


def first_primes(count: int) -> list[int]:
    found: list[int] = []
    n = 2
    while len(found) < count:
        if all(n % p for p in found if p * p <= n):
            found.append(n)
        n += 1
    return found


def probably_prime(n: int, rounds: int = 32) -> bool:
    if n < 2:
        return False
    for p in first_primes(30):
        if n % p == 0:
            return n == p
    d, s = n - 1, 0
    while d % 2 == 0:
        d, s = d // 2, s + 1
    rng = random.Random(n)
    for _ in range(rounds):
        x = pow(rng.randrange(2, n - 1), d, n)
        if x in (1, n - 1):
            continue
        for _ in range(s - 1):
            x = pow(x, 2, n)
            if x == n - 1:
                break
        else:
            return False
    return True


# RSALib's structure for 2048-bit keys: each 1024-bit prime is p = k*M + (65537^a mod M), M the
# product of the first 126 primes.
M = math.prod(first_primes(126))


def roca_prime(rng: random.Random, bits: int = 1024) -> int:
    while True:
        a = rng.randrange(1, 2**62)
        k = rng.randrange(2 ** (bits - M.bit_length() - 1), 2 ** (bits - M.bit_length()))
        p = k * M + pow(65537, a, M)
        if p.bit_length() == bits and probably_prime(p) and math.gcd(p - 1, 65537) == 1:
            return p


def roca_private_key(seed: int = 1) -> rsa.RSAPrivateKey:
    rng = random.Random(seed)
    while True:
        p, q = roca_prime(rng), roca_prime(rng)
        n = p * q
        if p != q and n.bit_length() == 2048:
            break
    e = 65537
    d = pow(e, -1, (p - 1) * (q - 1))
    numbers = rsa.RSAPrivateNumbers(
        p=p,
        q=q,
        d=d,
        dmp1=rsa.rsa_crt_dmp1(d, p),
        dmq1=rsa.rsa_crt_dmq1(d, q),
        iqmp=rsa.rsa_crt_iqmp(p, q),
        public_numbers=rsa.RSAPublicNumbers(e, n),
    )
    return numbers.private_key()


ROCA_KEY = roca_private_key()


def roca_jwk(kid: str = "roca-1") -> dict[str, str]:
    return jose.public_jwk(ROCA_KEY.public_key(), kid=kid, alg="RS256")


def test_a_constructed_modulus_is_detected():
    n = ROCA_KEY.public_key().public_numbers().n
    assert jose.has_roca_fingerprint(n)
    # The bare structure N = 65537^c mod M (+ a multiple of M) is what is detected.
    rng = random.Random(7)
    for _ in range(50):
        c = rng.randrange(1, 2**64)
        t = rng.randrange(2**1000, 2**1077)
        assert jose.has_roca_fingerprint(t * M + pow(65537, c, M))


@pytest.mark.parametrize("size", [2048, 3072])
def test_normally_generated_keys_are_not_detected(size):
    for _ in range(4 if size == 2048 else 1):
        key = rsa.generate_private_key(public_exponent=65537, key_size=size)
        assert not jose.has_roca_fingerprint(key.public_key().public_numbers().n)


@settings(max_examples=500)
@given(st.integers(2**2047, 2**2048 - 1))
def test_random_moduli_are_almost_never_detected(n):
    # A random modulus passes all 38 residue tests with probability about 2^-30.
    assert not jose.has_roca_fingerprint(n | 1)


def test_key_constructors_refuse_it():
    with pytest.raises(TokenError, match="ROCA"):
        jose.key_from_jwk(roca_jwk())
    with pytest.raises(TokenError, match="ROCA"):
        jose.key_from_pem(pem_of(ROCA_KEY.public_key()))
    certificate_free_pem = ROCA_KEY.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.PKCS1
    )
    with pytest.raises(TokenError, match="ROCA"):  # PKCS#1 "RSA PUBLIC KEY" form too
        jose.key_from_pem(certificate_free_pem.decode())


async def test_registration_refuses_roca_keys(client, tenant, realm):
    base = {"issuer": realm.issuer, "audiences": [realm.audience], "algorithms": ["RS256"]}
    for source in (
        {"jwks": {"keys": [roca_jwk()]}},
        {"public_keys_pem": [pem_of(ROCA_KEY.public_key())]},
    ):
        r = await client.post(
            "/api/v1/issuers", json={**base, **source}, headers=tenant.owner.headers
        )
        assert r.status_code == 422, r.text
        assert r.json()["error"]["code"] == "invalid_key"
        assert "ROCA" in r.json()["error"]["message"]


async def test_a_fetched_roca_key_is_skipped(client, tenant, realm):
    realm.add_key("RS256")
    realm.extra_jwks.append(roca_jwk())
    await trust(tenant, realm)
    assert (
        await client.get(ME, headers=bearer(realm.token(key=realm.keys[-1])))
    ).status_code == 200
    now = int(time.time())
    claims = realm.claims(iat=now, exp=now + 300)
    forged = pyjwt.encode(claims, ROCA_KEY, algorithm="RS256", headers={"kid": "roca-1"})
    r = await client.get(ME, headers=bearer(forged))
    assert r.status_code == 401, r.text
