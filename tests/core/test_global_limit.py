"""The global per-IP limit over the whole API, and the per-IP login limit."""

from __future__ import annotations

import httpx

from app.core.config import get_settings


async def test_global_limit_per_ip_with_error_shape(database):
    from app.main import create_app

    settings = get_settings().model_copy(update={"global_rate_limit": "3/minute"})
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        await app.state.runtime.limiter.reset()
        transport = httpx.ASGITransport(app=app, client=("10.9.9.9", 1))
        async with httpx.AsyncClient(transport=transport, base_url="http://warden.test") as c:
            codes = [(await c.get("/.well-known/jwks.json")).status_code for _ in range(3)]
            assert codes == [200, 200, 200]
            r = await c.get("/api/v1/auth/me")
            assert r.status_code == 429
            assert r.json()["error"]["code"] == "rate_limited"
            assert r.json()["error"]["request_id"] == r.headers["x-request-id"]
            assert int(r.headers["retry-after"]) >= 1
            assert (await c.get("/health")).status_code == 200  # liveness is never limited
        other = httpx.ASGITransport(app=app, client=("10.9.9.10", 1))
        async with httpx.AsyncClient(transport=other, base_url="http://warden.test") as c:
            assert (await c.get("/.well-known/jwks.json")).status_code == 200


async def test_login_limit_per_ip_belongs_to_its_app(database, client):
    from app.main import create_app

    strict = create_app(get_settings().model_copy(update={"login_rate_limit": "2/minute"}))
    async with strict.router.lifespan_context(strict):
        transport = httpx.ASGITransport(app=strict, client=("10.9.8.7", 1))
        async with httpx.AsyncClient(transport=transport, base_url="http://warden.test") as c:
            codes = []
            for i in range(3):  # a different account each time: only the per-IP limit triggers
                body = {"email": f"n{i}@x.example", "password": "wrong-1", "tenant": "no-tenant"}
                r = await c.post("/api/v1/auth/login", json=body)
                codes.append(r.status_code)
            assert codes == [401, 401, 429]
            assert r.json()["error"]["code"] == "rate_limited"
            assert int(r.headers["retry-after"]) >= 1
            for route in ("/api/v1/sessions", "/api/v1/auth/register"):  # one budget for all
                assert (await c.post(route, json=body)).status_code == 429
    # The suite's own app, in the same process, keeps its own (generous) limit: two apps never
    # share a limiter by accident.
    for i in range(3):
        body = {"email": f"m{i}@x.example", "password": "wrong-1", "tenant": "no-tenant"}
        assert (await client.post("/api/v1/auth/login", json=body)).status_code == 401
