"""Browser sessions: login, cookie authentication, CSRF defence, timeouts, listing, revocation."""

from __future__ import annotations

import contextlib
import hashlib
import secrets
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import httpx
import pytest

from app.core.config import Settings
from app.core.types import utcnow
from tests.conftest import PASSWORD, make_endpoint, make_tenant, random_ip
from tests.sessions.conftest import (
    ALLOWED_ORIGIN,
    PUBLIC_ORIGIN,
    api_key,
    audit_events,
    browser_login,
    change_session_row,
    session_row,
    set_cookies,
)


@contextlib.asynccontextmanager
async def _custom_app(**settings: Any) -> AsyncIterator[httpx.AsyncClient]:
    """A client of a public app built with these settings (its own runtime, same database)."""
    from app.main import create_app

    application = create_app(Settings(**settings))
    async with application.router.lifespan_context(application):
        transport = httpx.ASGITransport(app=application, client=(random_ip(), 40000))
        async with httpx.AsyncClient(transport=transport, base_url="http://dev.test") as c:
            c.application = application  # type: ignore[attr-defined]
            yield c


async def _post_from_elsewhere(c: httpx.AsyncClient, url: str, **kwargs: Any) -> httpx.Response:
    """The same request from another client address (so only per-account limits couple)."""
    transport = httpx.ASGITransport(app=c.application, client=(random_ip(), 40000))  # type: ignore[attr-defined]
    async with httpx.AsyncClient(transport=transport, base_url="http://dev.test") as other:
        return await other.post(url, **kwargs)


async def _me(client, login, **kwargs):
    return await client.get("/api/v1/auth/me", headers=login.headers(**kwargs))


async def _endpoint_slugs(client, tenant) -> set[str]:
    r = await client.get("/api/v1/endpoints", headers=tenant.owner.headers)
    return {ep["slug"] for ep in r.json()["items"]}


class TestLoginAttacks:
    """A browser login gives nothing to a wrong password, a foreign page or a planted cookie."""

    async def test_wrong_password_sets_no_cookie_and_is_audited_like_auth_login(
        self, client, tenant, runtime
    ):
        r = await client.post(
            "/api/v1/sessions",
            json={"email": tenant.owner.email, "password": "wrong-password", "tenant": tenant.slug},
        )
        assert r.status_code == 401
        assert r.json()["error"]["code"] == "invalid_credentials"
        assert "set-cookie" not in r.headers
        logins = await audit_events(runtime, tenant.id, "auth.login")
        failures = [e for e in logins if e.outcome != "success"]
        assert [e.details["reason"] for e in failures] == ["bad_password"]

    async def test_unknown_tenant_and_user_answer_the_same(self, client, tenant):
        for body in (
            {"email": tenant.owner.email, "password": PASSWORD, "tenant": "no-such-tenant"},
            {"email": "ghost@nowhere.example", "password": PASSWORD, "tenant": tenant.slug},
        ):
            r = await client.post("/api/v1/sessions", json=body)
            assert r.status_code == 401
            assert r.json()["error"]["code"] == "invalid_credentials"

    async def test_login_posted_from_a_foreign_origin_is_refused(self, client, tenant):
        body = {"email": tenant.owner.email, "password": PASSWORD, "tenant": tenant.slug}
        for origin in ("https://evil.example", "null", f"{ALLOWED_ORIGIN}.evil.example"):
            r = await client.post("/api/v1/sessions", json=body, headers={"Origin": origin})
            assert r.status_code == 403, origin
            assert r.json()["error"]["code"] == "csrf_failed"
            assert "set-cookie" not in r.headers

    async def test_per_account_limit_is_shared_with_auth_login(self, database):
        async with _custom_app(login_rate_limit="3/minute") as c:
            handle = await make_tenant(c)  # its owner's login spends one attempt
            wrong = {
                "email": handle.owner.email,
                "password": "wrong-password",
                "tenant": handle.slug,
            }
            r = await _post_from_elsewhere(c, "/api/v1/auth/login", json=wrong)
            assert r.status_code == 401
            r = await _post_from_elsewhere(c, "/api/v1/sessions", json=wrong)
            assert r.status_code == 401
            # One budget per account across /auth/login and /sessions: it is spent.
            right = {**wrong, "password": PASSWORD}
            r = await _post_from_elsewhere(c, "/api/v1/sessions", json=right)
            assert r.status_code == 429
            assert r.json()["error"]["code"] == "rate_limited"
            assert "set-cookie" not in r.headers

    async def test_unknown_fields_are_rejected(self, client, tenant):
        r = await client.post(
            "/api/v1/sessions",
            json={
                "email": tenant.owner.email,
                "password": PASSWORD,
                "tenant": tenant.slug,
                "session_id": "planted",
            },
        )
        assert r.status_code == 422

    async def test_session_fixation_a_planted_cookie_is_never_adopted(self, client, tenant):
        planted = secrets.token_urlsafe(32)
        login = await browser_login(
            client, tenant, headers={"Cookie": f"session_id={planted}; csrf_token=planted"}
        )
        assert login.cookie != planted
        assert login.csrf != "planted"
        r = await client.get("/api/v1/auth/me", headers={"Cookie": f"session_id={planted}"})
        assert r.status_code == 401
        assert r.json()["error"]["code"] == "invalid_session"
        assert (await _me(client, login)).status_code == 200

    async def test_no_jwt_reaches_the_browser(self, client, tenant):
        login = await browser_login(client, tenant)
        text = login.response.text + str(login.response.headers)
        assert "access_token" not in text
        assert "refresh_token" not in text
        assert "eyJ" not in text  # no JOSE header anywhere
        assert set(login.response.json()) == {"session", "csrf_token"}
        assert set(login.response.json()["session"]) == {
            "id",
            "created_at",
            "expires_at",
            "user_agent",
            "ip",
        }


