"""Canonical base64url (RFC 7515 §2, RFC 4648 §3.5): one token has exactly one spelling.

A segment whose length is 2 or 3 mod 4 ends in a character carrying 4 or 2 bits that encode
nothing; a lenient decoder ignores them, so every token would have several spellings that all
verify (a replay or deny-list keyed on the token string can be dodged that way). Each such
spelling, padding, and characters outside the alphabet are refused."""

from __future__ import annotations

import base64
import json
import os
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import given
from hypothesis import strategies as st

from app.core import jose
from app.core.jose import TokenError, VerificationKey

ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
KEY = ec.generate_private_key(ec.SECP256R1())
VK = VerificationKey(kid="k1", alg="ES256", key=KEY.public_key())
ISSUER = "https://idp.example"


def b64u(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def variants(segment: str) -> list[str]:
    """Every other spelling of the segment that differs only in the unused low bits."""
    unused = {0: 0, 2: 4, 3: 2}[len(segment) % 4]
    if not unused:
        return []
    index = ALPHABET.index(segment[-1])
    out = []
    for low in range(1, 1 << unused):
        out.append(segment[:-1] + ALPHABET[(index & ~((1 << unused) - 1)) | low])
    return out


def token(extra: str = "") -> str:
    now = int(time.time())
    claims = {"iss": ISSUER, "aud": "api", "sub": "u", "exp": now + 60, "x": extra}
    return jose.sign(claims, KEY, kid="k1")


def tokens_covering_every_segment_shape() -> list[str]:
    """Tokens whose payload lengths are 0, 2 and 3 mod 4 (the header and the 64-byte ES256
    signature, 86 characters, always carry unused bits)."""
    found: dict[int, str] = {}
    for n in range(12):
        t = token("y" * n)
        found.setdefault(len(t.split(".")[1]) % 4, t)
    assert {2, 3} <= set(found)
    return list(found.values())


def verify(raw: str) -> dict:
    return jose.verify_with(raw, lambda _: VK, issuer=ISSUER, audiences=["api"])


def test_the_canonical_token_verifies():
    for t in tokens_covering_every_segment_shape():
        assert verify(t)["iss"] == ISSUER


@pytest.mark.parametrize("position", [0, 1, 2], ids=["header", "payload", "signature"])
def test_unused_bits_set_in_any_segment_are_refused(position):
    checked = 0
    for t in tokens_covering_every_segment_shape():
        parts = t.split(".")
        for variant in variants(parts[position]):
            spelled = ".".join([*parts[:position], variant, *parts[position + 1 :]])
            assert spelled != t
            # The lenient decoder reads the same bytes: this spelling would have verified.
            pad = "=" * (-len(variant) % 4)
            assert base64.urlsafe_b64decode(variant + pad) == base64.urlsafe_b64decode(
                parts[position] + pad
            )
            with pytest.raises(TokenError, match="canonical"):
                jose.parse(spelled)  # refused for its spelling, before any signature check
            with pytest.raises(TokenError):
                verify(spelled)
            checked += 1
    assert checked > 0


@pytest.mark.parametrize(
    "mangle",
    [
        lambda s: s + "=",
        lambda s: s + "==",
        lambda s: s[:-1] + "+",
        lambda s: s[:-1] + "/",
        lambda s: s[:4] + " " + s[4:],
        lambda s: s[:4] + "\n" + s[4:],
        lambda s: s + "A",  # a length of 1 mod 4 cannot be base64 at all
        lambda s: s[:-1] + "\u00e9",
    ],
    ids=["pad1", "pad2", "plus", "slash", "space", "newline", "dangling", "non-ascii"],
)
@pytest.mark.parametrize("position", [0, 1, 2], ids=["header", "payload", "signature"])
def test_padding_and_foreign_characters_are_refused(mangle, position):
    for t in tokens_covering_every_segment_shape():
        parts = t.split(".")
        mangled = mangle(parts[position])
        if len(mangled) % 4 == 1 and mangle(parts[position]) != parts[position] + "A":
            continue  # already covered by the dangling case
        parts[position] = mangled
        with pytest.raises(TokenError):
            verify(".".join(parts))


@given(st.binary(max_size=80))
def test_canonical_round_trip_and_every_other_spelling_refused(data):
    encoded = b64u(data)
    assert jose._b64decode(encoded) == data
    for variant in variants(encoded):
        with pytest.raises(TokenError):
            jose._b64decode(variant)


def test_jwk_members_must_be_canonical_too():
    jwk = jose.public_jwk(KEY.public_key(), kid="k1", alg="ES256")
    assert jose.key_from_jwk(jwk).kid == "k1"
    for member in ("x", "y"):
        for variant in variants(jwk[member]):
            with pytest.raises(TokenError):
                jose.key_from_jwk({**jwk, member: variant})


def test_header_json_is_untouched_by_the_check():
    # A header segment built by hand, still canonical, parses.
    header = b64u(json.dumps({"alg": "ES256", "kid": "k1", "typ": "JWT"}).encode())
    parts = token().split(".")
    assert jose.parse(".".join([header, parts[1], parts[2]])).header["kid"] == "k1"


_VECTORS = "shared/vectors/wycheproof/json_web_signature_test.json"
# The public test material lives beside the repository (`../shared`), as in CI.
WYCHEPROOF = next(
    (
        path
        for path in (Path(__file__).resolve().parents[3] / _VECTORS, Path("/work") / _VECTORS)
        if path.exists()
    ),
    Path(__file__).resolve().parents[3] / _VECTORS,
)


def _decodes(compact: str) -> bool:
    try:
        for segment in compact.split("."):
            jose._b64decode(segment)
    except TokenError:
        return False
    return True


@pytest.mark.skipif(
    not WYCHEPROOF.exists() and not os.environ.get("CI"),  # in CI a missing file fails the test
    reason="Wycheproof vectors not beside this checkout",
)
def test_wycheproof_base64_vectors():
    """The Wycheproof JWS vectors: every valid compact token's segments decode (real encoders
    are canonical), every token refused for its encoding (spaces, foreign characters, unused
    bits set: `ModifiedUnusedBitsInPayload`) is refused at decoding. Stricter than Wycheproof
    on one point: a character inserted outside the alphabet (`InvalidCharacterInserted*`,
    which it lets a MAC over the literal text accept) is refused too."""
    document = json.loads(WYCHEPROOF.read_text())
    tests = [
        (group["comment"], t)
        for group in document["testGroups"]
        for t in group["tests"]
        if isinstance(t["jws"], str) and t["jws"].count(".") == 2
    ]
    valid = {t["jws"] for _, t in tests if t["result"] == "valid"}
    inserted = [t for _, t in tests if t["comment"].startswith("InvalidCharacterInserted")]
    assert inserted
    for t in inserted:
        assert not _decodes(t["jws"]), t["tcId"]
        valid.discard(t["jws"])
    for compact in valid:
        assert _decodes(compact)
        for segment in compact.split("."):
            for variant in variants(segment):
                with pytest.raises(TokenError):
                    jose._b64decode(variant)
    encoding = [
        t
        for comment, t in tests
        if comment == "base64" and t["result"] == "invalid" and t["jws"] not in valid
    ]
    assert any(t["comment"] == "ModifiedUnusedBitsInPayload" for t in encoding)
    for t in encoding:
        assert not _decodes(t["jws"]), (t["tcId"], t["comment"])
