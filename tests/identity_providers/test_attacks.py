"""Attacks on the OIDC sign-in and logout: forged or replayed state, codes, ID tokens and logout
tokens, another tenant's provider, open redirects. Tokens are forged with the real provider's
own signing key (and with others), so only the claim checks stand between them and a session."""

from __future__ import annotations

import base64
import json
import time
import uuid
from typing import Any
from urllib.parse import parse_qs, urlsplit, urlunsplit

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from sqlalchemy import select

from app.browser_sessions import oidc, oidc_logout
from app.core import jose
from app.core.db import set_session_tenant
from app.identity_providers.models import IdentityProvider, OidcSession
from tests.identity_providers.conftest import (
    Registered,
    add_provider,
    authorization_params,
    new_tenant,
    serve_warden,
    sign_in,
    wait_for_events,
)
from tests.sessions.conftest import set_cookies
from tests.support.oidc_provider import KID, provider_login


async def _me(warden: str, cookie: str) -> int:
    async with httpx.AsyncClient(base_url=warden, timeout=10) as c:
        r = await c.get("/api/v1/auth/me", headers={"Cookie": f"session_id={cookie}"})
        return r.status_code


async def _row(runtime: Any, registered: Registered) -> IdentityProvider:
    async with runtime.sessionmaker() as db:
        set_session_tenant(db, uuid.UUID(registered.tenant.id))
        row = await db.get(IdentityProvider, uuid.UUID(registered.body["id"]))
        assert row is not None
        return row


async def _oidc_session(runtime: Any, tenant_id: str) -> OidcSession:
    async with runtime.sessionmaker() as db:
        set_session_tenant(db, uuid.UUID(tenant_id))
        rows = list((await db.execute(select(OidcSession))).scalars())
        assert len(rows) == 1
        return rows[0]


def _with_query(url: str, **changes: str) -> str:
    parts = urlsplit(url)
    query = {k: v[0] for k, v in parse_qs(parts.query).items()} | changes
    return urlunsplit(parts._replace(query="&".join(f"{k}={v}" for k, v in query.items())))


@pytest.fixture(scope="module")
async def setup(warden, provider) -> Registered:
    tenant = await new_tenant(warden.url)
    return await add_provider(warden.url, provider, tenant)


