"""Sign-up, login, tokens, refresh rotation, logout, and Warden as an issuer."""

from __future__ import annotations

import asyncio
import base64
import json
import time

import jwt as pyjwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from app.core import jose
from tests.conftest import PASSWORD, make_tenant


def _b64(data: dict) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=")


class TestTokenAttacks:
    """Every forged, expired or misdirected token gets one 401 and writes nothing."""

    async def test_missing_and_malformed_authorization(self, client):
        r = await client.get("/api/v1/auth/me")
        assert r.status_code == 401
        assert r.json()["error"]["code"] == "unauthenticated"
        r = await client.get("/api/v1/auth/me", headers={"Authorization": "Basic abc"})
        assert r.status_code == 401

    async def test_alg_none_is_rejected(self, client, tenant):
        claims = pyjwt.decode(tenant.owner.access_token, options={"verify_signature": False})
        forged = f"{_b64({'alg': 'none', 'typ': 'JWT'})}.{_b64(claims)}."
        r = await client.get("/api/v1/auth/me", headers={"Authorization": f"Bearer {forged}"})
        assert r.status_code == 401
        assert r.json()["error"]["code"] == "invalid_token"

    async def test_hs256_with_public_key_as_secret_is_rejected(self, client, tenant):
        import hashlib
        import hmac

        jwks = (await client.get("/.well-known/jwks.json")).json()
        claims = pyjwt.decode(tenant.owner.access_token, options={"verify_signature": False})
        key = pyjwt.PyJWK(jwks["keys"][0]).key
        from cryptography.hazmat.primitives import serialization

        pem = key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        signing_input = (
            _b64({"alg": "HS256", "typ": "JWT", "kid": jwks["keys"][0]["kid"]}) + "." + _b64(claims)
        )
        mac = hmac.new(pem, signing_input.encode(), hashlib.sha256).digest()
        forged = signing_input + "." + base64.urlsafe_b64encode(mac).decode().rstrip("=")
        r = await client.get("/api/v1/auth/me", headers={"Authorization": f"Bearer {forged}"})
        assert r.status_code == 401

    async def test_token_signed_by_another_key_is_rejected(self, client, tenant):
        claims = pyjwt.decode(tenant.owner.access_token, options={"verify_signature": False})
        header = pyjwt.get_unverified_header(tenant.owner.access_token)
        attacker = ec.generate_private_key(ec.SECP256R1())
        forged = pyjwt.encode(claims, attacker, algorithm="ES256", headers={"kid": header["kid"]})
        r = await client.get("/api/v1/auth/me", headers={"Authorization": f"Bearer {forged}"})
        assert r.status_code == 401

    async def test_tampered_role_claim_is_rejected(self, client, tenant):
        head, _payload, sig = tenant.owner.access_token.split(".")
        claims = pyjwt.decode(tenant.owner.access_token, options={"verify_signature": False})
        claims["tenant"] = "someone-else"
        forged = f"{head}.{_b64(claims)}.{sig}"
        r = await client.get("/api/v1/auth/me", headers={"Authorization": f"Bearer {forged}"})
        assert r.status_code == 401

    async def test_expired_wrong_audience_and_issuer(self, client, tenant, runtime):
        base = pyjwt.decode(tenant.owner.access_token, options={"verify_signature": False})
        now = int(time.time())
        cases = {
            "expired": {**base, "exp": now - 3600, "iat": now - 7200, "nbf": now - 7200},
            "audience": {**base, "aud": "someone-else"},
            "issuer": {**base, "iss": "https://evil.example"},
            "no-exp": {k: v for k, v in base.items() if k != "exp"},
            "string-exp": {**base, "exp": str(now + 600)},
            "future-nbf": {**base, "nbf": now + 3600},
        }
        for name, claims in cases.items():
            token = runtime.signing_keys.sign(claims)
            r = await client.get("/api/v1/auth/me", headers={"Authorization": f"Bearer {token}"})
            assert r.status_code == 401, name

    async def test_oversized_token_is_rejected_cleanly(self, client):
        r = await client.get("/api/v1/auth/me", headers={"Authorization": "Bearer " + "a" * 9000})
        assert r.status_code == 401
        assert "request_id" in r.json()["error"]


