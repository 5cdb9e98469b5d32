"""The decision routes are served ahead of FastAPI (`app.web.hotpath`): bad input of any shape
still gets the one error shape, the edge middlewares still apply, and whatever the hot path
does not take reaches FastAPI's own routes."""

from __future__ import annotations

import pytest

from tests.conftest import add_policy, make_endpoint

CHECK = "/api/v1/authz/check"


class TestCheckInput:
    async def test_malformed_json_is_a_422_naming_the_body(self, client, tenant):
        r = await client.post(
            CHECK,
            content=b'{"endpoint": "abc',
            headers={**tenant.owner.headers, "content-type": "application/json"},
        )
        assert r.status_code == 422, r.text
        error = r.json()["error"]
        assert error["code"] == "validation_error"
        assert error["details"] == [{"field": "body", "message": "malformed JSON"}]
        assert error["request_id"] == r.headers["x-request-id"]

    @pytest.mark.parametrize(
        ("body", "field"),
        [
            ({"endpoint": "x"}, "endpoint"),  # too short for a slug
            ({"endpoint": "Bad Slug"}, "endpoint"),
            ({}, "endpoint"),
            ({"endpoint": "abc", "surprise": 1}, "surprise"),
            ({"endpoint": "abc", "method": "get"}, "method"),
            ({"endpoint": "abc", "path": "/" * 3000}, "path"),
            ({"endpoint": "abc", "as": {"role": "emperor"}}, "as.role"),
            ([1, 2, 3], "body"),
        ],
    )
    async def test_invalid_fields_are_named(self, client, tenant, body, field):
        r = await client.post(CHECK, json=body, headers=tenant.owner.headers)
        assert r.status_code == 422, r.text
        assert field in [d["field"] for d in r.json()["error"]["details"]]

    async def test_a_body_that_is_not_json_is_refused(self, client, tenant):
        r = await client.post(
            CHECK,
            content=b"endpoint=abc",
            headers={**tenant.owner.headers, "content-type": "application/x-www-form-urlencoded"},
        )
        assert r.status_code == 422, r.text
        assert r.json()["error"]["details"][0]["field"] == "body"

    async def test_json_subtypes_are_json(self, client, tenant):
        ep = await make_endpoint(tenant)
        r = await client.post(
            CHECK,
            content=b'{"endpoint": "%s"}' % ep["slug"].encode(),
            headers={**tenant.owner.headers, "content-type": "application/merge-patch+json"},
        )
        assert r.status_code == 200, r.text

    async def test_authentication_comes_before_the_body(self, client):
        r = await client.post(CHECK, content=b"{nonsense", headers={"content-type": "text/plain"})
        assert r.status_code == 401

    async def test_an_oversized_body_is_a_413(self, client, tenant):
        r = await client.post(
            CHECK,
            content=b'{"endpoint": "' + b"a" * (2 * 1024 * 1024) + b'"}',
            headers={**tenant.owner.headers, "content-type": "application/json"},
        )
        assert r.status_code == 413
        assert r.json()["error"]["code"] == "payload_too_large"


class TestEdge:
    async def test_hot_routes_carry_the_security_headers(self, client, tenant):
        ep = await make_endpoint(tenant)
        for path, body in (
            (CHECK, {"endpoint": ep["slug"]}),
            (f"/api/v1/endpoints/{ep['slug']}/query", None),
        ):
            r = await client.post(path, json=body, headers=tenant.owner.headers)
            assert r.status_code == 200, r.text
            assert r.headers["x-content-type-options"] == "nosniff"
            assert r.headers["x-frame-options"] == "DENY"
            assert r.headers["cache-control"] == "no-store"
            assert r.headers["x-request-id"]
            assert r.headers["content-type"] == "application/json"

    async def test_a_caller_supplied_request_id_is_kept_and_audited(self, client, tenant, runtime):
        ep = await make_endpoint(tenant)
        r = await client.post(
            CHECK,
            json={"endpoint": ep["slug"]},
            headers={**tenant.owner.headers, "x-request-id": "trace-42.abc"},
        )
        assert r.headers["x-request-id"] == "trace-42.abc"
        await runtime.audit.flush()
        r = await client.get(
            "/api/v1/audit-events", params={"action": "authz.check"}, headers=tenant.owner.headers
        )
        assert "trace-42.abc" in [e["request_id"] for e in r.json()["items"]]

    async def test_other_methods_and_paths_reach_fastapi(self, client, tenant):
        r = await client.get(CHECK, headers=tenant.owner.headers)
        assert r.status_code == 405
        assert r.json()["error"]["code"] == "method_not_allowed"
        r = await client.post("/api/v1/endpoints/NOT_A_SLUG/query", headers=tenant.owner.headers)
        assert r.status_code == 422
        r = await client.post("/api/v1/endpoints/abc/query/extra", headers=tenant.owner.headers)
        assert r.status_code == 404

    async def test_an_endpoint_named_check_is_queried_not_checked(self, client, tenant):
        r = await client.post(
            "/api/v1/endpoints",
            json={"name": "Check", "slug": "check"},
            headers=tenant.owner.headers,
        )
        assert r.status_code == 201, r.text
        r = await client.post("/api/v1/endpoints/check/query", headers=tenant.owner.headers)
        assert r.status_code == 200, r.text
        assert r.json() == {"allowed": True, "decided_by": None, "endpoint": "check"}

    async def test_forward_auth_methods_and_suffixes(self, client, tenant):
        headers = {**tenant.owner.headers, "x-forwarded-host": "nobody.example"}
        for method in ("GET", "HEAD", "POST", "DELETE", "OPTIONS"):
            for path in (
                "/api/v1/authz/forward",
                "/api/v1/authz/forward/some/path",
                "/api/v1/authz/forward/",
            ):
                r = await client.request(method, path, headers=headers)
                assert r.status_code == 404, (method, path, r.status_code)  # no binding
        r = await client.request("TRACE", "/api/v1/authz/forward", headers=headers)
        assert r.status_code == 405
        r = await client.get("/api/v1/authz/forwarded", headers=headers)
        assert r.status_code == 404

    async def test_query_refusal_keeps_the_error_shape(self, client, tenant):
        ep = await make_endpoint(tenant)
        policy = await add_policy(
            tenant, ep["slug"], "access", {"mode": "deny", "patterns": ["*@*"]}
        )
        r = await client.post(f"/api/v1/endpoints/{ep['slug']}/query", headers=tenant.owner.headers)
        assert r.status_code == 403
        error = r.json()["error"]
        assert error["code"] == "access_denied"
        assert error["details"] == {"policy_id": policy["id"]}
        assert error["request_id"] == r.headers["x-request-id"]
