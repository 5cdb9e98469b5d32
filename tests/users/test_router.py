"""User management and the role ladder."""

from __future__ import annotations

import pytest

from tests.conftest import PASSWORD


class TestPermissions:
    """Members and viewers cannot manage users; admins cannot touch owners."""

    @pytest.mark.parametrize("role", ["member", "viewer"])
    async def test_non_admins_cannot_manage_users(self, client, tenant, role):
        user = await tenant.add_user(role)
        assert (await client.get("/api/v1/users", headers=user.headers)).status_code == 403
        r = await client.post(
            "/api/v1/users",
            headers=user.headers,
            json={"email": "x@y.example", "password": PASSWORD},
        )
        assert r.status_code == 403
        assert r.json()["error"]["code"] == "insufficient_role"
        r = await client.patch(
            f"/api/v1/users/{user.id}", headers=user.headers, json={"role": "admin"}
        )
        assert r.status_code == 403

    async def test_admin_cannot_create_or_promote_owner(self, client, tenant):
        admin = await tenant.add_user("admin")
        r = await client.post(
            "/api/v1/users",
            headers=admin.headers,
            json={"email": "o2@y.example", "password": PASSWORD, "role": "owner"},
        )
        assert r.status_code == 403
        member = await tenant.add_user("member")
        r = await client.patch(
            f"/api/v1/users/{member.id}", headers=admin.headers, json={"role": "owner"}
        )
        assert r.status_code == 403
        r = await client.patch(
            f"/api/v1/users/{admin.id}", headers=admin.headers, json={"role": "owner"}
        )
        assert r.status_code == 403
        r = await client.patch(
            f"/api/v1/users/{tenant.owner.id}", headers=admin.headers, json={"role": "member"}
        )
        assert r.status_code == 403
        r = await client.delete(f"/api/v1/users/{tenant.owner.id}", headers=admin.headers)
        assert r.status_code == 403

    async def test_last_owner_cannot_be_removed_or_demoted(self, client, tenant):
        oid = tenant.owner.id
        h = tenant.owner.headers
        assert (await client.delete(f"/api/v1/users/{oid}", headers=h)).status_code == 409
        r = await client.patch(f"/api/v1/users/{oid}", headers=h, json={"role": "admin"})
        assert r.status_code == 409
        assert r.json()["error"]["code"] == "last_owner"
        r = await client.patch(f"/api/v1/users/{oid}", headers=h, json={"is_active": False})
        assert r.status_code == 409
        second = await tenant.add_user("owner")
        r = await client.patch(
            f"/api/v1/users/{oid}", headers=second.headers, json={"role": "admin"}
        )
        assert r.status_code == 200


class TestCrud:
    async def test_create_list_get_update_delete(self, client, tenant):
        h = tenant.owner.headers
        r = await client.post(
            "/api/v1/users", headers=h, json={"email": " Carol@Example.COM ", "password": PASSWORD}
        )
        assert r.status_code == 201
        carol = r.json()
        assert carol["email"] == "carol@example.com"
        assert carol["role"] == "member"
        r = await client.post(
            "/api/v1/users", headers=h, json={"email": "carol@example.com", "password": PASSWORD}
        )
        assert r.status_code == 409
        r = await client.get(f"/api/v1/users/{carol['id']}", headers=h)
        assert r.json()["email"] == "carol@example.com"
        r = await client.patch(f"/api/v1/users/{carol['id']}", headers=h, json={"role": "viewer"})
        assert r.json()["role"] == "viewer"
        assert (await client.delete(f"/api/v1/users/{carol['id']}", headers=h)).status_code == 204
        assert (await client.get(f"/api/v1/users/{carol['id']}", headers=h)).status_code == 404

    async def test_pagination(self, client, tenant):
        h = tenant.owner.headers
        for i in range(4):
            await client.post(
                "/api/v1/users",
                headers=h,
                json={"email": f"p{i}@page.example", "password": PASSWORD},
            )
        seen: list[str] = []
        cursor = None
        while True:
            params = {"limit": 2} | ({"cursor": cursor} if cursor else {})
            r = await client.get("/api/v1/users", headers=h, params=params)
            assert r.status_code == 200
            body = r.json()
            assert len(body["items"]) <= 2
            seen += [u["email"] for u in body["items"]]
            cursor = body["next_cursor"]
            if not cursor:
                break
        assert len(seen) == len(set(seen)) == 5
        assert (
            await client.get("/api/v1/users", headers=h, params={"limit": 500})
        ).status_code == 422
        r = await client.get("/api/v1/users", headers=h, params={"cursor": "garbage!!"})
        assert r.status_code == 422

    async def test_bad_input(self, client, tenant):
        h = tenant.owner.headers
        for body in (
            {"email": "a@b.example", "password": PASSWORD, "role": "god"},
            {"email": "a@b.example", "password": PASSWORD, "extra": 1},
            {"email": "x" * 300 + "@b.example", "password": PASSWORD},
            {"email": "a@b.example", "password": "p" * 300},
            {"email": "a@b.example", "password": "password123"},
        ):
            r = await client.post("/api/v1/users", headers=h, json=body)
            assert r.status_code == 422, body
        r = await client.get("/api/v1/users/not-a-uuid", headers=h)
        assert r.status_code == 422


class TestRevocationOnChange:
    async def test_deactivation_and_role_change_revoke_tokens(self, client, tenant):
        member = await tenant.add_user("member")
        assert (await client.get("/api/v1/auth/me", headers=member.headers)).status_code == 200
        r = await client.patch(
            f"/api/v1/users/{member.id}", headers=tenant.owner.headers, json={"is_active": False}
        )
        assert r.status_code == 200
        assert (await client.get("/api/v1/auth/me", headers=member.headers)).status_code == 401
        r = await client.post("/api/v1/auth/refresh", json={"refresh_token": member.refresh_token})
        assert r.status_code == 401
        r = await client.post(
            "/api/v1/auth/login",
            json={"email": member.email, "password": PASSWORD, "tenant": tenant.slug},
        )
        assert r.status_code == 401
        # Reactivated: a new login works immediately, the old token stays dead.
        await client.patch(
            f"/api/v1/users/{member.id}", headers=tenant.owner.headers, json={"is_active": True}
        )
        fresh = await tenant.login(member.email)
        r = await client.get(
            "/api/v1/auth/me", headers={"Authorization": f"Bearer {fresh['access_token']}"}
        )
        assert r.status_code == 200
        assert (await client.get("/api/v1/auth/me", headers=member.headers)).status_code == 401

    async def test_demoted_admin_loses_admin_rights_at_once(self, client, tenant):
        admin = await tenant.add_user("admin")
        assert (await client.get("/api/v1/users", headers=admin.headers)).status_code == 200
        await client.patch(
            f"/api/v1/users/{admin.id}", headers=tenant.owner.headers, json={"role": "member"}
        )
        assert (await client.get("/api/v1/users", headers=admin.headers)).status_code == 401