class TestStateAndCode:
    async def test_wrong_and_missing_state_are_refused(self, warden, setup, runtime):
        async with httpx.AsyncClient(timeout=10) as browser:
            callback = await provider_login(
                browser, setup.start_url, f"a@{setup.tenant.domain}", warden=warden.url
            )
            forged = _with_query(callback, state="forged-state")
            r = await browser.get(forged)
            assert r.status_code == 400
            assert r.json()["error"]["code"] == "oidc_state_invalid"
            r = await browser.get(callback.split("?")[0], params={"code": "x"})
            assert r.status_code == 400
            assert r.json()["error"]["code"] == "oidc_state_invalid"
            assert "set-cookie" not in r.headers
        events = await wait_for_events(runtime, setup.tenant.id, "oidc.sign_in_failed", 2)
        assert {"browser_mismatch", "state_missing"} <= {e.details["reason"] for e in events}

    async def test_a_callback_sent_to_another_browser_is_refused(self, warden, setup, runtime):
        """Login CSRF: an attacker signs in as themselves and sends the callback URL to a
        victim; the victim's browser has no binding cookie, so it is not signed in as the
        attacker, and the attacker's own sign-in is not burned by the attempt."""
        async with httpx.AsyncClient(timeout=10) as attacker:
            callback = await provider_login(
                attacker, setup.start_url, f"csrf@{setup.tenant.domain}", warden=warden.url
            )
            async with httpx.AsyncClient(timeout=10) as victim:
                r = await victim.get(callback)
            assert r.status_code == 400
            assert r.json()["error"]["code"] == "oidc_state_invalid"
            assert "set-cookie" not in r.headers
            r = await attacker.get(callback)
            assert r.status_code == 303, r.text
            assert "session_id" in set_cookies(r)
        events = await wait_for_events(runtime, setup.tenant.id, "oidc.sign_in_failed")
        assert "browser_mismatch" in {e.details["reason"] for e in events}

    async def test_a_browser_refused_mid_sign_in_lands_on_the_sign_in_page(self, warden, setup):
        """A browser (`Accept: text/html`) is not shown a JSON error: it goes on to the console's
        sign-in page, which names the refusal with a fixed text (never the query's own words).
        The refusal is the same as for an API client: no cookie, and the login-CSRF victim's
        attempt does not spend the real sign-in."""
        html = {"Accept": "text/html,application/xhtml+xml"}
        async with httpx.AsyncClient(timeout=10) as browser:
            callback = await provider_login(
                browser, setup.start_url, f"h@{setup.tenant.domain}", warden=warden.url
            )
            async with httpx.AsyncClient(timeout=10, headers=html) as victim:
                r = await victim.get(callback)
                assert r.status_code == 303
                assert "set-cookie" not in r.headers
                where = urlsplit(r.headers["location"])
                assert where.path == "/console/sign-in"
                assert parse_qs(where.query) == {
                    "tenant": [setup.tenant.slug],
                    "problem": ["oidc_state_invalid"],
                }
                page = await victim.get(f"{warden.url}{r.headers['location']}")
                assert page.status_code == 200
                assert "started in another browser" in page.text
                assert "Sign in with" in page.text  # the tenant's providers, offered again
                # A refused start too (a provider the tenant does not have).
                r = await victim.get(setup.start_url.replace(f"/{setup.name}/", "/nope/"))
                assert r.status_code == 303
                assert "problem=identity_provider_not_found" in r.headers["location"]
                # The page never shows what the query says.
                forged = "<script>alert(1)</script> Your account is locked, call +1 555"
                page = await victim.get(f"{warden.url}/console/sign-in", params={"problem": forged})
                assert "alert(1)" not in page.text
                assert "call +1 555" not in page.text
                assert "failed; try again" in page.text
            r = await browser.get(callback)  # the real browser's sign-in is intact
            assert r.status_code == 303, r.text
            assert "session_id" in set_cookies(r)

    async def test_replayed_state_and_code_are_refused(self, warden, setup):
        async with httpx.AsyncClient(timeout=10) as browser:
            callback = await provider_login(
                browser, setup.start_url, f"b@{setup.tenant.domain}", warden=warden.url
            )
            assert (await browser.get(callback)).status_code == 303
            again = await browser.get(callback)  # the same state: spent
            assert again.status_code == 400
            assert again.json()["error"]["code"] == "oidc_state_invalid"
            # The same code under a fresh state: the provider refuses the spent code.
            r = await browser.get(setup.start_url)
            fresh = authorization_params(r.headers["location"])["state"]
            r = await browser.get(_with_query(callback, state=fresh))
            assert r.status_code == 400
            assert r.json()["error"]["code"] == "oidc_code_rejected"
            assert "set-cookie" not in r.headers

    async def test_a_stolen_code_without_the_pkce_verifier_is_useless(
        self, warden, setup, provider
    ):
        async with httpx.AsyncClient(timeout=10) as browser:
            callback = await provider_login(
                browser, setup.start_url, f"c@{setup.tenant.domain}", warden=warden.url
            )
        code = parse_qs(urlsplit(callback).query)["code"][0]
        client = setup.client
        async with httpx.AsyncClient(timeout=10) as attacker:
            for extra in ({}, {"code_verifier": "A" * 64}):
                r = await attacker.post(
                    f"{provider.issuer}/token",
                    auth=(client["client_id"], client["client_secret"]),
                    data={
                        "grant_type": "authorization_code",
                        "code": code,
                        "redirect_uri": setup.body["redirect_uri"],
                        **extra,
                    },
                )
                assert r.status_code == 400, r.text
                assert r.json()["error"] in ("invalid_grant", "invalid_request")

    async def test_mixed_up_issuer_is_refused(self, warden, setup):
        async with httpx.AsyncClient(timeout=10) as browser:
            callback = await provider_login(
                browser, setup.start_url, f"d@{setup.tenant.domain}", warden=warden.url
            )
            r = await browser.get(_with_query(callback, iss="https%3A%2F%2Fevil.example"))
        assert r.status_code == 400
        assert r.json()["error"]["code"] == "oidc_issuer_mismatch"


