"""`/api-keys`: admins make scoped, expiring, revocable `wk_` keys; the secret is shown once."""

from __future__ import annotations

import asyncio
import secrets
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import event

from tests.conftest import TenantHandle, make_endpoint

KEYS = "/api/v1/api-keys"


async def create(tenant: TenantHandle, scopes: list[str], **extra: Any) -> Any:
    return await tenant.client.post(
        KEYS, json={"name": "ci", "scopes": scopes, **extra}, headers=tenant.owner.headers
    )


async def query_with(client: Any, slug: str, key: str) -> Any:
    return await client.post(f"/api/v1/endpoints/{slug}/query", headers={"X-API-Key": key})


class TestWhoMayManageKeys:
    async def test_unauthenticated_and_lower_roles_are_refused(self, client, tenant):
        assert (await client.get(KEYS)).status_code == 401
        for role in ("viewer", "member"):
            user = await tenant.add_user(role)
            r = await client.post(
                KEYS, json={"name": "x", "scopes": ["endpoints:query"]}, headers=user.headers
            )
            assert r.status_code == 403
            assert r.json()["error"]["code"] == "insufficient_role"

    async def test_another_tenants_key_is_not_found(self, client, tenant, other_tenant):
        r = await create(other_tenant, ["endpoints:query"])
        key_id = r.json()["id"]
        r = await client.delete(f"{KEYS}/{key_id}", headers=tenant.owner.headers)
        assert r.status_code == 404
        listed = await client.get(KEYS, headers=tenant.owner.headers)
        assert key_id not in {item["id"] for item in listed.json()["items"]}

    async def test_a_key_cannot_manage_keys(self, client, tenant):
        key = (await create(tenant, ["endpoints:query"])).json()["key"]
        r = await client.post(
            KEYS, json={"name": "x", "scopes": ["endpoints:query"]}, headers={"X-API-Key": key}
        )
        assert r.status_code == 403
        assert r.json()["error"]["code"] == "insufficient_scope"


class TestTheSecret:
    async def test_shown_once_never_listed(self, client, tenant):
        r = await create(tenant, ["endpoints:query"])
        assert r.status_code == 201
        body = r.json()
        assert body["key"].startswith("wk_")
        assert body["key"].startswith(body["prefix"])
        listed = (await client.get(KEYS, headers=tenant.owner.headers)).text
        assert body["key"] not in listed
        assert body["prefix"] in listed

    async def test_bad_input_is_a_clear_422(self, tenant):
        for body in (
            {"name": "x", "scopes": []},
            {"name": "x", "scopes": ["admin:everything"]},
            {"name": "x", "scopes": ["endpoints:query"], "expires_at": "2001-01-01T00:00:00Z"},
            {"name": "x", "scopes": ["endpoints:query"], "role": "owner"},
        ):
            r = await tenant.client.post(KEYS, json=body, headers=tenant.owner.headers)
            assert r.status_code == 422, body
            assert r.json()["error"]["code"]


class TestUsingAKey:
    async def test_scopes_decide_what_a_key_may_do(self, client, tenant):
        ep = await make_endpoint(tenant)
        query_key = (await create(tenant, ["endpoints:query"])).json()["key"]
        check_key = (await create(tenant, ["authz:check"])).json()["key"]
        assert (await query_with(client, ep["slug"], query_key)).status_code == 200
        r = await query_with(client, ep["slug"], check_key)
        assert r.status_code == 403
        assert r.json()["error"]["code"] == "insufficient_scope"

    async def test_bearer_and_header_forms_are_the_same_key(self, client, tenant):
        ep = await make_endpoint(tenant)
        key = (await create(tenant, ["endpoints:query"])).json()["key"]
        r = await client.post(
            f"/api/v1/endpoints/{ep['slug']}/query", headers={"Authorization": f"Bearer {key}"}
        )
        assert r.status_code == 200
        both = {"Authorization": f"Bearer {key}", "X-API-Key": key}
        r = await client.post(f"/api/v1/endpoints/{ep['slug']}/query", headers=both)
        assert r.status_code == 401
        assert r.json()["error"]["code"] == "ambiguous_credentials"

    async def test_revoked_key_is_refused_at_once(self, client, tenant):
        ep = await make_endpoint(tenant)
        created = (await create(tenant, ["endpoints:query"])).json()
        assert (await query_with(client, ep["slug"], created["key"])).status_code == 200
        r = await client.delete(f"{KEYS}/{created['id']}", headers=tenant.owner.headers)
        assert r.status_code == 204
        r = await query_with(client, ep["slug"], created["key"])
        assert r.status_code == 401
        assert r.json()["error"]["code"] == "invalid_api_key"

    async def test_expired_key_is_refused(self, client, tenant, runtime):
        ep = await make_endpoint(tenant)
        soon = (datetime.now(UTC) + timedelta(seconds=2)).isoformat()
        key = (await create(tenant, ["endpoints:query"], expires_at=soon)).json()["key"]
        assert (await query_with(client, ep["slug"], key)).status_code == 200
        runtime.apikeys.invalidate(None)  # as after the cache's TTL
        await asyncio.sleep(2.1)
        r = await query_with(client, ep["slug"], key)
        assert r.status_code == 401

    async def test_junk_keys_are_refused_without_a_query_each(self, client, tenant, runtime):
        ep = await make_endpoint(tenant)
        statements: list[str] = []

        def count(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
            statements.append(statement)

        engine = runtime.engine.sync_engine
        event.listen(engine, "before_cursor_execute", count)
        try:
            malformed = ["not-a-key", "wk_" + "x" * 200, ""]
            for key in malformed:
                r = await query_with(client, ep["slug"], key)
                assert r.status_code == 401
            assert statements == []  # refused before any lookup
            unknown = "wk_" + secrets.token_urlsafe(32)
            for _ in range(5):
                assert (await query_with(client, ep["slug"], unknown)).status_code == 401
            lookups = [s for s in statements if "api_keys" in s]
            assert len(lookups) == 1  # an unknown key is remembered, not looked up per request
        finally:
            event.remove(engine, "before_cursor_execute", count)

    async def test_a_flood_of_distinct_junk_keys_is_bounded_per_address(
        self, client, app, tenant, runtime
    ):
        import httpx

        from tests.conftest import random_ip

        ep = await make_endpoint(tenant)
        valid = (await create(tenant, ["endpoints:query"])).json()["key"]
        statements: list[str] = []

        def count(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
            if "api_keys" in statement:
                statements.append(statement)

        engine = runtime.engine.sync_engine
        event.listen(engine, "before_cursor_execute", count)
        budget = runtime.apikeys.misses.per_minute
        try:
            transport = httpx.ASGITransport(app=app, client=(random_ip(), 4321))
            async with httpx.AsyncClient(transport=transport, base_url="http://warden.test") as c:
                for _ in range(budget + 20):
                    junk = "wk_" + secrets.token_urlsafe(32)
                    assert (await query_with(c, ep["slug"], junk)).status_code == 401
            assert len(statements) == budget
            # Another address is unaffected: its valid key is looked up and admitted.
            assert (await query_with(client, ep["slug"], valid)).status_code == 200
        finally:
            event.remove(engine, "before_cursor_execute", count)
