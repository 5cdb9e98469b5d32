"""The east-west session exchange: a separate app, service principals only, every call audited."""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import httpx
import jwt as pyjwt
import pytest
from fastapi.routing import APIRoute

from app.core.config import Settings
from app.core.types import utcnow
from tests.conftest import PASSWORD
from tests.sessions.conftest import (
    api_key,
    audit_events,
    browser_login,
    change_session_row,
    set_cookies,
    warden_child,
)
from tests.support.servers import free_port

EXCHANGE = "/internal/v1/sessions/exchange"
FINGERPRINT = hashlib.sha256(b"bff client certificate").hexdigest()


def _colons(fingerprint: str) -> str:
    return ":".join(fingerprint[i : i + 2] for i in range(0, 64, 2)).upper()


class TestNeverPublic:
    """The exchange exists on the internal app only."""

    async def test_exchange_is_404_on_the_public_app(self, app, client, tenant):
        key = await api_key(tenant)
        login = await browser_login(client, tenant)
        for headers in ({"X-API-Key": key}, {"Authorization": f"Bearer {key}"}):
            r = await client.post(EXCHANGE, json={"session_id": login.cookie}, headers=headers)
            assert r.status_code == 404
            assert r.json()["error"]["code"] == "not_found"
        public_paths = [route.path for route in app.routes if isinstance(route, APIRoute)]
        assert not [path for path in public_paths if path.startswith("/internal")]

    async def test_the_internal_app_serves_nothing_public(self, internal, tenant):
        r = await internal.post(
            "/api/v1/sessions",
            json={"email": tenant.owner.email, "password": PASSWORD, "tenant": tenant.slug},
        )
        assert r.status_code == 404
        r = await internal.get("/api/v1/auth/me", headers=tenant.owner.headers)
        assert r.status_code == 404
        assert (await internal.get("/openapi.json")).status_code == 404
        assert (await internal.get("/health")).status_code == 200


class TestCallerAuthentication:
    """Only an API key holding `sessions:exchange` may exchange; every refusal is audited."""

    async def test_no_key_user_token_or_browser_cookie_is_401(self, client, internal, tenant):
        login = await browser_login(client, tenant)
        body = {"session_id": login.cookie}
        for headers in (
            {},
            tenant.owner.headers,  # a user's JWT is not a service principal
            {"Cookie": f"session_id={login.cookie}"},
            {"X-API-Key": "wk_" + secrets.token_urlsafe(32)},
            {"Authorization": "Basic abc"},
        ):
            r = await internal.post(EXCHANGE, json=body, headers=headers)
            assert r.status_code == 401, headers
            assert "access_token" not in r.text

    async def test_key_without_the_scope_is_403_and_audited(
        self, client, internal, tenant, runtime
    ):
        key = await api_key(tenant, "endpoints:query", "authz:check")
        login = await browser_login(client, tenant)
        r = await internal.post(
            EXCHANGE, json={"session_id": login.cookie}, headers={"X-API-Key": key}
        )
        assert r.status_code == 403
        assert r.json()["error"]["code"] == "insufficient_scope"
        events = await audit_events(runtime, tenant.id, "session.exchanged")
        assert [(e.outcome, e.details["reason"], e.actor_type) for e in events] == [
            ("failure", "insufficient_scope", "api_key")
        ]

    async def test_revoked_key_is_401(self, client, internal, tenant):
        key = await api_key(tenant)
        login = await browser_login(client, tenant)
        keys = (await client.get("/api/v1/api-keys", headers=tenant.owner.headers)).json()
        await client.delete(
            f"/api/v1/api-keys/{keys['items'][0]['id']}", headers=tenant.owner.headers
        )
        r = await internal.post(
            EXCHANGE, json={"session_id": login.cookie}, headers={"X-API-Key": key}
        )
        assert r.status_code == 401