class TestTenants:
    async def test_another_tenants_provider_and_state(self, warden, provider):
        alpha = await new_tenant(warden.url)
        beta = await new_tenant(warden.url)
        a = await add_provider(warden.url, provider, alpha, name="corp")
        await add_provider(warden.url, provider, beta, name="corp")
        solo = await add_provider(warden.url, provider, alpha, name="solo")
        async with httpx.AsyncClient(timeout=10) as browser:
            # alpha's provider through beta's URL: not found, never a redirect.
            r = await browser.get(solo.start_url.replace(f"/{alpha.slug}/", f"/{beta.slug}/"))
            assert r.status_code == 404
            assert r.json()["error"]["code"] == "identity_provider_not_found"
            r = await browser.get(f"{warden.url}/api/v1/sessions/oidc/no-such-tenant/corp/start")
            assert r.status_code == 404
            # alpha's state and code delivered to beta's callback: unknown there.
            callback = await provider_login(
                browser, a.start_url, f"e@{alpha.domain}", warden=warden.url
            )
            r = await browser.get(callback.replace(f"/{alpha.slug}/", f"/{beta.slug}/"))
            assert r.status_code == 400
            assert r.json()["error"]["code"] == "oidc_state_invalid"
            # … and it did not spend alpha's state.
            r = await browser.get(callback)
            assert r.status_code == 303

    async def test_disabled_provider_is_not_found(self, warden, provider):
        tenant = await new_tenant(warden.url)
        registered = await add_provider(warden.url, provider, tenant)
        async with httpx.AsyncClient(base_url=warden.url, timeout=10) as c:
            r = await c.patch(
                f"/api/v1/identity-providers/{registered.body['id']}",
                headers=tenant.headers,
                json={"enabled": False},
            )
            assert r.status_code == 200, r.text
            r = await c.get(registered.start_url)
        assert r.status_code == 404


class TestReturnTo:
    @pytest.mark.parametrize(
        "target",
        [
            "https://evil.example/",
            "//evil.example/x",
            "/\\evil.example",
            "http://app.example.evil.example/",
            "javascript:alert(1)",
            "http://user@app.example/",
        ],
    )
    async def test_foreign_targets_are_refused(self, warden, setup, target):
        async with httpx.AsyncClient(timeout=10) as browser:
            r = await browser.get(setup.start_url, params={"return_to": target})
        assert r.status_code == 400, r.text
        assert r.json()["error"]["code"] == "return_to_refused"
        assert "location" not in r.headers

    async def test_allowed_origin_and_paths_are_kept(self, warden, setup):
        async with httpx.AsyncClient(timeout=10) as browser:
            signed = await sign_in(
                browser,
                warden.url,
                setup,
                f"f@{setup.tenant.domain}",
                return_to="http://app.example/dashboard",
            )
        assert signed.location == "http://app.example/dashboard"


