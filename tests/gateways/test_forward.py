"""`/authz/forward` in-process: binding resolution, exempt paths, credentials, tenant and
audience checks, policies, rate limits, identity headers, audit, and the warm path."""

from __future__ import annotations

import secrets
import time
import uuid
from typing import Any

import httpx
import jwt as pyjwt
from cryptography.hazmat.primitives.asymmetric import ec
from sqlalchemy import event, select

from app.audit.models import AuditEvent
from app.core import jose
from app.core.db import set_session_tenant
from tests.conftest import Member, TenantHandle, add_policy, make_endpoint, make_tenant, random_ip

FORWARD = "/api/v1/authz/forward"
IDENTITY = ("x-user-id", "x-user-email", "x-tenant")


def new_host() -> str:
    return f"h-{secrets.token_hex(5)}.example.test"


async def ask(
    client: httpx.AsyncClient,
    host: str,
    uri: str = "/",
    who: Member | dict[str, str] | None = None,
    method: str = "GET",
    **extra: str,
) -> httpx.Response:
    """What nginx or Traefik send: the original host, URI and method in X-Forwarded-*."""
    headers = {"X-Forwarded-Host": host, "X-Forwarded-Uri": uri, "X-Forwarded-Method": method}
    if isinstance(who, Member):
        headers.update(who.headers)
    elif who:
        headers.update(who)
    headers.update(extra)
    return await client.get(FORWARD, headers=headers)


def assert_empty(r: httpx.Response, status: int) -> None:
    assert r.status_code == status, (r.status_code, r.headers)
    assert r.content == b""
    assert "content-type" not in r.headers
    assert r.headers["x-request-id"]


async def api_key(handle: TenantHandle, scopes: list[str]) -> dict[str, Any]:
    r = await handle.client.post(
        "/api/v1/api-keys", headers=handle.owner.headers, json={"name": "k", "scopes": scopes}
    )
    assert r.status_code == 201, r.text
    data: dict[str, Any] = r.json()
    return data


async def gateway_events(runtime, tenant_id: str | None) -> list[AuditEvent]:
    await runtime.audit.flush()
    async with runtime.sessionmaker() as session:
        stmt = select(AuditEvent).where(AuditEvent.action == "gateway.forward")
        if tenant_id is None:
            stmt = stmt.where(AuditEvent.tenant_id.is_(None)).execution_options(
                skip_tenant_filter=True
            )
        else:
            set_session_tenant(session, uuid.UUID(tenant_id))
        return list((await session.execute(stmt.order_by(AuditEvent.seq))).scalars())


class TestUnauthenticated:
    async def test_missing_credential_is_401_without_body(self, client, tenant):
        host = new_host()
        await make_endpoint(tenant, host=host)
        r = await ask(client, host, "/orders")
        assert_empty(r, 401)
        assert r.headers["www-authenticate"] == "Bearer"
        assert r.headers["x-warden-code"] == "unauthenticated"
        assert not any(name in r.headers for name in IDENTITY)

    async def test_garbage_and_revoked_tokens_are_401(self, client, tenant):
        host = new_host()
        await make_endpoint(tenant, host=host)
        member = await tenant.add_user("member")
        assert_empty(await ask(client, host, who={"Authorization": "Bearer x.y.z"}), 401)
        assert_empty(await ask(client, host, who={"Authorization": "Basic dTpw"}), 401)
        assert_empty(await ask(client, host, who={"X-API-Key": "wk_unknown"}), 401)
        r = await client.post(
            "/api/v1/auth/logout",
            headers=member.headers,
            json={"refresh_token": member.refresh_token},
        )
        assert r.status_code == 204
        r = await ask(client, host, who=member)
        assert_empty(r, 401)
        assert r.headers["x-warden-code"] == "token_revoked"

    async def test_two_credentials_are_refused(self, client, tenant):
        host = new_host()
        await make_endpoint(tenant, host=host)
        key = await api_key(tenant, ["authz:forward"])
        r = await ask(client, host, who={**tenant.owner.headers, "X-API-Key": key["key"]})
        assert_empty(r, 401)
        assert r.headers["x-warden-code"] == "ambiguous_credentials"