class TestCookieFlags:
    """The session cookie is HttpOnly, Secure, SameSite=Lax, Path=/; only its hash is stored."""

    async def test_session_and_csrf_cookies(self, client, tenant, runtime):
        login = await browser_login(client, tenant)
        cookies = set_cookies(login.response)
        session, csrf = cookies["session_id"], cookies["csrf_token"]
        assert session["httponly"] is True
        assert session["secure"] is True
        assert session["samesite"].lower() == "lax"
        assert session["path"] == "/"
        assert "httponly" not in csrf  # the page's script reads it to echo it
        assert csrf["secure"] is True
        assert csrf["samesite"].lower() == "lax"
        assert csrf["path"] == "/"
        # 256 random bits, URL-safe base64.
        assert len(login.cookie) >= 43
        assert len(login.csrf) >= 43
        row = await session_row(runtime, tenant.id, login.id)
        assert row.token_hash == hashlib.sha256(login.cookie.encode()).hexdigest()
        assert row.csrf_hash == hashlib.sha256(login.csrf.encode()).hexdigest()
        assert login.cookie not in str(row.model_dump())

    async def test_creation_is_audited(self, client, tenant, runtime):
        login = await browser_login(client, tenant)
        events = await audit_events(runtime, tenant.id, "session.created")
        assert [(e.target_id, e.actor_id, e.outcome) for e in events] == [
            (login.id, tenant.owner.id, "success")
        ]
        assert login.cookie not in str(events[0].details)

    async def test_user_agent_and_ip_are_recorded(self, client, tenant):
        login = await browser_login(client, tenant, headers={"User-Agent": "TestBrowser/1.0"})
        body = login.response.json()["session"]
        assert body["user_agent"] == "TestBrowser/1.0"
        assert str(body["ip"]).startswith("10.")

    async def test_secure_is_omitted_only_when_configured_for_http(self, database):
        async with _custom_app(session_cookie_secure=False) as c:
            handle = await make_tenant(c)
            login = await browser_login(c, handle)
        cookies = set_cookies(login.response)
        assert "secure" not in cookies["session_id"]
        assert "secure" not in cookies["csrf_token"]
        assert cookies["session_id"]["httponly"] is True