class TestIdToken:
    """`verify_id_token` against the real provider's published keys."""

    def _claims(self, setup: Registered, provider: Any, **changes: Any) -> dict[str, Any]:
        now = int(time.time())
        claims = {
            "iss": provider.issuer,
            "aud": setup.client["client_id"],
            "sub": "alice",
            "nonce": "the-nonce",
            "iat": now,
            "exp": now + 300,
        }
        claims.update(changes)
        return {k: v for k, v in claims.items() if v is not None}

    async def _verify(self, runtime: Any, setup: Registered, token: str, **kw: Any) -> Any:
        row = await _row(runtime, setup)
        return await oidc.verify_id_token(
            runtime.oidc,
            row,
            token,
            nonce=kw.get("nonce", "the-nonce"),
            access_token=kw.get("access_token"),
        )

    async def test_a_well_formed_token_passes(self, runtime, setup, provider):
        token = provider.sign(self._claims(setup, provider))
        claims = await self._verify(runtime, setup, token)
        assert claims["sub"] == "alice"
        at = "an-access-token"
        token = provider.sign(self._claims(setup, provider, at_hash=jose.half_hash(at, "RS256")))
        assert (await self._verify(runtime, setup, token, access_token=at))["sub"] == "alice"

    @pytest.mark.parametrize(
        ("changes", "reason"),
        [
            ({"aud": "another-client"}, "audience mismatch"),
            ({"aud": ["another-client", "x"]}, "audience mismatch"),
            ({"azp": "another-client"}, "azp is not this client"),
            ({"nonce": "another-nonce"}, "nonce mismatch"),
            ({"nonce": None}, "nonce mismatch"),
            ({"exp": int(time.time()) - 3600}, "token expired"),
            ({"iat": None}, "missing iat"),
            ({"iss": "http://127.0.0.1:1"}, "issuer mismatch"),
            ({"sub": None}, "sub missing or too long"),
            ({"at_hash": "AAAAAAAAAAAAAAAAAAAAAA"}, "at_hash mismatch"),
        ],
    )
    async def test_forged_claims_are_refused(self, runtime, setup, provider, changes, reason):
        if "aud" in changes and isinstance(changes["aud"], list):
            changes["aud"] = [*changes["aud"], setup.client["client_id"]]
            reason = "azp is not this client"
        token = provider.sign(self._claims(setup, provider, **changes))
        with pytest.raises(jose.TokenError) as caught:
            await self._verify(runtime, setup, token, access_token="an-access-token")
        assert caught.value.reason == reason

    async def test_alg_none_and_foreign_keys_are_refused(self, runtime, setup, provider):
        claims = self._claims(setup, provider)

        def b64(data: dict[str, Any]) -> str:
            return base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=")

        unsigned = f"{b64({'alg': 'none', 'kid': KID})}.{b64(claims)}."
        with pytest.raises(jose.TokenError, match="not accepted"):
            await self._verify(runtime, setup, unsigned)
        stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        forged = jose.sign(claims, stranger, kid=KID, alg="RS256")
        with pytest.raises(jose.TokenError, match="bad signature"):
            await self._verify(runtime, setup, forged)
        unknown = jose.sign(claims, stranger, kid="not-the-providers", alg="RS256")
        with pytest.raises(jose.TokenError, match="unknown kid"):
            await self._verify(runtime, setup, unknown)
        # The provider publishes RS256 only: an ES256 token is refused before any key is used.
        from cryptography.hazmat.primitives.asymmetric import ec

        es = jose.sign(claims, ec.generate_private_key(ec.SECP256R1()), kid=KID, alg="ES256")
        with pytest.raises(jose.TokenError, match="algorithm not allowed"):
            await self._verify(runtime, setup, es)