class TestTenantAndAudience:
    async def test_token_of_another_tenant_never_opens_the_host(
        self, client, runtime, tenant, other_tenant
    ):
        host = new_host()
        await make_endpoint(tenant, host=host)
        intruder = await other_tenant.add_user("admin", email="eve@intruder.example")
        r = await ask(client, host, "/orders", intruder)
        assert_empty(r, 403)
        assert r.headers["x-warden-code"] == "tenant_mismatch"
        key = await api_key(other_tenant, ["authz:forward"])
        assert_empty(await ask(client, host, who={"X-API-Key": key["key"]}), 403)
        # The host owner's trail records the attempt, without the foreign identity.
        events = [
            e for e in await gateway_events(runtime, tenant.id) if e.details["code"] != "exempt"
        ]
        assert [e.details["code"] for e in events] == ["tenant_mismatch", "tenant_mismatch"]
        assert all(e.actor_id is None and e.actor_email is None for e in events)
        assert await gateway_events(runtime, other_tenant.id) == []

    async def test_first_tenant_to_bind_a_host_owns_it(self, client, tenant, other_tenant):
        host = new_host()
        await make_endpoint(tenant, host=host)
        # Another tenant cannot bind the same host, not even with a more specific prefix ...
        r = await client.post(
            "/api/v1/endpoints",
            headers=other_tenant.owner.headers,
            json={"name": "Squat", "slug": "squat-admin", "host": host, "path_prefix": "/admin"},
        )
        assert r.status_code == 409
        # ... and its tokens do not open the owner's host.
        squatter = await other_tenant.add_user("member")
        r = await ask(client, host, "/admin/users", squatter)
        assert_empty(r, 403)
        assert r.headers["x-warden-code"] == "tenant_mismatch"
        assert (await ask(client, host, "/admin/users", tenant.owner)).status_code == 200

    async def test_host_audience_is_required_when_configured(self, client, runtime, tenant):
        host = new_host()
        await make_endpoint(tenant, host=host, require_host_audience=True)
        member = await tenant.add_user("member")
        r = await ask(client, host, "/", member)  # local tokens name `warden` only
        assert_empty(r, 401)
        assert r.headers["x-warden-code"] == "audience_mismatch"
        assert "invalid_token" in r.headers["www-authenticate"]
        claims = jose.parse(member.access_token).claims
        for aud in ([runtime.settings.jwt_audience, host], [host.upper(), "warden"]):
            token = runtime.signing_keys.sign({**claims, "aud": aud, "jti": uuid.uuid4().hex})
            r = await ask(client, host, "/", {"Authorization": f"Bearer {token}"})
            assert r.status_code == 200, r.headers
        other = runtime.signing_keys.sign({**claims, "aud": ["warden", "x" + host], "jti": "j2"})
        assert_empty(await ask(client, host, "/", {"Authorization": f"Bearer {other}"}), 401)
        key = await api_key(tenant, ["authz:forward"])
        assert_empty(await ask(client, host, who={"X-API-Key": key["key"]}), 401)


