"""What every response carries, and what bad input gets."""

from __future__ import annotations


class TestErrorsAndHeaders:
    async def test_malformed_json_is_422_with_error_shape(self, client):
        r = await client.post(
            "/api/v1/auth/login", content=b"{not json", headers={"content-type": "application/json"}
        )
        assert r.status_code == 422
        error = r.json()["error"]
        assert error["code"] == "validation_error"
        assert error["request_id"] == r.headers["x-request-id"]
        assert "Traceback" not in r.text

    async def test_wrong_types_and_unknown_fields(self, client):
        r = await client.post(
            "/api/v1/auth/login", json={"email": 5, "password": [], "tenant": "abc", "x": 1}
        )
        assert r.status_code == 422
        assert "unknown field" in r.json()["error"]["message"]

    async def test_unknown_route_is_404_in_error_shape(self, client):
        r = await client.get("/api/v1/nope")
        assert r.status_code == 404
        assert r.json()["error"]["code"] == "not_found"

    async def test_oversized_body_is_413(self, client):
        r = await client.post(
            "/api/v1/auth/login",
            content=b"x" * (2 * 1024 * 1024),
            headers={"content-type": "application/json"},
        )
        assert r.status_code == 413
        assert r.json()["error"]["code"] == "payload_too_large"

    async def test_security_headers_and_request_id(self, client):
        r = await client.get("/health", headers={"X-Request-ID": "abc-123"})
        assert r.status_code == 200
        assert r.headers["x-request-id"] == "abc-123"
        assert r.headers["x-content-type-options"] == "nosniff"
        assert r.headers["referrer-policy"] == "no-referrer"
        r = await client.get("/health", headers={"X-Request-ID": "bad id\nwith newline"})
        assert r.headers["x-request-id"] != "bad id\nwith newline"

    async def test_cors_allow_list_never_star(self, client):
        r = await client.options(
            "/api/v1/auth/me",
            headers={"Origin": "http://app.example", "Access-Control-Request-Method": "GET"},
        )
        assert r.headers.get("access-control-allow-origin") == "http://app.example"
        r = await client.options(
            "/api/v1/auth/me",
            headers={"Origin": "http://evil.example", "Access-Control-Request-Method": "GET"},
        )
        assert r.headers.get("access-control-allow-origin") is None

    async def test_ready_checks_dependencies(self, client):
        r = await client.get("/ready")
        assert r.status_code == 200
        assert r.json()["checks"]["database"] == "ok"

    async def test_openapi_is_served(self, client):
        r = await client.get("/openapi.json")
        assert r.status_code == 200
        assert "/api/v1/auth/login" in r.json()["paths"]
