"""`POST /endpoints/{slug}/query`: decide, count, forward, audit."""

from __future__ import annotations

import uuid

import pytest

from tests.conftest import add_policy, make_endpoint, make_tenant


async def query(client, slug, member, **kwargs):
    return await client.post(f"/api/v1/endpoints/{slug}/query", headers=member.headers, **kwargs)


class TestRefusals:
    async def test_unauthenticated_and_cross_tenant(self, client, tenant, other_tenant):
        ep = await make_endpoint(other_tenant)
        r = await client.post(f"/api/v1/endpoints/{ep['slug']}/query")
        assert r.status_code == 401
        member = await tenant.add_user("member")
        r = await query(client, ep["slug"], member)
        assert r.status_code == 404

    async def test_viewer_cannot_query(self, client, tenant):
        ep = await make_endpoint(tenant)
        viewer = await tenant.add_user("viewer")
        r = await query(client, ep["slug"], viewer)
        assert r.status_code == 403
        assert r.json()["error"]["code"] == "insufficient_role"

    async def test_disabled_endpoint_refuses_everyone(self, client, tenant):
        ep = await make_endpoint(tenant, is_active=False)
        r = await query(client, ep["slug"], tenant.owner)
        assert r.status_code == 403
        assert r.json()["error"]["code"] == "endpoint_disabled"

    async def test_deny_names_policy_not_patterns(self, client, tenant):
        ep = await make_endpoint(tenant)
        member = await tenant.add_user("member", email="mallory@evil.example")
        policy = await add_policy(
            tenant, ep["slug"], "access", {"mode": "deny", "patterns": ["*@evil.example"]}
        )
        r = await query(client, ep["slug"], member)
        assert r.status_code == 403
        error = r.json()["error"]
        assert error["code"] == "access_denied"
        assert policy["id"] in error["message"]
        assert "evil.example" not in r.text


class TestPolicyCombination:
    async def test_no_access_policy_admits_members(self, client, tenant):
        ep = await make_endpoint(tenant)
        member = await tenant.add_user("member")
        r = await query(client, ep["slug"], member)
        assert r.status_code == 200
        assert r.json() == {"allowed": True, "decided_by": None, "endpoint": ep["slug"]}

    async def test_allow_policies_combine_with_and(self, client, tenant):
        ep = await make_endpoint(tenant)
        await add_policy(
            tenant, ep["slug"], "access", {"mode": "allow", "patterns": ["*@corp.example"]}
        )
        narrow = await add_policy(
            tenant, ep["slug"], "access", {"mode": "allow", "patterns": ["alice@corp.example"]}
        )
        alice = await tenant.add_user("member", email="alice@corp.example")
        bob = await tenant.add_user("member", email="bob@corp.example")
        assert (await query(client, ep["slug"], alice)).status_code == 200
        r = await query(client, ep["slug"], bob)
        assert r.status_code == 403
        assert narrow["id"] in r.json()["error"]["message"]

    async def test_deny_overrides_allow(self, client, tenant):
        ep = await make_endpoint(tenant)
        await add_policy(
            tenant, ep["slug"], "access", {"mode": "allow", "patterns": ["*@corp.example"]}
        )
        await add_policy(
            tenant, ep["slug"], "access", {"mode": "deny", "patterns": ["eve@corp.example"]}
        )
        eve = await tenant.add_user("member", email="eve@corp.example")
        assert (await query(client, ep["slug"], eve)).status_code == 403

    async def test_pattern_is_whole_string(self, client, tenant):
        ep = await make_endpoint(tenant)
        await add_policy(
            tenant, ep["slug"], "access", {"mode": "allow", "patterns": ["*@company.example"]}
        )
        evil = await tenant.add_user("member", email="ann@company.example.evil.io")
        sub = await tenant.add_user("member", email="ann@sub.company.example")
        good = await tenant.add_user("member", email="Ann@Company.Example")
        assert (await query(client, ep["slug"], evil)).status_code == 403
        assert (await query(client, ep["slug"], sub)).status_code == 403
        assert (await query(client, ep["slug"], good)).status_code == 200

    async def test_rule_policy(self, client, tenant):
        ep = await make_endpoint(tenant)
        rule = await add_policy(
            tenant,
            ep["slug"],
            "rule",
            {"rule": "match", "eval": "in", "f1": "args.auth.role", "f2": ["admin", "owner"]},
        )
        member = await tenant.add_user("member")
        r = await query(client, ep["slug"], member)
        assert r.status_code == 403
        assert r.json()["error"]["code"] == "rule_denied"
        assert rule["id"] in r.json()["error"]["message"]
        assert (await query(client, ep["slug"], tenant.owner)).status_code == 200

    async def test_disabled_policy_is_ignored(self, client, tenant):
        ep = await make_endpoint(tenant)
        await add_policy(tenant, ep["slug"], "rule", {"rule": "deny"}, enabled=False)
        assert (await query(client, ep["slug"], tenant.owner)).status_code == 200