class TestSatelliteTokens:
    async def test_the_bound_host_picks_the_tenant_not_the_client(
        self, client, tenant, other_tenant
    ):
        signing_key = ec.generate_private_key(ec.SECP256R1())
        jwk = jose.public_jwk(signing_key.public_key(), kid="k1", alg="ES256")
        issuer = f"https://idp-{secrets.token_hex(4)}.example"
        # Two tenants trust one issuer, each for its own audience (a pair has one tenant); the
        # token names both audiences.
        for handle, audience in ((tenant, "shop-a"), (other_tenant, "shop-b")):
            r = await client.post(
                "/api/v1/issuers",
                headers=handle.owner.headers,
                json={
                    "issuer": issuer,
                    "jwks": {"keys": [jwk]},
                    "audiences": [audience],
                    "algorithms": ["ES256"],
                },
            )
            assert r.status_code == 201, r.text
        now = int(time.time())
        claims = {
            "iss": issuer,
            "sub": "sam",
            "aud": ["shop-a", "shop-b"],
            "email": "sam@idp.example",
            "roles": ["member"],
            "iat": now,
            "exp": now + 300,
        }
        token = pyjwt.encode(claims, signing_key, algorithm="ES256", headers={"kid": "k1"})
        bearer = {"Authorization": f"Bearer {token}"}
        host_a, host_b, host_c = new_host(), new_host(), new_host()
        await make_endpoint(tenant, host=host_a)
        await make_endpoint(other_tenant, host=host_b)
        stranger = await make_tenant(client)  # trusts nobody
        await make_endpoint(stranger, host=host_c)
        # On the API the token alone cannot say which tenant it speaks for...
        r = await client.get("/api/v1/auth/me", headers=bearer)
        assert r.status_code == 401
        # ...through a gateway the bound host says it, whatever X-Tenant the client sends.
        for host, handle in ((host_a, tenant), (host_b, other_tenant)):
            r = await ask(client, host, "/", {**bearer, "X-Tenant": stranger.slug})
            assert_empty(r, 200)
            assert (r.headers["x-user-id"], r.headers["x-user-email"], r.headers["x-tenant"]) == (
                f"{issuer}#sam",
                "sam@idp.example",
                handle.slug,
            )
        r = await ask(client, host_c, "/", {**bearer, "X-Tenant": tenant.slug})
        assert_empty(r, 401)


