"""The one decision pipeline, held to one behaviour at every entry point that decides.

`/endpoints/{slug}/query`, `/authz/check` and `/authz/forward` share `DecisionPipeline`: when
the rate-limit store cannot be reached the request is refused (fail closed) with a 503 naming
the store, and the refusal is audited with outcome `error` — the same way for all three.
"""

from __future__ import annotations

import secrets
import socket
from collections.abc import AsyncIterator
from typing import Any

import pytest

from app.core.ratelimit import AsyncLimiter
from tests.conftest import TenantHandle, add_policy, make_endpoint


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
async def limits_store_down(runtime: Any) -> AsyncIterator[None]:
    """The process's rate-limit store is a Redis that refuses connections."""
    pipeline = runtime.pipeline
    healthy = pipeline.limiter
    url = f"redis://127.0.0.1:{_closed_port()}/0"
    pipeline.limiter = AsyncLimiter(url)
    try:
        yield
    finally:
        await pipeline.limiter.aclose()
        pipeline.limiter = healthy


async def _limited_endpoint(tenant: TenantHandle, **fields: Any) -> dict[str, Any]:
    ep = await make_endpoint(tenant, **fields)
    config = {"requests_per_period": 100, "period_seconds": 60, "scope": "per_user"}
    await add_policy(tenant, ep["slug"], "rate_limit", config)
    return ep


async def _events(client: Any, tenant: TenantHandle, runtime: Any, action: str) -> list[Any]:
    await runtime.audit.flush()
    r = await client.get(
        "/api/v1/audit-events", params={"action": action}, headers=tenant.owner.headers
    )
    assert r.status_code == 200, r.text
    items: list[Any] = r.json()["items"]
    return items


@pytest.mark.usefixtures("limits_store_down")
class TestRateLimitStoreDown:
    async def test_query_is_refused_and_audited(self, client, tenant, runtime):
        ep = await _limited_endpoint(tenant)
        member = await tenant.add_user("member")
        r = await client.post(f"/api/v1/endpoints/{ep['slug']}/query", headers=member.headers)
        assert r.status_code == 503, r.text
        assert r.json()["error"]["code"] == "redis_unavailable"
        assert r.headers["retry-after"]
        [event] = await _events(client, tenant, runtime, "endpoint.query")
        assert event["outcome"] == "error"
        assert event["details"]["code"] == "redis_unavailable"

    async def test_check_is_refused_and_audited(self, client, tenant, runtime):
        ep = await _limited_endpoint(tenant)
        member = await tenant.add_user("member")
        r = await client.post(
            "/api/v1/authz/check", json={"endpoint": ep["slug"]}, headers=member.headers
        )
        assert r.status_code == 503, r.text
        assert r.json()["error"]["code"] == "redis_unavailable"
        assert r.headers["retry-after"]
        [event] = await _events(client, tenant, runtime, "authz.check")
        assert event["outcome"] == "error"

    async def test_forward_is_refused_and_audited(self, client, tenant, runtime):
        host = f"h-{secrets.token_hex(5)}.example.test"
        await _limited_endpoint(tenant, host=host)
        member = await tenant.add_user("member")
        r = await client.get(
            "/api/v1/authz/forward",
            headers={"X-Forwarded-Host": host, "X-Forwarded-Uri": "/", **member.headers},
        )
        assert r.status_code == 503
        assert r.content == b""
        assert r.headers["x-warden-code"] == "redis_unavailable"
        assert r.headers["retry-after"]
        [event] = await _events(client, tenant, runtime, "gateway.forward")
        assert event["outcome"] == "error"

    async def test_a_denial_needs_no_limit_store(self, client, tenant):
        # Limits come last: a request the policies refuse is refused without asking the store.
        ep = await _limited_endpoint(tenant)
        await add_policy(tenant, ep["slug"], "access", {"mode": "deny", "patterns": ["*@*"]})
        member = await tenant.add_user("member")
        r = await client.post(f"/api/v1/endpoints/{ep['slug']}/query", headers=member.headers)
        assert r.status_code == 403
        assert r.json()["error"]["code"] == "access_denied"