class TestRateLimits:
    async def test_limit_headers_and_429(self, client, tenant):
        ep = await make_endpoint(tenant)
        policy = await add_policy(
            tenant,
            ep["slug"],
            "rate_limit",
            {"requests_per_period": 2, "period_seconds": 60, "scope": "per_user"},
        )
        member = await tenant.add_user("member")
        first = await query(client, ep["slug"], member)
        assert first.status_code == 200
        assert first.headers["x-ratelimit-limit"] == "2"
        assert first.headers["x-ratelimit-remaining"] == "1"
        assert (await query(client, ep["slug"], member)).status_code == 200
        r = await query(client, ep["slug"], member)
        assert r.status_code == 429
        assert int(r.headers["retry-after"]) >= 1
        assert r.headers["x-ratelimit-remaining"] == "0"
        assert policy["id"] in r.json()["error"]["message"]
        # per_user: another member has their own window.
        other = await tenant.add_user("member")
        assert (await query(client, ep["slug"], other)).status_code == 200

    async def test_denied_requests_spend_no_quota(self, client, tenant):
        ep = await make_endpoint(tenant)
        await add_policy(
            tenant,
            ep["slug"],
            "rate_limit",
            {"requests_per_period": 1, "period_seconds": 60, "scope": "per_endpoint"},
        )
        await add_policy(
            tenant, ep["slug"], "access", {"mode": "deny", "patterns": ["blocked@x.example"]}
        )
        blocked = await tenant.add_user("member", email="blocked@x.example")
        for _ in range(3):
            assert (await query(client, ep["slug"], blocked)).status_code == 403
        member = await tenant.add_user("member")
        assert (await query(client, ep["slug"], member)).status_code == 200
        assert (await query(client, ep["slug"], member)).status_code == 429

    async def test_counters_are_per_tenant(self, client, tenant, other_tenant):
        # Same slug in two tenants: separate counters.
        slug = f"same-{uuid.uuid4().hex[:6]}"
        for handle in (tenant, other_tenant):
            await make_endpoint(handle, slug)
            await add_policy(
                handle,
                slug,
                "rate_limit",
                {"requests_per_period": 1, "period_seconds": 60, "scope": "per_endpoint"},
            )
        assert (await query(client, slug, tenant.owner)).status_code == 200
        assert (await query(client, slug, other_tenant.owner)).status_code == 200
        assert (await query(client, slug, tenant.owner)).status_code == 429


class TestForwarding:
    async def test_forwards_body_identity_and_credential(self, client, tenant, upstream):
        ep = await make_endpoint(tenant, upstream_url=f"{upstream}/echo")
        r = await client.put(
            f"/api/v1/endpoints/{ep['slug']}/credential",
            headers=tenant.owner.headers,
            json={"header": "X-Upstream-Key", "value": "sk-live-0123456789abcd"},
        )
        assert r.status_code == 200
        member = await tenant.add_user("member")
        r = await client.post(
            f"/api/v1/endpoints/{ep['slug']}/query",
            headers={
                **member.headers,
                "X-User-Email": "forged@evil.example",
                "X-Tenant": "other",
                "Cookie": "session=abc",
                "User-Agent": "scanner/1.0",
                "X-Forwarded-For": "6.6.6.6",
                "X-Debug": "1",
            },
            json={"question": "hello"},
        )
        assert r.status_code == 200, r.text
        echoed = r.json()
        assert echoed["body"] == '{"question":"hello"}'
        headers = echoed["headers"]
        assert headers["x-user-id"] == member.id
        assert headers["x-user-email"] == member.email
        assert headers["x-tenant"] == tenant.slug
        assert headers["x-upstream-key"] == "sk-live-0123456789abcd"
        assert "authorization" not in headers
        assert "cookie" not in headers
        assert headers["user-agent"] == "warden"
        # Exactly these reach the upstream: nothing else of the caller's travels.
        assert set(headers) == {
            "host",
            "content-length",
            "content-type",
            "accept",
            "accept-encoding",
            "user-agent",
            "x-user-id",
            "x-user-email",
            "x-tenant",
            "x-request-id",
            "x-upstream-key",
        }
        assert r.headers["x-upstream"] == "yes"
        assert "set-cookie" not in r.headers

    async def test_upstream_status_passes_through(self, client, tenant, upstream):
        ep = await make_endpoint(tenant, upstream_url=f"{upstream}/teapot")
        r = await query(client, ep["slug"], tenant.owner)
        assert r.status_code == 418

    async def test_upstream_down_is_502_and_slow_is_504(self, client, tenant, upstream):
        from tests.support.servers import free_port

        down = await make_endpoint(tenant, upstream_url=f"http://127.0.0.1:{free_port()}/x")
        r = await query(client, down["slug"], tenant.owner)
        assert r.status_code == 502
        assert r.json()["error"]["code"] == "upstream_error"
        slow = await make_endpoint(tenant, upstream_url=f"{upstream}/slow?seconds=5")
        r = await query(client, slow["slug"], tenant.owner)
        assert r.status_code == 504
        assert r.json()["error"]["code"] == "upstream_timeout"

    async def test_large_body_streams_and_oversized_is_413(self, client, tenant, upstream):
        ep = await make_endpoint(tenant, upstream_url=f"{upstream}/echo")
        body = b"x" * (512 * 1024)
        r = await query(client, ep["slug"], tenant.owner, content=body)
        assert r.status_code == 200
        assert r.json()["size"] == len(body)
        r = await query(client, ep["slug"], tenant.owner, content=b"x" * (2 * 1024 * 1024))
        assert r.status_code == 413