class TestBindingResolution:
    async def test_unbound_host_is_404_without_body(self, client, runtime, tenant):
        host = new_host()
        r = await ask(client, host, "/", tenant.owner)
        assert_empty(r, 404)
        assert r.headers["x-warden-code"] == "no_binding"
        assert_empty(await ask(client, "not a host!", "/", tenant.owner), 404)
        events = await gateway_events(runtime, None)
        assert any(e.details["host"] == host and e.details["code"] == "no_binding" for e in events)

    async def test_host_is_case_insensitive_and_port_aware(self, client, tenant):
        bare, pinned = new_host(), new_host()
        await make_endpoint(tenant, host=bare.upper())
        await make_endpoint(tenant, host=f"{pinned}:8443")
        owner = tenant.owner
        for host in (bare, bare.upper() + ".", f"{bare}:443", f"{bare.upper()}:8080"):
            assert (await ask(client, host, "/", owner)).status_code == 200, host
        assert (await ask(client, f"{pinned}:8443", "/", owner)).status_code == 200
        assert_empty(await ask(client, pinned, "/", owner), 404)
        assert_empty(await ask(client, f"{pinned}:9443", "/", owner), 404)
        assert_empty(await ask(client, f"{bare}:99999", "/", owner), 404)

    async def test_port_specific_binding_beats_the_bare_host(self, client, tenant):
        host = new_host()
        await make_endpoint(tenant, host=host)
        pinned = await make_endpoint(tenant, host=f"{host}:8443")
        await add_policy(tenant, pinned["slug"], "rule", {"rule": "deny"})
        assert (await ask(client, host, "/", tenant.owner)).status_code == 200
        assert_empty(await ask(client, f"{host}:8443", "/", tenant.owner), 403)

    async def test_path_prefix_is_a_segment_prefix_and_longest_wins(self, client, tenant):
        host = new_host()
        await make_endpoint(tenant, host=host)
        api = await make_endpoint(tenant, host=host, path_prefix="/api/")
        await add_policy(tenant, api["slug"], "rule", {"rule": "deny"})
        await make_endpoint(tenant, host=host, path_prefix="/api/public")
        expected = {
            "/": 200,
            "/apix": 200,
            "/api": 403,
            "/api/": 403,
            "/api/orders": 403,
            "/api/publicity": 403,
            "/api/public": 200,
            "/api/public/docs": 200,
            "//api//orders": 403,
            "/api/public/../orders": 403,
            "/api/public?next=/api/orders": 200,
            "/api/orders?next=/api/public": 403,
        }
        for uri, status in expected.items():
            assert (await ask(client, host, uri, tenant.owner)).status_code == status, uri

    async def test_prefix_binding_alone_leaves_the_rest_of_the_host_unbound(self, client, tenant):
        host = new_host()
        await make_endpoint(tenant, host=host, path_prefix="/api")
        assert (await ask(client, host, "/api/x", tenant.owner)).status_code == 200
        assert_empty(await ask(client, host, "/other", tenant.owner), 404)

    async def test_binding_changes_take_effect_at_once(self, client, tenant):
        host, moved = new_host(), new_host()
        assert_empty(await ask(client, host, "/", tenant.owner), 404)  # cached as unbound
        ep = await make_endpoint(tenant, host=host)
        assert (await ask(client, host, "/", tenant.owner)).status_code == 200
        r = await client.patch(
            f"/api/v1/endpoints/{ep['slug']}", headers=tenant.owner.headers, json={"host": moved}
        )
        assert r.status_code == 200
        assert_empty(await ask(client, host, "/", tenant.owner), 404)
        assert (await ask(client, moved, "/", tenant.owner)).status_code == 200
        r = await client.delete(f"/api/v1/endpoints/{ep['slug']}", headers=tenant.owner.headers)
        assert r.status_code == 204
        assert_empty(await ask(client, moved, "/", tenant.owner), 404)

    async def test_envoy_form_reads_host_method_and_path_from_the_check_request(
        self, client, tenant
    ):
        host = new_host()
        ep = await make_endpoint(tenant, host=host, exempt_paths=["/health"])
        await add_policy(
            tenant,
            ep["slug"],
            "rule",
            {"rule": "match", "eval": "!=", "f1": "args.request.method", "f2": "DELETE"},
        )
        h = {"Host": host, **tenant.owner.headers}
        assert (await client.get(f"{FORWARD}/orders/1?x=1", headers=h)).status_code == 200
        assert (await client.post(f"{FORWARD}/orders", headers=h)).status_code == 200
        assert_empty(await client.delete(f"{FORWARD}/orders/1", headers=h), 403)
        assert (await client.head(f"{FORWARD}/health", headers={"Host": host})).status_code == 200
        r = await client.get(f"{FORWARD}/health/%2e%2e/orders", headers={"Host": host})
        assert_empty(r, 401)

    async def test_nginx_original_headers_are_understood(self, client, tenant):
        host = new_host()
        ep = await make_endpoint(tenant, host=host)
        await add_policy(
            tenant,
            ep["slug"],
            "rule",
            {"rule": "match", "eval": "!=", "f1": "args.request.path", "f2": "/admin"},
        )
        h = {"X-Forwarded-Host": host, **tenant.owner.headers}
        ok = {**h, "X-Original-URI": "/orders", "X-Original-Method": "POST"}
        assert (await client.get(FORWARD, headers=ok)).status_code == 200
        denied = {**h, "X-Original-URI": "/x/../admin?y=1"}
        assert_empty(await client.get(FORWARD, headers=denied), 403)
        # Without X-Forwarded-Host the Host header names the site.
        r = await client.get(FORWARD, headers={"Host": host, "X-Forwarded-Uri": "/admin"})
        assert_empty(r, 401)


