"""Signing in through a real OpenID provider without a browser (httpx follows the redirects and
fills the provider's login form): JIT users, linking, refusals, the exchange, logout."""

from __future__ import annotations

import asyncio
import time

import httpx

from tests.identity_providers.conftest import (
    add_provider,
    authorization_params,
    count_users,
    new_tenant,
    sign_in,
    wait_for_events,
)
from tests.support.oidc_provider import form_of, provider_login, run_provider


async def _me(warden: str, cookie: str) -> httpx.Response:
    async with httpx.AsyncClient(base_url=warden, timeout=10) as c:
        return await c.get("/api/v1/auth/me", headers={"Cookie": f"session_id={cookie}"})


async def _api_key(warden: str, headers: dict[str, str], *scopes: str) -> str:
    async with httpx.AsyncClient(base_url=warden, timeout=10) as c:
        r = await c.post(
            "/api/v1/api-keys", headers=headers, json={"name": "bff", "scopes": list(scopes)}
        )
    assert r.status_code == 201, r.text
    key: str = r.json()["key"]
    return key


async def _end_provider_session(client: httpx.AsyncClient, url: str) -> httpx.Response:
    """Confirm the provider's logout page (the same browser: its provider cookies)."""
    r = await client.get(url)
    assert r.status_code == 200, r.text[:300]
    action, fields = form_of(r.text)
    fields["logout"] = "yes"
    r = await client.post(
        action if action.startswith("http") else str(r.url.join(action)), data=fields
    )
    return r