class TestLogoutToken:
    def _logout(self, provider: Any, registered: Registered, **changes: Any) -> str:
        now = int(time.time())
        claims = {
            "iss": provider.issuer,
            "aud": registered.client["client_id"],
            "iat": now,
            "exp": now + 120,
            "jti": uuid.uuid4().hex,
            "events": {oidc_logout.BACKCHANNEL_EVENT: {}},
        }
        claims.update(changes)
        return str(provider.sign({k: v for k, v in claims.items() if v is not None}))

    async def _post(self, warden: str, token: str) -> httpx.Response:
        async with httpx.AsyncClient(base_url=warden, timeout=10) as c:
            return await c.post(
                "/api/v1/sessions/oidc/backchannel-logout", data={"logout_token": token}
            )

    async def test_a_logout_token_works_once(self, warden, provider, runtime):
        tenant = await new_tenant(warden.url)
        registered = await add_provider(warden.url, provider, tenant)
        async with httpx.AsyncClient(timeout=10) as browser:
            signed = await sign_in(browser, warden.url, registered, f"g@{tenant.domain}")
        row = await _oidc_session(runtime, tenant.id)
        assert row.sid
        token = self._logout(provider, registered, sid=row.sid, sub=row.subject)
        r = await self._post(warden.url, token)
        assert r.status_code == 200, r.text
        assert await _me(warden.url, signed.cookie) == 401
        replay = await self._post(warden.url, token)
        assert replay.status_code == 400
        assert replay.json()["error"]["code"] == "invalid_logout_token"
        events = await wait_for_events(runtime, tenant.id, "oidc.backchannel_logout", 2)
        assert [e.outcome for e in events] == ["success", "failure"]
        assert events[-1].details["reason"] == "replayed"

    async def test_malformed_logout_tokens_are_refused(self, warden, provider, runtime):
        tenant = await new_tenant(warden.url)
        registered = await add_provider(warden.url, provider, tenant)
        async with httpx.AsyncClient(timeout=10) as browser:
            signed = await sign_in(browser, warden.url, registered, f"h@{tenant.domain}")
        row = await _oidc_session(runtime, tenant.id)
        stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        now = int(time.time())
        good = {
            "iss": provider.issuer,
            "aud": registered.client["client_id"],
            "iat": now,
            "exp": now + 120,
            "jti": "j",
            "events": {oidc_logout.BACKCHANNEL_EVENT: {}},
            "sid": row.sid,
        }
        forged = [
            self._logout(provider, registered, sid=row.sid, nonce="n"),
            self._logout(provider, registered, sid=row.sid, events=None),
            self._logout(provider, registered, sid=row.sid, events={"other": {}}),
            self._logout(provider, registered),  # neither sid nor sub
            self._logout(provider, registered, sid=row.sid, aud="another-client"),
            self._logout(provider, registered, sid=row.sid, iat=None),
            self._logout(provider, registered, sid=row.sid, jti=None),
            self._logout(provider, registered, sid=row.sid, exp=now - 3600),
            jose.sign(good, stranger, kid=KID, alg="RS256"),
            "not-a-jwt",
        ]
        for token in forged:
            r = await self._post(warden.url, token)
            assert r.status_code == 400, (token, r.text)
            assert r.json()["error"]["code"] == "invalid_logout_token"
        async with httpx.AsyncClient(base_url=warden.url, timeout=10) as c:
            r = await c.post("/api/v1/sessions/oidc/backchannel-logout", json={"logout_token": "x"})
            assert r.status_code == 400
        assert await _me(warden.url, signed.cookie) == 200

    async def test_a_tenants_logout_token_ends_only_its_own_sessions(
        self, warden, provider, runtime
    ):
        alpha = await new_tenant(warden.url)
        beta = await new_tenant(warden.url)
        a = await add_provider(warden.url, provider, alpha, domains=[])
        b = await add_provider(warden.url, provider, beta, domains=[])
        login = "shared@partner.example"
        async with httpx.AsyncClient(timeout=10) as browser:
            in_alpha = await sign_in(browser, warden.url, a, login)
        async with httpx.AsyncClient(timeout=10) as browser:
            in_beta = await sign_in(browser, warden.url, b, login)
        # By `sub` (no `sid`): every session of that user — in the token's audience only.
        r = await self._post(warden.url, self._logout(provider, a, sub=login))
        assert r.status_code == 200, r.text
        assert await _me(warden.url, in_alpha.cookie) == 401
        assert await _me(warden.url, in_beta.cookie) == 200
        events = await wait_for_events(runtime, alpha.id, "oidc.backchannel_logout")
        assert events[-1].details["by"] == "sub"


class TestRateLimit:
    async def test_starting_sign_ins_is_limited_like_password_login(self, provider, app):
        async with serve_warden(login_rate_limit="2/minute") as limited:
            tenant = await new_tenant(limited.url)  # registration counts against it too
            registered = await add_provider(limited.url, provider, tenant)
            async with httpx.AsyncClient(timeout=10) as browser:
                statuses = [(await browser.get(registered.start_url)).status_code for _ in range(3)]
                r = await browser.get(registered.start_url)
        assert 429 in statuses
        assert r.status_code == 429
        assert r.headers["retry-after"]