class TestExemptPaths:
    async def test_exempt_paths_pass_without_credential_and_with_empty_identity(
        self, client, runtime, tenant
    ):
        host = new_host()
        await make_endpoint(tenant, host=host, exempt_paths=["/health", "/public/"])
        forged = {"X-User-ID": "x", "X-User-Email": "ceo@x.example", "X-Tenant": "x"}
        for uri in ("/health", "/health/live?probe=1", "/public", "/public/logo.png"):
            r = await ask(client, host, uri, forged)
            assert_empty(r, 200)
            assert all(r.headers[name] == "" for name in IDENTITY), uri
            removed = r.headers["x-envoy-auth-headers-to-remove"].split(",")
            assert sorted(removed) == sorted(IDENTITY)
        # Exempt even with a bad credential: the gateway's health checks must not depend on it.
        r = await ask(client, host, "/health", {"Authorization": "Bearer bad"})
        assert r.status_code == 200
        events = await gateway_events(runtime, tenant.id)
        assert {e.details["code"] for e in events} == {"exempt"}
        assert all(e.outcome == "allowed" and e.actor_type == "anonymous" for e in events)

    async def test_lookalike_and_traversal_paths_are_not_exempt(self, client, tenant):
        host = new_host()
        await make_endpoint(tenant, host=host, exempt_paths=["/health"])
        for uri in (
            "/healthz",
            "/health/../admin",
            "/health/%2e%2e/admin",
            "/health%2F..%2Fadmin",
            "/Health",
            "/admin?/health",
        ):
            assert_empty(await ask(client, host, uri), 401)


class TestCredentials:
    async def test_member_gets_every_identity_header(self, client, tenant):
        host = new_host()
        await make_endpoint(tenant, host=host)
        member = await tenant.add_user("member")
        r = await ask(client, host, "/orders", member, **{"X-User-Email": "ceo@x.example"})
        assert_empty(r, 200)
        assert (r.headers["x-user-id"], r.headers["x-user-email"], r.headers["x-tenant"]) == (
            member.id,
            member.email,
            tenant.slug,
        )
        assert "x-envoy-auth-headers-to-remove" not in r.headers

    async def test_cookie_carries_the_token(self, client, tenant):
        host = new_host()
        await make_endpoint(tenant, host=host)
        member = await tenant.add_user("member")
        r = await ask(client, host, "/", {"Cookie": f"warden_token={member.access_token}"})
        assert r.status_code == 200
        assert r.headers["x-user-id"] == member.id
        r = await ask(client, host, "/", {"Cookie": f"other={member.access_token}"})
        assert_empty(r, 401)

    async def test_api_keys_need_the_forward_scope(self, client, tenant):
        host = new_host()
        await make_endpoint(tenant, host=host)
        forward = await api_key(tenant, ["authz:forward"])
        query = await api_key(tenant, ["endpoints:query", "authz:check"])
        for headers in (
            {"X-API-Key": forward["key"]},
            {"Authorization": f"Bearer {forward['key']}"},
        ):
            r = await ask(client, host, "/", headers)
            assert_empty(r, 200)
            assert (r.headers["x-user-id"], r.headers["x-user-email"]) == (forward["id"], "")
            assert r.headers["x-envoy-auth-headers-to-remove"] == "x-user-email"
        r = await ask(client, host, "/", {"X-API-Key": query["key"]})
        assert_empty(r, 403)
        assert r.headers["x-warden-code"] == "insufficient_scope"

    async def test_viewers_are_refused(self, client, tenant):
        host = new_host()
        await make_endpoint(tenant, host=host)
        r = await ask(client, host, "/", await tenant.add_user("viewer"))
        assert_empty(r, 403)
        assert r.headers["x-warden-code"] == "insufficient_role"


