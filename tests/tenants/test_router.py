"""The caller's tenant: read, change, delete."""

from __future__ import annotations


class TestTenant:
    async def test_viewer_reads_but_cannot_change(self, client, tenant):
        viewer = await tenant.add_user("viewer")
        r = await client.get("/api/v1/tenant", headers=viewer.headers)
        assert r.status_code == 200
        assert r.json()["slug"] == tenant.slug
        r = await client.patch("/api/v1/tenant", headers=viewer.headers, json={"name": "X"})
        assert r.status_code == 403

    async def test_admin_updates_settings_owner_only_deletes(self, client, tenant):
        admin = await tenant.add_user("admin")
        r = await client.patch(
            "/api/v1/tenant",
            headers=admin.headers,
            json={"name": "Renamed", "settings": {"access_token_ttl_seconds": 120}},
        )
        assert r.status_code == 200
        assert r.json()["name"] == "Renamed"
        assert r.json()["settings"]["access_token_ttl_seconds"] == 120
        fresh = await tenant.login(admin.email)
        assert fresh["expires_in"] == 120
        r = await client.patch(
            "/api/v1/tenant",
            headers=admin.headers,
            json={"settings": {"access_token_ttl_seconds": 5}},
        )
        assert r.status_code == 422
        r = await client.patch("/api/v1/tenant", headers=admin.headers, json={"slug": "x"})
        assert r.status_code == 422
        assert (await client.delete("/api/v1/tenant", headers=admin.headers)).status_code == 403

    async def test_delete_removes_everything_and_kills_tokens(self, client, tenant):
        member = await tenant.add_user("member")
        r = await client.delete("/api/v1/tenant", headers=tenant.owner.headers)
        assert r.status_code == 204
        assert (await client.get("/api/v1/auth/me", headers=member.headers)).status_code == 401
        r = await client.post(
            "/api/v1/auth/login",
            json={"email": member.email, "password": member.password, "tenant": tenant.slug},
        )
        assert r.status_code == 401
        r = await client.post("/api/v1/auth/refresh", json={"refresh_token": member.refresh_token})
        assert r.status_code == 401