class TestRegister:
    async def test_creates_tenant_and_owner(self, client):
        r = await client.post(
            "/api/v1/auth/register",
            json={
                "tenant": "acme-reg-1",
                "tenant_name": "Acme",
                "email": "Boss@Acme.example",
                "password": PASSWORD,
            },
        )
        assert r.status_code == 201, r.text
        body = r.json()
        assert body["tenant"]["slug"] == "acme-reg-1"
        assert body["user"]["email"] == "boss@acme.example"
        assert body["user"]["role"] == "owner"
        assert "password_hash" not in json.dumps(body)

    async def test_duplicate_slug_is_409_and_bad_input_is_422(self, client, tenant):
        r = await client.post(
            "/api/v1/auth/register",
            json={
                "tenant": tenant.slug,
                "tenant_name": "X",
                "email": "a@b.example",
                "password": PASSWORD,
            },
        )
        assert r.status_code == 409
        for body in (
            {
                "tenant": "Bad Slug",
                "tenant_name": "X",
                "email": "a@b.example",
                "password": PASSWORD,
            },
            {
                "tenant": "ok-slug",
                "tenant_name": "X",
                "email": "not-an-email",
                "password": PASSWORD,
            },
            {"tenant": "ok-slug2", "tenant_name": "X", "email": "a@b.example", "password": "short"},
            {
                "tenant": "ok-slug3",
                "tenant_name": "X",
                "email": "a@b.example",
                "password": "qwertyuiop",
            },
            {
                "tenant": "ok-slug4",
                "tenant_name": "X",
                "email": "a@b.example",
                "password": PASSWORD,
                "role": "owner",
            },
        ):
            r = await client.post("/api/v1/auth/register", json=body)
            assert r.status_code == 422, (body, r.text)
            assert r.json()["error"]["message"]
        r = await client.post(
            "/api/v1/auth/login",
            json={"email": "a@b.example", "password": PASSWORD, "tenant": "ok-slug2"},
        )
        assert r.status_code == 401  # nothing half-written

    async def test_signup_can_be_disabled(self, client, runtime, monkeypatch):
        monkeypatch.setattr(runtime.settings, "allow_signup", False)
        r = await client.post(
            "/api/v1/auth/register",
            json={
                "tenant": "closed-1",
                "tenant_name": "X",
                "email": "a@b.example",
                "password": PASSWORD,
            },
        )
        assert r.status_code == 403
        assert r.json()["error"]["code"] == "signup_disabled"