class TestPolicies:
    async def test_access_rules_and_disabled_endpoint(self, client, tenant):
        host = new_host()
        ep = await make_endpoint(tenant, host=host)
        await add_policy(
            tenant, ep["slug"], "access", {"mode": "deny", "patterns": ["*@bad.example"]}
        )
        bad = await tenant.add_user("member", email=f"x-{secrets.token_hex(3)}@bad.example")
        r = await ask(client, host, "/", bad)
        assert_empty(r, 403)
        assert r.headers["x-warden-code"] == "access_denied"
        assert (await ask(client, host, "/", tenant.owner)).status_code == 200
        r = await client.patch(
            f"/api/v1/endpoints/{ep['slug']}",
            headers=tenant.owner.headers,
            json={"is_active": False},
        )
        assert r.status_code == 200
        r = await ask(client, host, "/", tenant.owner)
        assert_empty(r, 403)
        assert r.headers["x-warden-code"] == "endpoint_disabled"

    async def test_rate_limit_is_429_with_headers_and_spends_quota(self, client, runtime, tenant):
        host = new_host()
        ep = await make_endpoint(tenant, host=host, exempt_paths=["/health"])
        await add_policy(
            tenant,
            ep["slug"],
            "rate_limit",
            {"requests_per_period": 2, "period_seconds": 60, "scope": "per_user"},
        )
        member = await tenant.add_user("member")
        remaining = []
        for _ in range(2):
            r = await ask(client, host, "/", member)
            assert r.status_code == 200
            remaining.append(r.headers["x-ratelimit-remaining"])
        assert remaining == ["1", "0"]
        r = await ask(client, host, "/", member)
        assert_empty(r, 429)
        assert int(r.headers["retry-after"]) >= 1
        assert r.headers["x-ratelimit-limit"] == "2"
        assert r.headers["x-warden-code"] == "rate_limited"
        # Exempt paths spend nothing; another user has a quota of their own.
        assert (await ask(client, host, "/health")).status_code == 200
        assert (await ask(client, host, "/", tenant.owner)).status_code == 200
        outcomes = [e.outcome for e in await gateway_events(runtime, tenant.id)]
        assert outcomes.count("rate_limited") == 1


class TestConfiguredHeaders:
    async def test_cookie_name_and_header_mapping_come_from_settings(self, database):
        from app.core.config import Settings
        from app.main import create_app

        settings = Settings(
            forward_auth_cookie="__Host-sid",
            forward_identity_headers=(
                "X-Auth-Subject=id,X-Auth-Role=role,X-Auth-Kind=kind,X-Auth-Issuer=claim:iss,"
                "X-Auth-Nothing=claim:missing"
            ),
        )
        app = create_app(settings)
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app, client=(random_ip(), 1234))
            async with httpx.AsyncClient(transport=transport, base_url="http://warden.test") as c:
                handle = await make_tenant(c)
                host = new_host()
                await make_endpoint(handle, host=host)
                cookie = {"Cookie": f"__Host-sid={handle.owner.access_token}"}
                r = await ask(c, host, "/", cookie, **{"X-User-Email": "forged@x.example"})
                assert_empty(r, 200)
                assert {k: v for k, v in r.headers.items() if k.startswith("x-auth-")} == {
                    "x-auth-subject": handle.owner.id,
                    "x-auth-role": "owner",
                    "x-auth-kind": "user",
                    "x-auth-issuer": settings.issuer,
                    "x-auth-nothing": "",
                }
                assert "x-user-email" not in r.headers
                assert r.headers["x-envoy-auth-headers-to-remove"] == "x-auth-nothing"
                default_cookie = {"Cookie": f"warden_token={handle.owner.access_token}"}
                assert_empty(await ask(c, host, "/", default_cookie), 401)


class TestWarmPath:
    async def test_a_warm_decision_makes_no_database_round_trip(self, client, runtime, tenant):
        host = new_host()
        ep = await make_endpoint(tenant, host=host)
        await add_policy(
            tenant, ep["slug"], "access", {"mode": "deny", "patterns": ["*@nobody.example"]}
        )
        key = await api_key(tenant, ["authz:forward"])
        member = await tenant.add_user("member")
        callers = (member.headers, {"X-API-Key": key["key"]})
        for who in callers:  # warm every cache
            assert (await ask(client, host, "/", who)).status_code == 200
        statements: list[str] = []

        def count(conn, cursor, statement, *args):
            # Background tasks run on their own timers: the audit writer, key reload, key usage.
            if not any(word in statement for word in ("audit", "signing_keys", "last_used_at")):
                statements.append(statement)

        engine = runtime.engine.sync_engine
        event.listen(engine, "before_cursor_execute", count)
        try:
            for _ in range(5):
                for who in callers:
                    assert (await ask(client, host, "/x", who)).status_code == 200
        finally:
            event.remove(engine, "before_cursor_execute", count)
        assert statements == []