class TestCookieAuthentication:
    """The cookie authenticates what a bearer token does; nothing else passes for it."""

    async def test_unknown_malformed_and_oversized_cookies_are_401(self, client):
        for value in (secrets.token_urlsafe(32), "", "x" * 5000, "a;b"):
            r = await client.get("/api/v1/auth/me", headers={"Cookie": f"session_id={value}"})
            assert r.status_code == 401, value
        r = await client.get(
            "/api/v1/auth/me", headers={"Cookie": f"session_id={secrets.token_urlsafe(32)}"}
        )
        assert r.json()["error"]["code"] == "invalid_session"

    async def test_the_csrf_cookie_is_no_credential(self, client, tenant):
        login = await browser_login(client, tenant)
        r = await client.get("/api/v1/auth/me", headers={"Cookie": f"csrf_token={login.csrf}"})
        assert r.status_code == 401

    async def test_cookie_authenticates_the_user_with_its_role(self, client, tenant):
        member = await tenant.add_user("member")
        login = await browser_login(client, tenant, email=member.email)
        r = await _me(client, login)
        assert r.status_code == 200, r.text
        me = r.json()
        assert (me["id"], me["kind"], me["role"]) == (member.id, "user", "member")
        assert (me["email"], me["tenant"]) == (member.email, tenant.slug)
        # The member's role applies: user administration needs admin.
        r = await client.get("/api/v1/users", headers=login.headers())
        assert r.status_code == 403
        owner = await browser_login(client, tenant)
        r = await client.get("/api/v1/users", headers=owner.headers())
        assert r.status_code == 200

    async def test_a_bearer_header_wins_over_the_cookie(self, client, tenant):
        member = await tenant.add_user("member")
        login = await browser_login(client, tenant)  # the owner's cookie
        r = await client.get("/api/v1/auth/me", headers={**login.headers(), **member.headers})
        assert r.json()["id"] == member.id

    async def test_reads_need_no_csrf_token(self, client, tenant):
        login = await browser_login(client, tenant)
        r = await client.get("/api/v1/endpoints", headers=login.headers(csrf=False, origin=None))
        assert r.status_code == 200


class TestCsrf:
    """State-changing cookie requests need the session's token and an allowed Origin."""

    async def test_missing_wrong_or_foreign_token_is_403_and_changes_nothing(
        self, client, tenant, runtime
    ):
        login = await browser_login(client, tenant)
        other = await browser_login(client, tenant)  # same user, another session
        before = await _endpoint_slugs(client, tenant)
        cases = {
            "missing": login.headers(csrf=False),
            "wrong": {**login.headers(), "X-CSRF-Token": secrets.token_urlsafe(32)},
            "other session's": {**login.headers(), "X-CSRF-Token": other.csrf},
            "empty": {**login.headers(), "X-CSRF-Token": ""},
        }
        for name, headers in cases.items():
            r = await client.post(
                "/api/v1/endpoints", json={"name": "X", "slug": f"x-{name[:3]}"}, headers=headers
            )
            assert r.status_code == 403, name
            assert r.json()["error"]["code"] == "csrf_failed"
        assert await _endpoint_slugs(client, tenant) == before
        refused = await audit_events(runtime, tenant.id, "auth.csrf_failed")
        reasons = [e.details["reason"] for e in refused]
        assert reasons == ["missing_token", "wrong_token", "wrong_token", "missing_token"]

    async def test_wrong_missing_or_opaque_origin_is_403(self, client, tenant):
        login = await browser_login(client, tenant)
        before = await _endpoint_slugs(client, tenant)
        cases = {
            "foreign": {"Origin": "https://evil.example"},
            "look-alike": {"Origin": "http://app.example.evil.example"},
            "other port": {"Origin": "http://app.example:8443"},
            "other scheme": {"Origin": "https://app.example"},
            "opaque": {"Origin": "null"},
            "opaque with referer": {"Origin": "null", "Referer": f"{ALLOWED_ORIGIN}/page"},
            "foreign referer": {"Referer": "https://evil.example/app.example"},
            "none": {},
        }
        for name, extra in cases.items():
            headers = {**login.headers(origin=None), **extra}
            r = await client.post(
                "/api/v1/endpoints", json={"name": "X", "slug": "x-origin"}, headers=headers
            )
            assert r.status_code == 403, name
            assert r.json()["error"]["code"] == "csrf_failed"
        assert await _endpoint_slugs(client, tenant) == before

    async def test_allowed_origins_public_url_and_referer_fallback_pass(self, client, tenant):
        login = await browser_login(client, tenant)
        variants = {
            "cors": login.headers(origin=ALLOWED_ORIGIN),
            "public": login.headers(origin=PUBLIC_ORIGIN),
            "referer": {**login.headers(origin=None), "Referer": f"{ALLOWED_ORIGIN}/app?x=1"},
            "default port": login.headers(origin="http://APP.example:80"),
        }
        for name, headers in variants.items():
            slug = f"ok-{uuid.uuid4().hex[:8]}"
            r = await client.post(
                "/api/v1/endpoints", json={"name": "Ok", "slug": slug}, headers=headers
            )
            assert r.status_code == 201, (name, r.text)

    async def test_put_patch_delete_are_checked_too(self, client, tenant):
        login = await browser_login(client, tenant)
        ep = await make_endpoint(tenant)
        path = f"/api/v1/endpoints/{ep['slug']}"
        r = await client.patch(path, json={"is_active": False}, headers=login.headers(csrf=False))
        assert r.status_code == 403
        r = await client.request(
            "DELETE", path, headers=login.headers(origin="https://evil.example")
        )
        assert r.status_code == 403
        r = await client.put(
            f"{path}/credential",
            json={"header": "X-Key", "value": "secret-value-1"},
            headers=login.headers(csrf=False),
        )
        assert r.status_code == 403
        r = await client.get(path, headers=tenant.owner.headers)
        assert r.status_code == 200
        assert r.json()["is_active"] is True

    async def test_bearer_and_api_key_requests_are_not_subject_to_csrf(self, client, tenant):
        r = await client.post(
            "/api/v1/endpoints",
            json={"name": "B", "slug": f"b-{uuid.uuid4().hex[:8]}"},
            headers={**tenant.owner.headers, "Origin": "https://evil.example"},
        )
        assert r.status_code == 201
        key = await api_key(tenant, "authz:check")
        ep = await make_endpoint(tenant)
        r = await client.post(
            "/api/v1/authz/check",
            json={"endpoint": ep["slug"]},
            headers={"X-API-Key": key, "Origin": "https://evil.example"},
        )
        assert r.status_code == 200, r.text