class TestSignIn:
    async def test_jit_user_session_exchange_and_rp_initiated_logout(
        self, warden, provider, runtime, internal
    ):
        tenant = await new_tenant(warden.url)
        registered = await add_provider(warden.url, provider, tenant)
        login = f"alice@{tenant.domain}"
        async with httpx.AsyncClient(timeout=10) as browser:
            signed = await sign_in(browser, warden.url, registered, login, return_to="/after")
            # Back where the user wanted to go, with Warden's cookies and no token in sight.
            assert signed.location == f"{warden.url}/after"
            cookies = {
                c.split("=", 1)[0]: c for c in signed.response.headers.get_list("set-cookie")
            }
            assert "HttpOnly" in cookies["session_id"]
            assert "SameSite=lax" in cookies["session_id"]
            assert "HttpOnly" not in cookies["csrf_token"]
            assert "eyJ" not in signed.response.text
            assert all("eyJ" not in value for value in cookies.values())

            me = await _me(warden.url, signed.cookie)
            assert me.status_code == 200, me.text
            assert me.json()["email"] == login
            assert me.json()["role"] == "member"
            assert await count_users(runtime, tenant.id, login) == 1

            # East-west: the identity the provider vouched for; its token only with the scope.
            plain = await _api_key(warden.url, tenant.headers, "sessions:exchange")
            r = await internal.post(
                "/internal/v1/sessions/exchange",
                headers={"Authorization": f"Bearer {plain}"},
                json={"session_id": signed.cookie},
            )
            assert r.status_code == 200, r.text
            body = r.json()
            assert body["claims"]["email"] == login
            assert body["identity"] == {
                "idp": "corp",
                "issuer": provider.issuer,
                "sub": login,
                "groups": ["staff", "idp-users"],
            }
            assert "idp_access_token" not in body
            scoped = await _api_key(
                warden.url, tenant.headers, "sessions:exchange", "sessions:idp_token"
            )
            r = await internal.post(
                "/internal/v1/sessions/exchange",
                headers={"Authorization": f"Bearer {scoped}"},
                json={"session_id": signed.cookie},
            )
            assert r.status_code == 200, r.text
            idp_token = r.json()["idp_access_token"]
            userinfo = await browser.get(
                f"{provider.issuer}/me", headers={"Authorization": f"Bearer {idp_token}"}
            )
            assert userinfo.status_code == 200, userinfo.text
            assert userinfo.json()["sub"] == login

            # Logout: Warden's session ends, and the page is handed the provider's logout.
            async with httpx.AsyncClient(base_url=warden.url, timeout=10) as c:
                r = await c.delete(
                    "/api/v1/sessions/current",
                    params={"post_logout_redirect_uri": f"{warden.url}/bye"},
                    headers=signed.headers(warden.url, write=True),
                )
            assert r.status_code == 200, r.text
            end = r.json()["end_session_url"]
            assert end.startswith(f"{provider.issuer}/session/end?")
            params = authorization_params(end)
            assert params["post_logout_redirect_uri"] == f"{warden.url}/bye"
            assert params["client_id"] == registered.client["client_id"]
            assert params["id_token_hint"].startswith("eyJ")
            assert (await _me(warden.url, signed.cookie)).status_code == 401
            done = await _end_provider_session(browser, end)
            assert done.status_code in (302, 303), done.text[:300]
            assert done.headers["location"].startswith(f"{warden.url}/bye")

        for action in (
            "oidc.sign_in_started",
            "oidc.user_provisioned",
            "oidc.signed_in",
            "user.created",
            "session.created",
            "oidc.logout_redirect",
            "session.revoked",
        ):
            assert await wait_for_events(runtime, tenant.id, action), action

    async def test_back_channel_logout_ends_the_session(self, warden, provider, runtime):
        tenant = await new_tenant(warden.url)
        registered = await add_provider(warden.url, provider, tenant)
        async with httpx.AsyncClient(timeout=10) as browser:
            signed = await sign_in(browser, warden.url, registered, f"bob@{tenant.domain}")
            assert (await _me(warden.url, signed.cookie)).status_code == 200
            # The user logs out at the provider (not through Warden): the provider posts a
            # logout token to Warden's back-channel endpoint before redirecting the browser.
            r = await browser.get(
                f"{provider.issuer}/session/end",
                params={"client_id": registered.client["client_id"]},
            )
            action, fields = form_of(r.text)
            fields["logout"] = "yes"
            r = await browser.post(str(r.url.join(action)), data=fields)
            assert r.status_code in (200, 302, 303), r.text[:300]
        deadline = time.monotonic() + 1
        status = 200
        while time.monotonic() < deadline:
            status = (await _me(warden.url, signed.cookie)).status_code
            if status == 401:
                break
            await asyncio.sleep(0.05)
        assert status == 401
        events = await wait_for_events(runtime, tenant.id, "oidc.backchannel_logout")
        assert events[-1].outcome == "success"
        assert events[-1].details["by"] == "sid"

    async def test_existing_user_is_linked_by_verified_email(self, warden, provider, runtime):
        tenant = await new_tenant(warden.url)
        registered = await add_provider(warden.url, provider, tenant, jit=False)
        async with httpx.AsyncClient(timeout=10) as browser:
            first = await sign_in(browser, warden.url, registered, tenant.owner_email)
            me = await _me(warden.url, first.cookie)
            assert me.json()["email"] == tenant.owner_email
            assert me.json()["role"] == "owner"  # the local user's role, not the IdP default
        async with httpx.AsyncClient(timeout=10) as browser:
            again = await sign_in(browser, warden.url, registered, tenant.owner_email)
            assert (await _me(warden.url, again.cookie)).json()["role"] == "owner"
        assert len(await wait_for_events(runtime, tenant.id, "oidc.user_linked")) == 1
        assert await count_users(runtime, tenant.id, tenant.owner_email) == 1
        # The link is the user's data: it is in their export.
        async with httpx.AsyncClient(base_url=warden.url, timeout=10) as c:
            r = await c.get("/api/v1/me/export", headers={"Cookie": f"session_id={again.cookie}"})
        assert r.status_code == 200, r.text
        [link] = r.json()["identity_links"]
        assert (link["provider"], link["issuer"], link["subject"]) == (
            "corp",
            provider.issuer,
            tenant.owner_email,
        )