class TestApiKeys:
    async def test_scoped_key_queries_and_revocation_is_immediate(self, client, tenant):
        ep = await make_endpoint(tenant)
        r = await client.post(
            "/api/v1/api-keys",
            headers=tenant.owner.headers,
            json={"name": "ci", "scopes": ["endpoints:query"]},
        )
        assert r.status_code == 201
        key = r.json()["key"]
        assert key.startswith("wk_")
        for headers in ({"Authorization": f"Bearer {key}"}, {"X-API-Key": key}):
            r = await client.post(f"/api/v1/endpoints/{ep['slug']}/query", headers=headers)
            assert r.status_code == 200, r.text
        keys = (await client.get("/api/v1/api-keys", headers=tenant.owner.headers)).json()
        kid = keys["items"][0]["id"]
        assert "key" not in keys["items"][0]
        assert (
            await client.delete(f"/api/v1/api-keys/{kid}", headers=tenant.owner.headers)
        ).status_code == 204
        r = await client.post(f"/api/v1/endpoints/{ep['slug']}/query", headers={"X-API-Key": key})
        assert r.status_code == 401

    async def test_key_without_scope_and_admin_routes(self, client, tenant):
        ep = await make_endpoint(tenant)
        r = await client.post(
            "/api/v1/api-keys",
            headers=tenant.owner.headers,
            json={"name": "checker", "scopes": ["authz:check"]},
        )
        key = r.json()["key"]
        h = {"X-API-Key": key}
        r = await client.post(f"/api/v1/endpoints/{ep['slug']}/query", headers=h)
        assert r.status_code == 403
        assert r.json()["error"]["code"] == "insufficient_scope"
        r = await client.post("/api/v1/authz/check", headers=h, json={"endpoint": ep["slug"]})
        assert r.status_code == 200
        assert (await client.get("/api/v1/users", headers=h)).status_code == 403
        assert (await client.get("/api/v1/endpoints", headers=h)).status_code == 403

    async def test_expired_and_garbage_keys(self, client, tenant):
        from datetime import UTC, datetime, timedelta

        past = (datetime.now(UTC) - timedelta(hours=1)).isoformat()
        r = await client.post(
            "/api/v1/api-keys",
            headers=tenant.owner.headers,
            json={"name": "old", "scopes": ["endpoints:query"], "expires_at": past},
        )
        assert r.status_code == 422
        for bad in ("wk_nope", "wk_" + "a" * 500, "not-a-key"):
            r = await client.get("/api/v1/auth/me", headers={"X-API-Key": bad})
            assert r.status_code == 401
        r = await client.post(
            "/api/v1/api-keys",
            headers=tenant.owner.headers,
            json={"name": "bad", "scopes": ["root"]},
        )
        assert r.status_code == 422


@pytest.mark.parametrize("role", ["member", "viewer"])
async def test_non_admins_cannot_create_keys(client, tenant, role):
    user = await tenant.add_user(role)
    r = await client.post(
        "/api/v1/api-keys", headers=user.headers, json={"name": "x", "scopes": ["endpoints:query"]}
    )
    assert r.status_code == 403


async def test_same_slug_other_tenant_key_cannot_reach(client, tenant):
    other = await make_tenant(client)
    slug = f"shared-{uuid.uuid4().hex[:6]}"
    await make_endpoint(other, slug)
    r = await client.post(
        "/api/v1/api-keys",
        headers=tenant.owner.headers,
        json={"name": "k", "scopes": ["endpoints:query"]},
    )
    r = await client.post(f"/api/v1/endpoints/{slug}/query", headers={"X-API-Key": r.json()["key"]})
    assert r.status_code == 404


async def test_an_expired_endpoint_is_loaded_once_for_the_requests_in_flight(
    client, tenant, runtime, monkeypatch
):
    """When the compiled endpoint's TTL passes under load, the requests in flight share one
    database load (they used to load it each, queueing on the pool: a tail of slow requests
    every minute)."""
    import asyncio

    ep = await make_endpoint(tenant)
    assert (await query(client, ep["slug"], tenant.owner)).status_code == 200
    loads = 0
    real = runtime.endpoints._load

    async def counted(*args):
        nonlocal loads
        loads += 1
        await asyncio.sleep(0.05)  # a database under load
        return await real(*args)

    monkeypatch.setattr(runtime.endpoints, "_load", counted)
    cache = runtime.endpoints.cache
    for key, (_at, value) in list(cache.entries.items()):
        cache.entries[key] = (0.0, value)  # every entry past its TTL
    answers = await asyncio.gather(*(query(client, ep["slug"], tenant.owner) for _ in range(40)))
    assert [r.status_code for r in answers] == [200] * 40
    assert loads == 1