class TestTenantIsolation:
    """A session of tenant A only ever acts in tenant A."""

    async def test_session_acts_in_its_own_tenant_only(self, client, tenant, other_tenant):
        login = await browser_login(client, tenant)
        r = await client.get(
            "/api/v1/tenant", headers={**login.headers(), "X-Tenant": other_tenant.slug}
        )
        assert r.json()["slug"] == tenant.slug
        r = await client.get("/api/v1/users", headers=login.headers())
        assert {u["email"] for u in r.json()["items"]} == {tenant.owner.email}
        other_ep = await make_endpoint(other_tenant)
        r = await client.get(f"/api/v1/endpoints/{other_ep['slug']}", headers=login.headers())
        assert r.status_code == 404

    async def test_another_tenants_session_id_is_404_and_stays_live(
        self, client, tenant, other_tenant
    ):
        mine = await browser_login(client, tenant)
        theirs = await browser_login(client, other_tenant)
        r = await client.delete(f"/api/v1/sessions/{theirs.id}", headers=mine.headers())
        assert r.status_code == 404
        assert (await _me(client, theirs)).status_code == 200

    async def test_credentials_of_tenant_a_do_not_open_tenant_b(self, client, tenant, other_tenant):
        r = await client.post(
            "/api/v1/sessions",
            json={"email": tenant.owner.email, "password": PASSWORD, "tenant": other_tenant.slug},
        )
        assert r.status_code == 401