class TestRefusals:
    async def _refused(self, warden, registered, login) -> httpx.Response:
        async with httpx.AsyncClient(timeout=10) as browser:
            callback = await provider_login(browser, registered.start_url, login, warden=warden.url)
            return await browser.get(callback)

    async def test_jit_off_is_not_provisioned_and_writes_no_user(self, warden, provider, runtime):
        tenant = await new_tenant(warden.url)
        registered = await add_provider(warden.url, provider, tenant, jit=False)
        login = f"carol@{tenant.domain}"
        r = await self._refused(warden, registered, login)
        assert r.status_code == 403, r.text
        assert r.json()["error"]["code"] == "not_provisioned"
        assert "set-cookie" not in r.headers
        assert await count_users(runtime, tenant.id, login) == 0
        events = await wait_for_events(runtime, tenant.id, "oidc.sign_in_failed")
        assert events[-1].details["reason"] == "jit_disabled"

    async def test_unverified_email_is_not_provisioned(self, warden, provider, runtime):
        tenant = await new_tenant(warden.url)
        registered = await add_provider(warden.url, provider, tenant)
        login = f"unverified-dan@{tenant.domain}"
        r = await self._refused(warden, registered, login)
        assert r.status_code == 403
        assert r.json()["error"]["code"] == "not_provisioned"
        assert await count_users(runtime, tenant.id, login) == 0

    async def test_unverified_email_never_links_to_an_existing_user(
        self, warden, provider, runtime
    ):
        tenant = await new_tenant(warden.url)
        registered = await add_provider(warden.url, provider, tenant, domains=[])
        # The provider vouches for an address it has not verified: no takeover of that user.
        victim = f"unverified-eve@{tenant.domain}"
        async with httpx.AsyncClient(base_url=warden.url, timeout=10) as c:
            r = await c.post(
                "/api/v1/users",
                headers=tenant.headers,
                json={"email": victim, "password": "Another-long-passphrase-9", "role": "admin"},
            )
            assert r.status_code == 201, r.text
        r = await self._refused(warden, registered, victim)
        assert r.status_code == 403
        assert r.json()["error"]["code"] == "not_provisioned"

    async def test_disallowed_domain_is_not_provisioned(self, warden, provider, runtime):
        tenant = await new_tenant(warden.url)
        registered = await add_provider(warden.url, provider, tenant)
        login = "mallory@elsewhere.example"
        r = await self._refused(warden, registered, login)
        assert r.status_code == 403
        assert r.json()["error"]["code"] == "not_provisioned"
        assert await count_users(runtime, tenant.id, login) == 0
        events = await wait_for_events(runtime, tenant.id, "oidc.sign_in_failed")
        assert events[-1].details["reason"] == "email_domain_not_allowed"

    async def test_provider_error_is_a_clear_message(self, warden, provider, runtime):
        tenant = await new_tenant(warden.url)
        registered = await add_provider(warden.url, provider, tenant)
        async with httpx.AsyncClient(timeout=10) as browser:
            r = await browser.get(registered.start_url)
            state = authorization_params(r.headers["location"])["state"]
            callback = registered.body["redirect_uri"]
            r = await browser.get(
                callback,
                params={"state": state, "error": "access_denied", "error_description": "<b>no"},
            )
        assert r.status_code == 403
        error = r.json()["error"]
        assert error["code"] == "oidc_access_denied"
        assert "access_denied" in error["message"]
        assert "<b>" not in r.text
        events = await wait_for_events(runtime, tenant.id, "oidc.sign_in_failed")
        assert events[-1].details["reason"] == "idp:access_denied"

    async def test_provider_down_is_503_with_retry_after(self, warden, runtime):
        tenant = await new_tenant(warden.url)
        with run_provider() as doomed:
            registered = await add_provider(warden.url, doomed, tenant, name="flaky")
            browser = httpx.AsyncClient(timeout=10)
            callback = await provider_login(
                browser, registered.start_url, f"zoe@{tenant.domain}", warden=warden.url
            )
        try:
            r = await browser.get(callback)  # the provider is gone: the code cannot be exchanged
        finally:
            await browser.aclose()
        assert r.status_code == 503, r.text
        assert r.headers["retry-after"]
        assert r.json()["error"]["code"] == "identity_provider_unavailable"
        # The state was spent even though the sign-in failed.
        async with httpx.AsyncClient(timeout=10) as again:
            r = await again.get(callback)
        assert r.status_code == 400
        assert r.json()["error"]["code"] == "oidc_state_invalid"