@pytest.fixture(scope="module")
async def pinned(database: str) -> AsyncIterator[httpx.AsyncClient]:
    """An internal app (its own runtime, as `uvicorn app.internal:app` runs it) that requires
    the client certificate fingerprint FINGERPRINT in `x-forwarded-client-cert`."""
    from app.internal import create_internal_app

    settings = Settings(internal_client_cert_fingerprints=[_colons(FINGERPRINT), "ab" * 32])
    internal_app = create_internal_app(settings)
    async with internal_app.router.lifespan_context(internal_app):
        transport = httpx.ASGITransport(app=internal_app, client=("127.0.0.1", 40002))
        async with httpx.AsyncClient(transport=transport, base_url="http://mesh.test") as c:
            yield c


class TestClientCertificate:
    """When fingerprints are configured, the mesh must vouch for an allowed certificate."""

    async def test_missing_or_wrong_fingerprint_is_403(self, client, pinned, tenant, runtime):
        key = await api_key(tenant)
        login = await browser_login(client, tenant)
        body = {"session_id": login.cookie}
        wrong = hashlib.sha256(b"someone else").hexdigest()
        for xfcc in (
            None,
            "",
            wrong,
            f'By=spiffe://cluster/bff;Hash={wrong};Subject="CN=bff"',
            # An allowed hash from an earlier hop does not vouch for the direct peer.
            f'Hash={FINGERPRINT};Subject="CN=a",Hash={wrong};Subject="CN=b"',
            f'Subject="Hash={FINGERPRINT}"',  # inside a quoted value: not a Hash element
            "garbage;;;===",
        ):
            headers = {"X-API-Key": key}
            if xfcc is not None:
                headers["x-forwarded-client-cert"] = xfcc
            r = await pinned.post(EXCHANGE, json=body, headers=headers)
            assert r.status_code == 403, xfcc
            assert r.json()["error"]["code"] == "client_certificate_refused"
        assert "access_token" not in r.text

    async def test_allowed_fingerprint_in_any_accepted_form(self, client, pinned, tenant):
        key = await api_key(tenant)
        login = await browser_login(client, tenant)
        for xfcc in (
            FINGERPRINT,
            _colons(FINGERPRINT),
            f"By=spiffe://cluster.local/ns/warden/sa/warden;Hash={FINGERPRINT};"
            f'Subject="CN=bff,O=Example, Inc.";URI=spiffe://cluster.local/ns/web/sa/bff',
            f'Hash={"cd" * 32};Subject="CN=edge",By=spiffe://x;Hash={FINGERPRINT.upper()}',
        ):
            r = await pinned.post(
                EXCHANGE,
                json={"session_id": login.cookie},
                headers={"X-API-Key": key, "x-forwarded-client-cert": xfcc},
            )
            assert r.status_code == 200, (xfcc, r.text)

    async def test_a_fingerprint_alone_is_not_enough(self, client, pinned, tenant):
        login = await browser_login(client, tenant)
        r = await pinned.post(
            EXCHANGE,
            json={"session_id": login.cookie},
            headers={"x-forwarded-client-cert": FINGERPRINT},
        )
        assert r.status_code == 401