class TestTimeouts:
    """Absolute and idle timeouts (server settings, tenant overrides); last_seen_at is coarse."""

    async def test_expired_session_is_401(self, client, tenant, runtime):
        login = await browser_login(client, tenant)
        past = utcnow() - timedelta(seconds=1)
        await change_session_row(runtime, tenant.id, login.id, expires_at=past)
        r = await _me(client, login)
        assert r.status_code == 401
        assert r.json()["error"]["code"] == "session_expired"

    async def test_idle_session_is_401(self, client, tenant, runtime):
        login = await browser_login(client, tenant)
        idle = runtime.settings.session_idle_timeout_seconds
        await change_session_row(
            runtime, tenant.id, login.id, last_seen_at=utcnow() - timedelta(seconds=idle + 5)
        )
        r = await _me(client, login)
        assert r.status_code == 401
        assert r.json()["error"]["code"] == "session_expired"

    async def test_defaults_come_from_settings(self, client, tenant, runtime):
        assert runtime.settings.session_idle_timeout_seconds == 1800
        assert runtime.settings.session_absolute_timeout_seconds == 43200
        login = await browser_login(client, tenant)
        row = await session_row(runtime, tenant.id, login.id)
        assert abs((row.expires_at - row.created_at).total_seconds() - 43200) < 5
        cookie = set_cookies(login.response)["session_id"]
        assert cookie["max-age"] == "43200"

    async def test_tenant_overrides_are_honoured(self, client, tenant, runtime):
        r = await client.patch(
            "/api/v1/tenant",
            json={
                "settings": {
                    "session_idle_timeout_seconds": 60,
                    "session_absolute_timeout_seconds": 600,
                }
            },
            headers=tenant.owner.headers,
        )
        assert r.status_code == 200, r.text
        login = await browser_login(client, tenant)
        row = await session_row(runtime, tenant.id, login.id)
        assert abs((row.expires_at - row.created_at).total_seconds() - 600) < 5
        # 90 s of inactivity: fine under the server's 30 minutes, too long for this tenant.
        await change_session_row(
            runtime, tenant.id, login.id, last_seen_at=utcnow() - timedelta(seconds=90)
        )
        assert (await _me(client, login)).status_code == 401

    async def test_last_seen_is_written_at_most_once_a_minute(self, client, tenant, runtime):
        login = await browser_login(client, tenant)
        created = (await session_row(runtime, tenant.id, login.id)).last_seen_at
        for _ in range(3):
            assert (await _me(client, login)).status_code == 200
        assert (await session_row(runtime, tenant.id, login.id)).last_seen_at == created

        stale = await browser_login(client, tenant)
        two_minutes_ago = utcnow() - timedelta(seconds=120)
        await change_session_row(runtime, tenant.id, stale.id, last_seen_at=two_minutes_ago)
        assert (await _me(client, stale)).status_code == 200
        touched = (await session_row(runtime, tenant.id, stale.id)).last_seen_at
        assert touched > two_minutes_ago + timedelta(seconds=100)
        assert (await _me(client, stale)).status_code == 200
        assert (await session_row(runtime, tenant.id, stale.id)).last_seen_at == touched


class TestListAndRevoke:
    """Users see and revoke their own sessions only; logout clears the cookies."""

    async def test_api_keys_and_anonymous_callers_cannot_list(self, client, tenant):
        assert (await client.get("/api/v1/sessions")).status_code == 401
        key = await api_key(tenant, "endpoints:query")
        r = await client.get("/api/v1/sessions", headers={"X-API-Key": key})
        assert r.status_code == 403

    async def test_another_users_session_id_is_404(self, client, tenant):
        member = await tenant.add_user("member")
        mine = await browser_login(client, tenant)
        theirs = await browser_login(client, tenant, email=member.email)
        r = await client.delete(f"/api/v1/sessions/{theirs.id}", headers=mine.headers())
        assert r.status_code == 404
        assert r.json()["error"]["code"] == "session_not_found"
        r = await client.delete(f"/api/v1/sessions/{theirs.id}", headers=tenant.owner.headers)
        assert r.status_code == 404
        assert (await _me(client, theirs)).status_code == 200
        r = await client.delete(f"/api/v1/sessions/{uuid.uuid4()}", headers=mine.headers())
        assert r.status_code == 404

    async def test_list_shows_own_live_sessions_with_current(self, client, tenant):
        member = await tenant.add_user("member")
        first = await browser_login(client, tenant, headers={"User-Agent": "First/1"})
        second = await browser_login(client, tenant, headers={"User-Agent": "Second/2"})
        await browser_login(client, tenant, email=member.email)
        r = await client.get("/api/v1/sessions", headers=second.headers())
        assert r.status_code == 200
        items = r.json()["items"]
        assert [i["id"] for i in items] == [first.id, second.id]
        assert [i["current"] for i in items] == [False, True]
        assert [i["user_agent"] for i in items] == ["First/1", "Second/2"]
        assert set(items[0]) == {
            "id",
            "created_at",
            "last_seen_at",
            "expires_at",
            "user_agent",
            "ip",
            "current",
        }
        assert r.json()["next_cursor"] is None
        # With a bearer token the same user sees the same sessions, none of them current.
        r = await client.get("/api/v1/sessions?limit=1", headers=tenant.owner.headers)
        page = r.json()
        assert [i["id"] for i in page["items"]] == [first.id]
        assert page["items"][0]["current"] is False
        r = await client.get(
            f"/api/v1/sessions?cursor={page['next_cursor']}", headers=tenant.owner.headers
        )
        assert [i["id"] for i in r.json()["items"]] == [second.id]

    async def test_revoke_one_of_my_sessions(self, client, tenant, runtime):
        laptop = await browser_login(client, tenant)
        phone = await browser_login(client, tenant)
        r = await client.delete(f"/api/v1/sessions/{phone.id}", headers=laptop.headers())
        assert r.status_code == 204
        assert "set-cookie" not in r.headers  # not the current session: laptop keeps its cookie
        r = await _me(client, phone)
        assert r.status_code == 401
        assert r.json()["error"]["code"] == "invalid_session"
        assert (await _me(client, laptop)).status_code == 200
        r = await client.get("/api/v1/sessions", headers=laptop.headers())
        assert [i["id"] for i in r.json()["items"]] == [laptop.id]
        events = await audit_events(runtime, tenant.id, "session.revoked")
        assert [e.target_id for e in events] == [phone.id]
        assert (await session_row(runtime, tenant.id, phone.id)).revoked_at is not None

    async def test_logout_revokes_and_clears_both_cookies(self, client, tenant):
        login = await browser_login(client, tenant)
        r = await client.delete("/api/v1/sessions/current", headers=login.headers(csrf=False))
        assert r.status_code == 403  # logout is state-changing: CSRF applies
        assert (await _me(client, login)).status_code == 200
        r = await client.delete("/api/v1/sessions/current", headers=login.headers())
        assert r.status_code == 204
        cleared = set_cookies(r)
        for name in ("session_id", "csrf_token"):
            assert cleared[name]["value"] in ("", '""')
            assert cleared[name]["max-age"] == "0"
            assert cleared[name]["path"] == "/"
        assert cleared["session_id"]["httponly"] is True
        assert (await _me(client, login)).status_code == 401

    async def test_current_needs_a_browser_session(self, client, tenant):
        r = await client.delete("/api/v1/sessions/current", headers=tenant.owner.headers)
        assert r.status_code == 404
        assert r.json()["error"]["code"] == "no_current_session"