class TestLogin:
    async def test_unknown_email_and_wrong_password_look_the_same(self, client, tenant):
        bad_pw = await client.post(
            "/api/v1/auth/login",
            json={
                "email": tenant.owner.email,
                "password": "wrong-password-123",
                "tenant": tenant.slug,
            },
        )
        unknown = await client.post(
            "/api/v1/auth/login",
            json={
                "email": "nobody@x.example",
                "password": "wrong-password-123",
                "tenant": tenant.slug,
            },
        )
        no_tenant = await client.post(
            "/api/v1/auth/login",
            json={"email": tenant.owner.email, "password": PASSWORD, "tenant": "no-such-tenant"},
        )
        assert bad_pw.status_code == unknown.status_code == no_tenant.status_code == 401
        assert bad_pw.json()["error"]["message"] == unknown.json()["error"]["message"]
        assert bad_pw.json()["error"]["code"] == no_tenant.json()["error"]["code"]

    async def test_access_token_claims_and_headers(self, client, tenant):
        r = await client.post(
            "/api/v1/auth/login",
            json={"email": tenant.owner.email.upper(), "password": PASSWORD, "tenant": tenant.slug},
        )
        assert r.status_code == 200
        assert r.headers["cache-control"] == "no-store"
        body = r.json()
        assert body["token_type"] == "bearer"
        assert body["expires_in"] > 0
        header = pyjwt.get_unverified_header(body["access_token"])
        assert header["alg"] == "ES256"
        assert header["kid"]
        claims = pyjwt.decode(body["access_token"], options={"verify_signature": False})
        for name in ("sub", "email", "tenant", "role", "iss", "aud", "iat", "nbf", "exp", "jti"):
            assert name in claims
        assert claims["tenant"] == tenant.slug
        assert claims["role"] == "owner"

    async def test_per_account_limit(self, client, tenant, runtime, monkeypatch):
        monkeypatch.setattr(runtime.settings, "login_rate_limit", "3/minute")
        codes = []
        for _ in range(5):
            r = await client.post(
                "/api/v1/auth/login",
                json={
                    "email": tenant.owner.email,
                    "password": "wrong-password-1",
                    "tenant": tenant.slug,
                },
            )
            codes.append(r.status_code)
        assert codes[:3] == [401, 401, 401]
        assert codes[3:] == [429, 429]
        assert "retry-after" in r.headers

    async def test_hash_is_upgraded_when_parameters_change(self, client, tenant, runtime):
        from sqlalchemy import select

        from app.core import passwords
        from app.core.db import set_session_tenant
        from app.users.models import User

        old = runtime.settings.argon2_time_cost
        passwords.password_context.cache_clear()
        runtime.settings.argon2_time_cost = old + 1
        try:
            await tenant.login(tenant.owner.email)
            async with runtime.sessionmaker() as session:
                import uuid

                set_session_tenant(session, uuid.UUID(tenant.id))
                user = (
                    await session.execute(select(User).where(User.email == tenant.owner.email))
                ).scalar_one()
                assert f"t={old + 1}" in user.password_hash
        finally:
            runtime.settings.argon2_time_cost = old
            passwords.password_context.cache_clear()


class TestRefreshAndLogout:
    async def test_rotation_and_reuse_revokes_family(self, client, tenant):
        first = tenant.owner.refresh_token
        r = await client.post("/api/v1/auth/refresh", json={"refresh_token": first})
        assert r.status_code == 200
        second = r.json()["refresh_token"]
        assert second != first
        # Reusing the first token: refused, and the family (incl. the second) dies.
        r = await client.post("/api/v1/auth/refresh", json={"refresh_token": first})
        assert r.status_code == 401
        assert r.json()["error"]["code"] == "refresh_token_reused"
        r = await client.post("/api/v1/auth/refresh", json={"refresh_token": second})
        assert r.status_code == 401

    async def test_concurrent_refresh_issues_one_pair(self, client, tenant):
        token = tenant.owner.refresh_token
        results = await asyncio.gather(
            *[client.post("/api/v1/auth/refresh", json={"refresh_token": token}) for _ in range(3)]
        )
        assert sorted(r.status_code for r in results).count(200) == 1

    async def test_garbage_refresh_token(self, client):
        r = await client.post("/api/v1/auth/refresh", json={"refresh_token": "rt_nope"})
        assert r.status_code == 401
        r = await client.post("/api/v1/auth/refresh", json={"refresh_token": "x" * 600})
        assert r.status_code == 422

    async def test_logout_kills_refresh_and_access_token(self, client, tenant):
        r = await client.post(
            "/api/v1/auth/logout",
            json={"refresh_token": tenant.owner.refresh_token},
            headers=tenant.owner.headers,
        )
        assert r.status_code == 204
        r = await client.get("/api/v1/auth/me", headers=tenant.owner.headers)
        assert r.status_code == 401
        assert r.json()["error"]["code"] == "token_revoked"
        r = await client.post(
            "/api/v1/auth/refresh", json={"refresh_token": tenant.owner.refresh_token}
        )
        assert r.status_code == 401
        # A fresh login still works.
        fresh = await tenant.login(tenant.owner.email)
        r = await client.get(
            "/api/v1/auth/me", headers={"Authorization": f"Bearer {fresh['access_token']}"}
        )
        assert r.status_code == 200

    async def test_logout_requires_bearer(self, client, tenant):
        r = await client.post(
            "/api/v1/auth/logout", json={"refresh_token": tenant.owner.refresh_token}
        )
        assert r.status_code == 401