class TestExchange:
    """A live session of the caller's tenant becomes a short-lived token for its user."""

    async def test_unknown_revoked_expired_and_idle_sessions_are_401(
        self, client, internal, tenant, runtime
    ):
        key = await api_key(tenant)
        headers = {"X-API-Key": key}
        revoked = await browser_login(client, tenant)
        await client.delete(f"/api/v1/sessions/{revoked.id}", headers=tenant.owner.headers)
        expired = await browser_login(client, tenant)
        await change_session_row(
            runtime, tenant.id, expired.id, expires_at=utcnow() - timedelta(seconds=1)
        )
        idle = await browser_login(client, tenant)
        await change_session_row(
            runtime, tenant.id, idle.id, last_seen_at=utcnow() - timedelta(hours=1)
        )
        cases = {
            "unknown": secrets.token_urlsafe(32),
            "revoked": revoked.cookie,
            "expired": expired.cookie,
            "idle": idle.cookie,
            "session uuid instead of cookie": revoked.id,
        }
        for name, value in cases.items():
            r = await internal.post(EXCHANGE, json={"session_id": value}, headers=headers)
            assert r.status_code == 401, name
            assert "access_token" not in r.text
        events = await audit_events(runtime, tenant.id, "session.exchanged")
        assert [e.details["reason"] for e in events] == [
            "unknown",
            "unknown",
            "expired",
            "idle",
            "unknown",
        ]
        assert {e.outcome for e in events} == {"failure"}

    async def test_another_tenants_service_cannot_exchange_this_tenants_session(
        self, client, internal, tenant, other_tenant, runtime
    ):
        their_key = await api_key(other_tenant)
        login = await browser_login(client, tenant)
        r = await internal.post(
            EXCHANGE, json={"session_id": login.cookie}, headers={"X-API-Key": their_key}
        )
        assert r.status_code == 401
        assert r.json()["error"]["code"] == "invalid_session"
        # Refused as unknown in the caller's tenant: nothing of the session's tenant is touched.
        theirs = await audit_events(runtime, other_tenant.id, "session.exchanged")
        assert [e.details["reason"] for e in theirs] == ["unknown"]
        assert await audit_events(runtime, tenant.id, "session.exchanged") == []

    async def test_deactivated_user_cannot_be_exchanged(self, client, internal, tenant):
        member = await tenant.add_user("member")
        key = await api_key(tenant)
        login = await browser_login(client, tenant, email=member.email)
        r = await client.patch(
            f"/api/v1/users/{member.id}", json={"is_active": False}, headers=tenant.owner.headers
        )
        assert r.status_code == 200
        r = await internal.post(
            EXCHANGE, json={"session_id": login.cookie}, headers={"X-API-Key": key}
        )
        assert r.status_code == 401

    async def test_live_session_gives_a_token_the_public_api_accepts(
        self, client, internal, tenant, runtime
    ):
        member = await tenant.add_user("member")
        key = await api_key(tenant)
        login = await browser_login(client, tenant, email=member.email)
        r = await internal.post(
            EXCHANGE,
            json={"session_id": login.cookie},
            headers={"Authorization": f"Bearer {key}"},
        )
        assert r.status_code == 200, r.text
        body = r.json()
        assert set(body) == {"access_token", "claims"}
        claims = body["claims"]
        assert (claims["sub"], claims["email"], claims["role"]) == (
            member.id,
            member.email,
            "member",
        )
        assert (claims["tenant"], claims["tid"], claims["sid"]) == (
            tenant.slug,
            tenant.id,
            login.id,
        )
        assert claims["exp"] - claims["iat"] <= runtime.settings.access_token_ttl_seconds
        # Signed by Warden's published keys: internal services verify it like any Warden token.
        jwks = (await client.get("/.well-known/jwks.json")).json()
        kid = pyjwt.get_unverified_header(body["access_token"])["kid"]
        key_data = next(k for k in jwks["keys"] if k["kid"] == kid)
        verified = pyjwt.decode(
            body["access_token"],
            pyjwt.PyJWK(key_data).key,
            algorithms=[key_data["alg"]],
            audience=runtime.settings.jwt_audience,
            issuer=runtime.settings.issuer,
        )
        assert verified == claims
        r = await client.get(
            "/api/v1/auth/me", headers={"Authorization": f"Bearer {body['access_token']}"}
        )
        assert r.json()["id"] == member.id
        events = await audit_events(runtime, tenant.id, "session.exchanged")
        assert [(e.outcome, e.target_id, e.actor_type) for e in events] == [
            ("success", login.id, "api_key")
        ]
        assert body["access_token"] not in str(events[0].details)

    async def test_token_never_outlives_the_session(self, client, internal, tenant, runtime):
        key = await api_key(tenant)
        login = await browser_login(client, tenant)
        soon = utcnow() + timedelta(seconds=120)
        await change_session_row(runtime, tenant.id, login.id, expires_at=soon)
        r = await internal.post(
            EXCHANGE, json={"session_id": login.cookie}, headers={"X-API-Key": key}
        )
        assert r.status_code == 200
        assert r.json()["claims"]["exp"] <= int(soon.timestamp()) + 1

    async def test_unknown_fields_and_oversized_values_are_422(self, client, internal, tenant):
        key = await api_key(tenant)
        for body in ({"session_id": "x", "user": "admin"}, {"session_id": "x" * 300}, {}):
            r = await internal.post(EXCHANGE, json=body, headers={"X-API-Key": key})
            assert r.status_code == 422, body


