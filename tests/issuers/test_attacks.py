"""RFC 8725 attacks on satellite tokens, through the real stack (`/auth/me`), each refused with
one 401 (never a 500), against a tenant that trusts a real IdP on 127.0.0.1.

Every forged token is built byte by byte, and `test_the_baseline_forgery_is_accepted` proves the
forging helper makes acceptable tokens, so each refusal below is caused by its attack alone."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from app.core import jose
from tests.issuers.conftest import bearer, trust
from tests.issuers.idp import MISSING, Realm, b64u, b64u_json, pem_of, raw_token

ME = "/api/v1/auth/me"
FAR = 600  # well beyond the 30 s leeway


def forge(
    realm: Realm,
    *,
    key: Any = None,
    alg: str | None = None,
    header: dict[str, Any] | None = None,
    payload: bytes | None = None,
    **claims: Any,
) -> str:
    signing = realm.keys[0]
    head = {"alg": alg or signing.alg, "typ": "JWT", "kid": signing.kid, **(header or {})}
    head = {k: v for k, v in head.items() if v is not MISSING}
    body = payload if payload is not None else realm.claims(**claims)
    return raw_token(head, body, key if key is not None else signing.private, alg or signing.alg)


@pytest.fixture
async def trusted(client, tenant, realm) -> Realm:
    """A realm whose ES256 key and an RS256 key are trusted, allow-list ES256 + RS256."""
    realm.add_key("RS256")
    await trust(tenant, realm, algorithms=["ES256", "RS256"])
    return realm


async def refused(client, token: str, **headers: str) -> None:
    r = await client.get(ME, headers={**bearer(token), **headers})
    assert r.status_code == 401, r.text
    assert r.json()["error"]["code"] == "invalid_token"


async def test_the_baseline_forgery_is_accepted(client, trusted):
    r = await client.get(ME, headers=bearer(forge(trusted)))
    assert r.status_code == 200, r.text
    rsa_key = trusted.keys[1]
    token = forge(trusted, key=rsa_key.private, alg="RS256", header={"kid": rsa_key.kid})
    assert (await client.get(ME, headers=bearer(token))).status_code == 200


class TestAlgorithms:
    async def test_alg_none(self, client, trusted):
        for alg in ("none", "None", "NONE"):
            await refused(client, forge(trusted, alg="none", header={"alg": alg}))

    @pytest.mark.parametrize("hs", ["HS256", "HS384", "HS512"])
    async def test_hmac_keyed_with_the_public_key(self, client, trusted, hs):
        public = trusted.keys[0].public
        for secret in (
            pem_of(public).encode(),
            json.dumps(trusted.keys[0].jwk()).encode(),
        ):
            await refused(client, forge(trusted, key=secret, alg=hs))

    async def test_alg_outside_the_issuers_allow_list(self, client, tenant, realm):
        rsa_key = realm.add_key("RS256")
        await trust(tenant, realm, algorithms=["ES256"])
        token = forge(realm, key=rsa_key.private, alg="RS256", header={"kid": rsa_key.kid})
        await refused(client, token)

    async def test_alg_the_key_itself_cannot_verify(self, client, tenant, realm):
        rsa_key = realm.add_key("RS256")  # published with "alg": "RS256"
        await trust(tenant, realm, algorithms=["ES256", "ES384", "RS256", "RS512"])
        token = forge(realm, key=rsa_key.private, alg="RS512", header={"kid": rsa_key.kid})
        await refused(client, token)
        # A P-256 key named by an ES384 token.
        await refused(client, forge(realm, alg="ES256", header={"alg": "ES384"}))

    async def test_rsa_key_named_by_an_ec_token(self, client, trusted):
        rsa_key = trusted.keys[1]
        await refused(client, forge(trusted, header={"kid": rsa_key.kid}))


class TestKeys:
    async def test_signed_by_a_key_the_idp_never_published(self, client, trusted):
        attacker = ec.generate_private_key(ec.SECP256R1())
        await refused(client, forge(trusted, key=attacker))

    @pytest.mark.parametrize("member", ["jwk", "jku", "x5u", "x5c"])
    async def test_embedded_or_remote_attacker_keys_are_ignored(self, client, trusted, idp, member):
        evil = idp.realm()  # a real JWKS the attacker controls
        evil_key = evil.keys[0]
        pointers: dict[str, Any] = {
            "jwk": evil_key.jwk(),
            "jku": evil.jwks_uri,
            "x5u": evil.jwks_uri,
            "x5c": ["MIIB"],
        }
        token = forge(
            trusted, key=evil_key.private, header={"kid": evil_key.kid, member: pointers[member]}
        )
        await refused(client, token)
        # Same attacker key, but naming the IdP's own kid: the IdP's key decides, not the header.
        token = forge(trusted, key=evil_key.private, header={member: pointers[member]})
        await refused(client, token)
        assert evil.fetches == 0
        # A genuine token carrying such a header is judged on the IdP's key alone.
        genuine = forge(trusted, header={member: pointers[member]})
        assert (await client.get(ME, headers=bearer(genuine))).status_code == 200

    async def test_issuer_x_key_claiming_issuer_y(self, client, tenant, idp):
        x, y = idp.realm(), idp.realm(audience="api://shared")
        x.audience = "api://shared"
        await trust(tenant, x)
        await trust(tenant, y)
        x_key = x.keys[0]
        # X's key and kid, Y's iss.
        await refused(client, forge(x, iss=y.issuer))
        # X's key, Y's kid, Y's iss.
        await refused(client, forge(y, key=x_key.private))
        assert (await client.get(ME, headers=bearer(x.token()))).status_code == 200

    async def test_kid_is_never_a_path(self, client, trusted):
        for kid in ("../../jwks.json", "http://127.0.0.1/evil", "a" * 257, "%2e%2e/"):
            await refused(client, forge(trusted, header={"kid": kid}))

    @pytest.mark.parametrize("kid", [7, ["k"], {"k": 1}, True])
    async def test_kid_of_the_wrong_type(self, client, trusted, kid):
        await refused(client, forge(trusted, header={"kid": kid}))


class TestRegisteredClaims:
    async def test_expired(self, client, trusted):
        now = int(time.time())
        await refused(client, forge(trusted, iat=now - 2 * FAR, nbf=now - 2 * FAR, exp=now - FAR))

    async def test_expired_within_leeway_is_accepted(self, client, trusted):
        token = forge(trusted, exp=int(time.time()) - 5)
        assert (await client.get(ME, headers=bearer(token))).status_code == 200

    async def test_missing_exp(self, client, trusted):
        await refused(client, forge(trusted, exp=MISSING))

    async def test_not_yet_valid(self, client, trusted):
        await refused(client, forge(trusted, nbf=int(time.time()) + FAR))

    async def test_issued_in_the_future(self, client, trusted):
        await refused(client, forge(trusted, iat=int(time.time()) + FAR))

    @pytest.mark.parametrize("claim", ["exp", "nbf", "iat"])
    @pytest.mark.parametrize("kind", ["string", "bool", "list", "null-ish"])
    async def test_dates_that_are_not_numbers(self, client, trusted, claim, kind):
        value = int(time.time()) + 300
        shaped = {"string": str(value), "bool": True, "list": [value], "null-ish": {}}[kind]
        await refused(client, forge(trusted, **{claim: shaped}))

    @pytest.mark.parametrize(
        "transform",
        [
            str.upper,
            lambda iss: iss + "/",
            lambda iss: iss.replace("https://", "http://"),
            lambda iss: " " + iss,
            lambda iss: iss.rstrip("/") + "?",
        ],
        ids=["case", "trailing-slash", "scheme", "space", "query"],
    )
    async def test_issuer_must_match_exactly(self, client, trusted, transform):
        await refused(client, forge(trusted, iss=transform(trusted.issuer)))

    @pytest.mark.parametrize("iss", [MISSING, 7, ["x"], ""])
    async def test_issuer_missing_or_malformed(self, client, trusted, iss):
        await refused(client, forge(trusted, iss=iss))

    @pytest.mark.parametrize("aud", ["api://other", ["api://a", "api://b"], [], 7, [7], MISSING])
    async def test_audience_must_intersect(self, client, trusted, aud):
        await refused(client, forge(trusted, aud=aud))

    @pytest.mark.parametrize("sub", [7, "", ["u"], MISSING])
    async def test_subject_must_be_a_string(self, client, trusted, sub):
        await refused(client, forge(trusted, sub=sub))


class TestHeaders:
    @pytest.mark.parametrize("typ", ["JWS", "dpop+jwt", "secevent+jwt", "id_token", 1])
    async def test_typ_other_than_jwt_or_at_jwt(self, client, trusted, typ):
        await refused(client, forge(trusted, header={"typ": typ}))

    @pytest.mark.parametrize("crit", [["exp"], ["b64"], [], "exp"])
    async def test_crit(self, client, trusted, crit):
        await refused(client, forge(trusted, header={"crit": crit}))

    async def test_encrypted_or_compressed(self, client, trusted):
        await refused(client, forge(trusted, header={"enc": "A256GCM"}))
        await refused(client, forge(trusted, header={"zip": "DEF"}))


class TestSerialisation:
    async def test_duplicate_claims(self, client, trusted):
        claims = trusted.claims()
        text = json.dumps(claims)[:-1] + ', "sub": "admin"}'
        await refused(client, forge(trusted, payload=text.encode()))

    async def test_duplicate_header_members(self, client, trusted):
        key = trusted.keys[0]
        head = f'{{"alg":"ES256","typ":"JWT","kid":"{key.kid}","kid":"other"}}'.encode()
        body = b64u_json(trusted.claims())
        from tests.issuers.idp import raw_signature

        signing_input = f"{b64u(head)}.{body}".encode()
        token = f"{b64u(head)}.{body}.{b64u(raw_signature(signing_input, key.private, 'ES256'))}"
        await refused(client, token)

    async def test_json_serialisation(self, client, trusted):
        h, p, s = forge(trusted).split(".")
        flattened = json.dumps({"protected": h, "payload": p, "signature": s})
        await refused(client, flattened)

    async def test_oversized_token(self, client, trusted):
        await refused(client, forge(trusted, padding="x" * 9000))

    @pytest.mark.parametrize(
        "token",
        [
            "a.b",
            "a.b.c.d.e",
            "....",
            "eyJhbGciOiJFUzI1NiJ9.bm90IGpzb24.c2ln",
            "eyJhbGciOiJFUzI1NiJ9.WzFd.c2ln",
            "!!!.???.***",
        ],
    )
    async def test_malformed(self, client, trusted, token):
        await refused(client, token)

    async def test_tampered_payload(self, client, trusted):
        h, _, s = forge(trusted).split(".")
        payload = b64u_json(trusted.claims(sub="admin"))
        await refused(client, f"{h}.{payload}.{s}")


async def test_the_ambiguity_error_names_no_tenant(client, tenant, other_tenant, realm):
    await trust(tenant, realm, audiences=["api://a"])
    await trust(other_tenant, realm, audiences=["api://b"])
    r = await client.get(ME, headers=bearer(realm.token(aud=["api://a", "api://b"])))
    assert r.status_code == 401
    assert tenant.slug not in r.text
    assert other_tenant.slug not in r.text


async def test_thumbprint_is_rfc7638_shaped(realm):
    """PEM keys are named by their thumbprint; it must not depend on kid, alg or use."""
    key = realm.keys[0]
    assert jose.jwk_thumbprint(key.public) == jose.jwk_thumbprint(
        jose.key_from_jwk({**key.jwk(), "kid": "other", "use": "sig"}).key
    )
