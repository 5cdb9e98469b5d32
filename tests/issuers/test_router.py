"""`/issuers`: who may manage them, what is accepted, conflicts, isolation, audit."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from sqlalchemy import select

from app.audit.models import AuditEvent
from app.core import jose
from app.core.db import set_session_tenant
from tests.issuers.conftest import trust
from tests.issuers.idp import b64u, pem_of

URL = "/api/v1/issuers"


def body(realm: Any, **overrides: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "issuer": realm.issuer,
        "jwks_uri": realm.jwks_uri,
        "audiences": [realm.audience],
        "algorithms": ["ES256"],
    }
    data.update(overrides)
    return {k: v for k, v in data.items() if v is not None}


async def create(client, handle, payload):
    return await client.post(URL, json=payload, headers=handle.owner.headers)


class TestWhoMayManage:
    async def test_unauthenticated_is_401(self, client, realm):
        assert (await client.get(URL)).status_code == 401
        assert (await client.post(URL, json=body(realm))).status_code == 401

    @pytest.mark.parametrize("role", ["member", "viewer"])
    async def test_below_admin_is_403(self, client, tenant, realm, role):
        user = await tenant.add_user(role)
        assert (await client.get(URL, headers=user.headers)).status_code == 403
        r = await client.post(URL, json=body(realm), headers=user.headers)
        assert r.status_code == 403
        assert r.json()["error"]["code"] == "insufficient_role"

    async def test_admin_may_manage(self, client, tenant, realm):
        admin = await tenant.add_user("admin")
        r = await client.post(URL, json=body(realm), headers=admin.headers)
        assert r.status_code == 201, r.text
        r = await client.delete(f"{URL}/{r.json()['id']}", headers=admin.headers)
        assert r.status_code == 204

    async def test_api_keys_cannot_manage(self, client, tenant):
        r = await client.post(
            "/api/v1/api-keys",
            headers=tenant.owner.headers,
            json={"name": "k", "scopes": ["endpoints:query"]},
        )
        key = r.json()["key"]
        assert (await client.get(URL, headers={"X-API-Key": key})).status_code == 403


class TestCrossTenant:
    async def test_other_tenants_issuer_is_404(self, client, tenant, other_tenant, realm):
        theirs = await trust(other_tenant, realm)
        for method in ("GET", "DELETE"):
            r = await client.request(method, f"{URL}/{theirs['id']}", headers=tenant.owner.headers)
            assert r.status_code == 404
            assert r.json()["error"]["code"] == "issuer_not_found"
        listed = (await client.get(URL, headers=tenant.owner.headers)).json()["items"]
        assert listed == []
        r = await client.get(f"{URL}/{theirs['id']}", headers=other_tenant.owner.headers)
        assert r.status_code == 200

    async def test_two_tenants_may_trust_one_issuer(self, client, tenant, other_tenant, realm):
        # ...for distinct audiences (tests/issuers/test_squatting.py: one pair, one tenant).
        await trust(tenant, realm, audiences=["api://a"])
        await trust(other_tenant, realm, audiences=["api://b"])

    async def test_unknown_id_and_malformed_id(self, client, tenant):
        r = await client.get(f"{URL}/{uuid.uuid4()}", headers=tenant.owner.headers)
        assert r.status_code == 404
        r = await client.get(f"{URL}/not-a-uuid", headers=tenant.owner.headers)
        assert r.status_code == 422


class TestCreate:
    async def test_jwks_uri_issuer_round_trips(self, client, tenant, realm):
        r = await create(client, tenant, body(realm, algorithms=["ES256", "RS256", "ES256"]))
        assert r.status_code == 201, r.text
        created = r.json()
        assert created["issuer"] == realm.issuer
        assert created["jwks_uri"] == realm.jwks_uri
        assert created["algorithms"] == ["ES256", "RS256"]
        assert created["claim_mapping"] == {"subject": "sub", "email": "email", "roles": "roles"}
        assert created["key_ids"] is None
        one = await client.get(f"{URL}/{created['id']}", headers=tenant.owner.headers)
        assert one.json() == created
        listed = (await client.get(URL, headers=tenant.owner.headers)).json()
        assert listed == {"items": [created], "next_cursor": None}

    async def test_inline_jwks_lists_its_kids(self, client, tenant, realm):
        rsa_key = realm.add_key("RS256", kid="rsa-1")
        jwks = {"keys": [realm.keys[0].jwk(), rsa_key.jwk(with_alg=False)]}
        r = await create(
            client, tenant, body(realm, jwks_uri=None, jwks=jwks, algorithms=["ES256", "RS256"])
        )
        assert r.status_code == 201, r.text
        assert r.json()["key_ids"] == [realm.keys[0].kid, "rsa-1"]
        assert r.json()["jwks"] == jwks

    async def test_pem_keys_get_thumbprint_kids(self, client, tenant, realm):
        public = realm.keys[0].public
        r = await create(
            client, tenant, body(realm, jwks_uri=None, public_keys_pem=[pem_of(public)])
        )
        assert r.status_code == 201, r.text
        assert r.json()["key_ids"] == [jose.jwk_thumbprint(public)]

    async def test_claim_mapping_is_stored(self, client, tenant, realm):
        mapping = {"subject": "oid", "email": "upn", "roles": "realm_access.roles"}
        r = await create(client, tenant, body(realm, claim_mapping=mapping))
        assert r.status_code == 201, r.text
        assert r.json()["claim_mapping"] == mapping

    async def test_duplicate_issuer_in_one_tenant_is_409(self, client, tenant, realm):
        assert (await create(client, tenant, body(realm))).status_code == 201
        r = await create(client, tenant, body(realm, audiences=["other"]))
        assert r.status_code == 409
        assert r.json()["error"]["code"] == "issuer_exists"

    async def test_delete_then_gone(self, client, tenant, realm):
        created = await trust(tenant, realm)
        r = await client.delete(f"{URL}/{created['id']}", headers=tenant.owner.headers)
        assert r.status_code == 204
        r = await client.delete(f"{URL}/{created['id']}", headers=tenant.owner.headers)
        assert r.status_code == 404
        assert (await create(client, tenant, body(realm))).status_code == 201

    async def test_pagination(self, client, tenant, idp):
        for _ in range(3):
            await trust(tenant, idp.realm())
        r = await client.get(URL, params={"limit": 2}, headers=tenant.owner.headers)
        page = r.json()
        assert len(page["items"]) == 2
        assert page["next_cursor"]
        r = await client.get(
            URL, params={"limit": 2, "cursor": page["next_cursor"]}, headers=tenant.owner.headers
        )
        assert len(r.json()["items"]) == 1
        r = await client.get(URL, params={"limit": 201}, headers=tenant.owner.headers)
        assert r.status_code == 422


def _private_jwk() -> dict[str, str]:
    private = ec.generate_private_key(ec.SECP256R1())
    jwk = jose.public_jwk(private.public_key(), kid="leaked", alg="ES256")
    d = private.private_numbers().private_value.to_bytes(32, "big")
    return {**jwk, "d": b64u(d)}


def _small_rsa_jwk() -> dict[str, str]:
    small = rsa.generate_private_key(public_exponent=65537, key_size=1024)  # noqa: S505 (the attack)
    return jose.public_jwk(small.public_key(), kid="tiny", alg="RS256") | {"alg": "RS256"}


def _private_pem() -> str:
    return (
        ec.generate_private_key(ec.SECP256R1())
        .private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        .decode()
    )


class TestValidation:
    @pytest.mark.parametrize(
        ("overrides", "field"),
        [
            ({"algorithms": ["none"]}, "algorithms"),
            ({"algorithms": ["HS256"]}, "algorithms"),
            ({"algorithms": ["PS256"]}, "algorithms"),
            ({"algorithms": []}, "algorithms"),
            ({"audiences": []}, "audiences"),
            ({"audiences": [""]}, "audiences"),
            ({"audiences": [f"a{i}" for i in range(21)]}, "audiences"),
            ({"audiences": [" padded "]}, "audiences"),
            ({"issuer": ""}, "issuer"),
            ({"issuer": "x" * 513}, "issuer"),
            ({"issuer": "https://idp.test/\nrealm"}, "issuer"),
            ({"claim_mapping": {"subject": ""}}, "claim_mapping"),
            ({"claim_mapping": {"subject": "has space"}}, "claim_mapping"),
            ({"claim_mapping": {"tenant": "x"}}, "claim_mapping"),
            ({"jwks_uri": None}, "exactly one of jwks_uri, jwks, public_keys_pem"),
            ({"jwks": {"keys": []}}, "exactly one of jwks_uri, jwks, public_keys_pem"),
            ({"public_keys_pem": []}, "public_keys_pem"),
            ({"surprise": True}, "surprise"),
        ],
    )
    async def test_bad_bodies_are_422(self, client, tenant, realm, overrides, field):
        r = await create(client, tenant, body(realm, **overrides))
        assert r.status_code == 422, r.text
        assert r.json()["error"]["code"] == "validation_error"
        assert field in r.text

    @pytest.mark.parametrize(
        "uri",
        [
            "https://10.0.0.1/jwks.json",
            "https://169.254.169.254/latest/meta-data",
            "http://169.254.169.254/latest/meta-data",
            "https://[::1]/jwks.json",
            "https://localhost/jwks.json",
            "http://idp.example.com/jwks.json",
            "ftp://idp.example.com/jwks.json",
            "https://user:pw@idp.example.com/jwks.json",
        ],
    )
    async def test_jwks_uri_must_pass_the_outbound_guard(self, client, tenant, realm, uri):
        r = await create(client, tenant, body(realm, jwks_uri=uri))
        assert r.status_code == 422, r.text
        assert r.json()["error"]["code"] == "jwks_uri_refused"

    async def test_wardens_own_issuer_is_refused(self, client, tenant, runtime, realm):
        r = await create(client, tenant, body(realm, issuer=runtime.settings.issuer))
        assert r.status_code == 422
        assert r.json()["error"]["code"] == "issuer_refused"

    async def test_private_jwk_is_refused_naming_the_key(self, client, tenant, realm):
        jwks = {"keys": [realm.keys[0].jwk(), _private_jwk()]}
        r = await create(client, tenant, body(realm, jwks_uri=None, jwks=jwks))
        assert r.status_code == 422
        error = r.json()["error"]
        assert error["code"] == "invalid_key"
        assert "jwks.keys[1]" in error["message"]
        assert "leaked" in error["message"]
        assert "private" in error["message"]

    @pytest.mark.parametrize(
        ("jwk", "why"),
        [
            ({"kty": "oct", "k": "c2VjcmV0", "kid": "hmac"}, "symmetric"),
            ({"kty": "OKP", "crv": "Ed25519", "x": "AAAA", "kid": "ed"}, "key type"),
            (_small_rsa_jwk(), "2048"),
            ({"kty": "EC", "crv": "P-256", "x": "AAAA", "y": "AAAA", "kid": "off"}, "curve"),
            ("not-an-object", "object"),
        ],
    )
    async def test_unusable_inline_keys_are_refused(self, client, tenant, realm, jwk, why):
        r = await create(client, tenant, body(realm, jwks_uri=None, jwks={"keys": [jwk]}))
        assert r.status_code == 422
        assert r.json()["error"]["code"] == "invalid_key"
        assert why in r.json()["error"]["message"]

    async def test_inline_key_with_declared_hmac_alg_is_refused(self, client, tenant, realm):
        jwk = {**realm.keys[0].jwk(), "alg": "HS256"}
        r = await create(client, tenant, body(realm, jwks_uri=None, jwks={"keys": [jwk]}))
        assert r.status_code == 422
        assert "HS256" in r.json()["error"]["message"]

    async def test_encryption_key_is_refused(self, client, tenant, realm):
        jwk = {**realm.keys[0].jwk(), "use": "enc"}
        r = await create(client, tenant, body(realm, jwks_uri=None, jwks={"keys": [jwk]}))
        assert r.status_code == 422
        assert "use" in r.json()["error"]["message"]

    async def test_key_outside_the_allow_list_is_refused(self, client, tenant, realm):
        jwks = {"keys": [realm.keys[0].jwk()]}  # an ES256 key
        r = await create(
            client, tenant, body(realm, jwks_uri=None, jwks=jwks, algorithms=["RS256"])
        )
        assert r.status_code == 422
        assert "none of the issuer's algorithms" in r.json()["error"]["message"]

    async def test_duplicate_kids_are_refused(self, client, tenant, realm):
        jwk = realm.keys[0].jwk()
        r = await create(
            client, tenant, body(realm, jwks_uri=None, jwks={"keys": [jwk, dict(jwk)]})
        )
        assert r.status_code == 422
        assert "duplicate kid" in r.json()["error"]["message"]

    @pytest.mark.parametrize(
        ("pem", "why"),
        [
            (_private_pem(), "private"),
            ("-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n", "not a public key"),
            ("hello", "exactly one"),
            (
                pem_of(
                    rsa.generate_private_key(public_exponent=65537, key_size=1024).public_key()  # noqa: S505
                ),
                "2048",
            ),
        ],
    )
    async def test_bad_pems_are_refused_naming_the_key(self, client, tenant, realm, pem, why):
        good = pem_of(realm.keys[0].public)
        r = await create(client, tenant, body(realm, jwks_uri=None, public_keys_pem=[good, pem]))
        assert r.status_code == 422
        message = r.json()["error"]["message"]
        assert "public_keys_pem[1]" in message
        assert why in message
        assert "PRIVATE" not in message

    async def test_refused_create_leaves_nothing(self, client, tenant, realm):
        await create(client, tenant, body(realm, jwks_uri=None, jwks={"keys": [_private_jwk()]}))
        assert (await client.get(URL, headers=tenant.owner.headers)).json()["items"] == []


class TestAudit:
    async def test_create_and_delete_are_audited_in_the_transaction(
        self, client, tenant, runtime, realm
    ):
        created = await trust(tenant, realm)
        await client.delete(f"{URL}/{created['id']}", headers=tenant.owner.headers)
        async with runtime.sessionmaker() as session:
            set_session_tenant(session, uuid.UUID(tenant.id))
            rows = (
                await session.execute(
                    select(AuditEvent)
                    .where(AuditEvent.target_id == created["id"])  # type: ignore[arg-type]
                    .order_by(AuditEvent.seq)
                )
            ).scalars()
            events = [(e.action, e.actor_type, e.details["issuer"]) for e in rows]
        assert events == [
            ("issuer.created", "user", realm.issuer),
            ("issuer.deleted", "user", realm.issuer),
        ]