class TestMe:
    async def test_me(self, client, tenant):
        r = await client.get("/api/v1/auth/me", headers=tenant.owner.headers)
        assert r.status_code == 200
        body = r.json()
        assert body["email"] == tenant.owner.email
        assert body["tenant"] == tenant.slug
        assert body["role"] == "owner"


class TestIssuer:
    async def test_pyjwt_verifies_with_published_jwks_only(self, client, tenant):
        config = (await client.get("/.well-known/openid-configuration")).json()
        assert config["issuer"] == "http://warden.test"
        jwks = (await client.get("/.well-known/jwks.json")).json()
        kid = pyjwt.get_unverified_header(tenant.owner.access_token)["kid"]
        jwk = next(k for k in jwks["keys"] if k["kid"] == kid)
        assert "d" not in jwk
        claims = pyjwt.decode(
            tenant.owner.access_token,
            pyjwt.PyJWK(jwk).key,
            algorithms=["ES256"],
            audience="warden",
            issuer=config["issuer"],
            options={"require": ["exp", "iat", "nbf", "jti", "sub"]},
        )
        assert claims["email"] == tenant.owner.email

    async def test_rotation_keeps_old_tokens_valid_and_publishes_both(self, client, runtime):
        from app.credentials.signing import rotate_signing_key

        handle = await make_tenant(client)
        old_kid = pyjwt.get_unverified_header(handle.owner.access_token)["kid"]
        async with runtime.sessionmaker() as session, session.begin():
            new = await rotate_signing_key(session, runtime.master_keys)
        await runtime.signing_keys.load()
        kids = {k["kid"] for k in (await client.get("/.well-known/jwks.json")).json()["keys"]}
        assert {old_kid, new.kid} <= kids
        r = await client.get("/api/v1/auth/me", headers=handle.owner.headers)
        assert r.status_code == 200
        fresh = await handle.login(handle.owner.email)
        assert pyjwt.get_unverified_header(fresh["access_token"])["kid"] == new.kid


def test_jose_refuses_duplicate_claims():
    payload = '{"sub":"a","sub":"b"}'
    token = (
        _b64({"alg": "ES256", "kid": "k"})
        + "."
        + base64.urlsafe_b64encode(payload.encode()).decode().rstrip("=")
        + ".c2ln"
    )
    with pytest.raises(jose.TokenError):
        jose.parse(token)


class TestEmailForms:
    """Login accepts any form of the address that was registered: one normalisation."""

    @pytest.mark.parametrize(
        "typed",
        [
            "alice@example.com",
            "ALICE@Example.COM",
            "  alice@example.com\t",
            "\uff21lice@example.com",  # fullwidth A, as registered
            "alice@example.com.",  # the root label's dot
            "alice@\uff45xample.com",  # fullwidth e in the domain
        ],
    )
    async def test_every_form_logs_in(self, client, tenant, typed):
        registered = "\uff21lice@example.com"
        r = await client.post(
            "/api/v1/users",
            json={"email": registered, "password": PASSWORD, "role": "member"},
            headers=tenant.owner.headers,
        )
        assert r.status_code == 201, r.text
        assert r.json()["email"] == "alice@example.com"
        body = {"email": typed, "password": PASSWORD, "tenant": tenant.slug}
        r = await client.post("/api/v1/auth/login", json=body)
        assert r.status_code == 200, r.text
        r = await client.post("/api/v1/sessions", json=body)
        assert r.status_code == 201, r.text

    async def test_an_address_that_cannot_be_normalised_is_refused_like_a_wrong_password(
        self, client, tenant
    ):
        body = {"email": "not an address", "password": PASSWORD, "tenant": tenant.slug}
        r = await client.post("/api/v1/auth/login", json=body)
        assert r.status_code == 401
        assert r.json()["error"]["code"] == "invalid_credentials"