class TestProviderTokens:
    async def test_the_access_token_is_refreshed_before_it_expires(self, warden, runtime, internal):
        tenant = await new_tenant(warden.url)
        # Access tokens live 30 s, inside Warden's refresh margin: every use refreshes.
        with run_provider(access_token_ttl=30) as short:
            registered = await add_provider(warden.url, short, tenant, name="short")
            async with httpx.AsyncClient(timeout=10) as browser:
                signed = await sign_in(browser, warden.url, registered, f"ivy@{tenant.domain}")
                key = await _api_key(
                    warden.url, tenant.headers, "sessions:exchange", "sessions:idp_token"
                )
                seen = []
                for _ in range(2):
                    r = await internal.post(
                        "/internal/v1/sessions/exchange",
                        headers={"Authorization": f"Bearer {key}"},
                        json={"session_id": signed.cookie},
                    )
                    assert r.status_code == 200, r.text
                    token = r.json()["idp_access_token"]
                    userinfo = await browser.get(
                        f"{short.issuer}/me", headers={"Authorization": f"Bearer {token}"}
                    )
                    assert userinfo.status_code == 200, userinfo.text
                    seen.append(token)
                assert seen[0] != seen[1]  # the rotated refresh token worked a second time
        events = await wait_for_events(runtime, tenant.id, "oidc.token_refreshed", 2)
        assert len(events) == 2
        # The provider is gone now: a refresh cannot happen, and the exchange says so.
        r = await internal.post(
            "/internal/v1/sessions/exchange",
            headers={"Authorization": f"Bearer {key}"},
            json={"session_id": signed.cookie},
        )
        assert r.status_code == 503, r.text
        assert r.headers["retry-after"]

    async def test_a_background_round_refreshes_tokens_about_to_expire(self, warden, runtime):
        from app.browser_sessions.oidc import refresh_expiring

        tenant = await new_tenant(warden.url)
        with run_provider(access_token_ttl=90) as short:
            registered = await add_provider(warden.url, short, tenant, name="bg")
            async with httpx.AsyncClient(timeout=10) as browser:
                await sign_in(browser, warden.url, registered, f"jo@{tenant.domain}")
            # Expires in 90 s: inside the two-minute window of the background round.
            assert await refresh_expiring(runtime.sessionmaker, runtime.oidc) >= 1
            events = await wait_for_events(runtime, tenant.id, "oidc.token_refreshed")
            assert len(events) == 1
            assert events[0].details["provider"] == "bg"


class TestProviderRemoval:
    async def test_deleting_a_provider_ends_its_sessions(self, warden, provider, runtime):
        tenant = await new_tenant(warden.url)
        registered = await add_provider(warden.url, provider, tenant)
        async with httpx.AsyncClient(timeout=10) as browser:
            signed = await sign_in(browser, warden.url, registered, f"lee@{tenant.domain}")
        assert (await _me(warden.url, signed.cookie)).status_code == 200
        async with httpx.AsyncClient(base_url=warden.url, timeout=10) as c:
            r = await c.delete(
                f"/api/v1/identity-providers/{registered.body['id']}", headers=tenant.headers
            )
        assert r.status_code == 204, r.text
        assert (await _me(warden.url, signed.cookie)).status_code == 401
        [event] = await wait_for_events(runtime, tenant.id, "identity_provider.deleted")
        assert event.details["sessions_ended"] == 1
