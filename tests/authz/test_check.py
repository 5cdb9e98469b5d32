"""`POST /authz/check`: a decision without forwarding or spending quota."""

from __future__ import annotations

from tests.conftest import add_policy, make_endpoint


class TestCheck:
    async def test_unknown_endpoint_and_unauthenticated(self, client, tenant):
        r = await client.post("/api/v1/authz/check", json={"endpoint": "nope-nope"})
        assert r.status_code == 401
        r = await client.post(
            "/api/v1/authz/check", headers=tenant.owner.headers, json={"endpoint": "nope-nope"}
        )
        assert r.status_code == 404

    async def test_member_sees_policy_id_only(self, client, tenant):
        ep = await make_endpoint(tenant)
        policy = await add_policy(
            tenant, ep["slug"], "access", {"mode": "deny", "patterns": ["*@blocked.example"]}
        )
        member = await tenant.add_user("member", email="m@blocked.example")
        r = await client.post(
            "/api/v1/authz/check", headers=member.headers, json={"endpoint": ep["slug"]}
        )
        assert r.status_code == 200
        body = r.json()
        assert body["allowed"] is False
        assert body["decided_by"] == policy["id"]
        assert "blocked.example" not in r.text

    async def test_admin_what_if_gets_full_reasons(self, client, tenant):
        ep = await make_endpoint(tenant)
        policy = await add_policy(
            tenant, ep["slug"], "access", {"mode": "allow", "patterns": ["*@corp.example"]}
        )
        r = await client.post(
            "/api/v1/authz/check",
            headers=tenant.owner.headers,
            json={
                "endpoint": ep["slug"],
                "as": {"email": "outsider@else.example", "role": "member"},
            },
        )
        body = r.json()
        assert body["allowed"] is False
        assert body["decided_by"] == policy["id"]
        assert any(policy["id"] in reason for reason in body["reasons"])
        r = await client.post(
            "/api/v1/authz/check",
            headers=tenant.owner.headers,
            json={
                "endpoint": ep["slug"],
                "as": {"email": "Insider@Corp.Example", "role": "member"},
            },
        )
        assert r.json()["allowed"] is True
        assert any("*@corp.example" in reason for reason in r.json()["reasons"])
        r = await client.post(
            "/api/v1/authz/check",
            headers=tenant.owner.headers,
            json={"endpoint": ep["slug"], "as": {"email": "v@corp.example", "role": "viewer"}},
        )
        assert r.json()["allowed"] is False
        assert r.json()["code"] == "insufficient_role"

    async def test_non_admin_cannot_ask_as_someone_else(self, client, tenant):
        ep = await make_endpoint(tenant)
        member = await tenant.add_user("member")
        r = await client.post(
            "/api/v1/authz/check",
            headers=member.headers,
            json={"endpoint": ep["slug"], "as": {"email": "x@y.example"}},
        )
        assert r.status_code == 403

    async def test_what_if_decides_for_the_given_client_address(self, client, tenant):
        ep = await make_endpoint(tenant)
        await add_policy(
            tenant,
            ep["slug"],
            "rule",
            {"rule": "match", "eval": "!=", "f1": "args.request.ip", "f2": "203.0.113.9"},
        )
        ask = {"endpoint": ep["slug"], "as": {"email": "a@b.example"}, "ip": "203.0.113.9"}
        r = await client.post("/api/v1/authz/check", headers=tenant.owner.headers, json=ask)
        assert r.json()["allowed"] is False
        ask["ip"] = "203.0.113.10"
        r = await client.post("/api/v1/authz/check", headers=tenant.owner.headers, json=ask)
        assert r.json()["allowed"] is True
        ask["ip"] = "not-an-address"
        r = await client.post("/api/v1/authz/check", headers=tenant.owner.headers, json=ask)
        assert r.status_code == 422
        # Choosing the address is a what-if: a member may not pretend to come from elsewhere.
        member = await tenant.add_user("member")
        r = await client.post(
            "/api/v1/authz/check",
            headers=member.headers,
            json={"endpoint": ep["slug"], "ip": "203.0.113.10"},
        )
        assert r.status_code == 403

    async def test_rule_what_if_uses_claims(self, client, tenant):
        ep = await make_endpoint(tenant)
        await add_policy(
            tenant,
            ep["slug"],
            "rule",
            {"rule": "match", "eval": "==", "f1": "args.auth.plan", "f2": "pro"},
        )
        ask = {"endpoint": ep["slug"], "as": {"email": "a@b.example", "claims": {"plan": "pro"}}}
        r = await client.post("/api/v1/authz/check", headers=tenant.owner.headers, json=ask)
        assert r.json()["allowed"] is True
        ask["as"]["claims"] = {"plan": "free"}
        r = await client.post("/api/v1/authz/check", headers=tenant.owner.headers, json=ask)
        assert r.json()["allowed"] is False

    async def test_check_spends_no_quota_but_reports_exhaustion(self, client, tenant):
        ep = await make_endpoint(tenant)
        policy = await add_policy(
            tenant,
            ep["slug"],
            "rate_limit",
            {"requests_per_period": 1, "period_seconds": 60, "scope": "per_user"},
        )
        member = await tenant.add_user("member")
        for _ in range(5):
            r = await client.post(
                "/api/v1/authz/check", headers=member.headers, json={"endpoint": ep["slug"]}
            )
            assert r.json()["allowed"] is True
        url = f"/api/v1/endpoints/{ep['slug']}/query"
        assert (await client.post(url, headers=member.headers)).status_code == 200
        r = await client.post(
            "/api/v1/authz/check", headers=member.headers, json={"endpoint": ep["slug"]}
        )
        assert r.json() == {
            "allowed": False,
            "decided_by": policy["id"],
            "code": "rate_limited",
            "reasons": [f"decided by policy {policy['id']}"],
        }

    async def test_bad_input(self, client, tenant):
        for body in (
            {},
            {"endpoint": "Bad Slug"},
            {"endpoint": "okay", "as": {"role": "god"}},
            {"endpoint": "okay", "extra": True},
        ):
            r = await client.post("/api/v1/authz/check", headers=tenant.owner.headers, json=body)
            assert r.status_code == 422, body