# --- real processes -------------------------------------------------------------------------


@pytest.fixture(scope="module")
async def served(database: str) -> AsyncIterator[tuple[str, str]]:
    """`warden serve` in a child process: (public URL, internal URL)."""
    port, internal_port = free_port(), free_port()
    env = {
        "DATABASE_URL": database,
        "HOST": "127.0.0.1",
        "PORT": str(port),
        "INTERNAL_HOST": "127.0.0.1",
        "INTERNAL_PORT": str(internal_port),
    }
    public, internal = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{internal_port}"
    # SIGTERM must stop both servers and the shared runtime cleanly (exit status 0).
    async with warden_child(
        ["-m", "app.cli", "serve"], env, [public, internal], exits_cleanly=True
    ):
        yield public, internal


async def _register(client: httpx.AsyncClient, slug: str) -> dict[str, Any]:
    email = f"owner@{slug}.example"
    r = await client.post(
        "/api/v1/auth/register",
        json={"tenant": slug, "tenant_name": "Serve", "email": email, "password": PASSWORD},
    )
    assert r.status_code == 201, r.text
    tokens = (
        await client.post(
            "/api/v1/auth/login", json={"email": email, "password": PASSWORD, "tenant": slug}
        )
    ).json()
    return {"email": email, "headers": {"Authorization": f"Bearer {tokens['access_token']}"}}


async def test_warden_serve_runs_both_apps_on_their_own_ports(served):
    public, internal = served
    slug = f"serve-{secrets.token_hex(4)}"
    async with (
        httpx.AsyncClient(base_url=public, timeout=10) as pub,
        httpx.AsyncClient(base_url=internal, timeout=10) as east,
    ):
        owner = await _register(pub, slug)
        r = await pub.post(
            "/api/v1/api-keys",
            json={"name": "bff", "scopes": ["sessions:exchange"]},
            headers=owner["headers"],
        )
        key = r.json()["key"]
        r = await pub.post(
            "/api/v1/sessions", json={"email": owner["email"], "password": PASSWORD, "tenant": slug}
        )
        assert r.status_code == 201
        cookies = set_cookies(r)
        cookie, csrf = cookies["session_id"]["value"], cookies["csrf_token"]["value"]
        body = {"session_id": cookie}
        # The public port has no exchange; the internal port has no public API.
        assert (await pub.post(EXCHANGE, json=body, headers={"X-API-Key": key})).status_code == 404
        assert (await east.post("/api/v1/sessions", json={})).status_code == 404
        r = await east.post(EXCHANGE, json=body, headers={"X-API-Key": key})
        assert r.status_code == 200, r.text
        assert r.json()["claims"]["email"] == owner["email"]
        assert r.headers["x-request-id"]
        # One runtime behind both: a logout on the public port is refused at once internally.
        r = await pub.delete(
            "/api/v1/sessions/current",
            headers={
                "Cookie": f"session_id={cookie}",
                "X-CSRF-Token": csrf,
                "Origin": "http://app.example",
            },
        )
        assert r.status_code == 204, r.text
        r = await east.post(EXCHANGE, json=body, headers={"X-API-Key": key})
        assert r.status_code == 401