class TestCredentialChanges:
    """A password change, deactivation, role change or removal ends every session."""

    @pytest.mark.parametrize(
        "change",
        [{"password": "another-long-passphrase-9"}, {"is_active": False}, {"role": "viewer"}],
        ids=["password", "deactivation", "role"],
    )
    async def test_user_change_revokes_every_session(self, client, tenant, runtime, change):
        member = await tenant.add_user("member")
        sessions = [await browser_login(client, tenant, email=member.email) for _ in range(2)]
        for login in sessions:
            assert (await _me(client, login)).status_code == 200
        r = await client.patch(
            f"/api/v1/users/{member.id}", json=change, headers=tenant.owner.headers
        )
        assert r.status_code == 200, r.text
        for login in sessions:
            assert (await _me(client, login)).status_code == 401
            assert (await session_row(runtime, tenant.id, login.id)).revoked_at is not None

    async def test_user_removal_and_tenant_deletion_end_sessions(self, client):
        handle = await make_tenant(client)
        member = await handle.add_user("member")
        member_login = await browser_login(client, handle, email=member.email)
        owner_login = await browser_login(client, handle)
        assert (await _me(client, owner_login)).status_code == 200
        r = await client.delete(f"/api/v1/users/{member.id}", headers=handle.owner.headers)
        assert r.status_code == 204
        assert (await _me(client, member_login)).status_code == 401
        r = await client.delete("/api/v1/tenant", headers=owner_login.headers())
        assert r.status_code == 204, r.text
        assert (await _me(client, owner_login)).status_code == 401

    async def test_revocation_is_immediate_in_the_store(self, client, tenant, runtime):
        login = await browser_login(client, tenant)
        assert (await _me(client, login)).status_code == 200  # fills the fast path, if any
        token_hash = hashlib.sha256(login.cookie.encode()).hexdigest()
        assert await runtime.browser_store.lookup(token_hash) is not None
        r = await client.delete(f"/api/v1/sessions/{login.id}", headers=tenant.owner.headers)
        assert r.status_code == 204
        assert await runtime.browser_store.lookup(token_hash) is None
