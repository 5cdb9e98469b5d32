"""Two server processes sharing one database and Redis: a change made through one is enforced
by the other within a second, and rate-limit counters are shared."""

from __future__ import annotations

import time
import uuid

import httpx
import pytest

from tests.conftest import PASSWORD
from tests.support.processes import warden_process
from tests.support.services import REDIS, needs_redis

pytestmark = needs_redis


def _eventually(check, timeout: float = 1.0) -> float:
    """Poll until `check()` is true; returns how long it took; fails after `timeout`."""
    started = time.monotonic()
    while True:
        if check():
            return time.monotonic() - started
        if time.monotonic() - started > timeout:
            raise AssertionError(f"not true within {timeout}s")
        time.sleep(0.02)


@pytest.fixture(scope="module")
def servers(database):
    env = {"REDIS_URL": REDIS or "", "DATABASE_URL": database, "LOG_LEVEL": "warning"}
    with warden_process(env) as a, warden_process(env) as b:
        yield a, b


def test_changes_and_counters_cross_processes(servers):
    a, b = servers
    slug = f"mp-{uuid.uuid4().hex[:8]}"
    with httpx.Client(base_url=a, timeout=10) as ca, httpx.Client(base_url=b, timeout=10) as cb:
        r = ca.post(
            "/api/v1/auth/register",
            json={
                "tenant": slug,
                "tenant_name": "MP",
                "email": f"o@{slug}.example",
                "password": PASSWORD,
            },
        )
        assert r.status_code == 201, r.text
        tokens = ca.post(
            "/api/v1/auth/login",
            json={"email": f"o@{slug}.example", "password": PASSWORD, "tenant": slug},
        ).json()
        h = {"Authorization": f"Bearer {tokens['access_token']}"}
        assert (
            ca.post(
                "/api/v1/endpoints", headers=h, json={"name": "E", "slug": "guarded"}
            ).status_code
            == 201
        )
        query = "/api/v1/endpoints/guarded/query"
        assert cb.post(query, headers=h).status_code == 200  # B has it cached now

        # A policy change through A is enforced by B within a second.
        r = ca.post(
            "/api/v1/endpoints/guarded/policies",
            headers=h,
            json={"policy_type": "rule", "configuration": {"rule": "deny"}},
        )
        assert r.status_code == 201
        _eventually(lambda: cb.post(query, headers=h).status_code == 403)
        ca.delete(f"/api/v1/endpoints/guarded/policies/{r.json()['id']}", headers=h)
        _eventually(lambda: cb.post(query, headers=h).status_code == 200)

        # One rate-limit count across both processes.
        ca.post("/api/v1/endpoints", headers=h, json={"name": "L", "slug": "limited"})
        ca.post(
            "/api/v1/endpoints/limited/policies",
            headers=h,
            json={
                "policy_type": "rate_limit",
                "configuration": {
                    "requests_per_period": 3,
                    "period_seconds": 60,
                    "scope": "per_endpoint",
                },
            },
        )
        limited = "/api/v1/endpoints/limited/query"
        codes = [c.post(limited, headers=h).status_code for c in (ca, cb, ca, cb)]
        assert codes == [200, 200, 200, 429]

        # An API key revoked through A is refused by B at once.
        r = ca.post(
            "/api/v1/api-keys", headers=h, json={"name": "mp", "scopes": ["endpoints:query"]}
        )
        key, key_id = r.json()["key"], r.json()["id"]
        assert cb.post(query, headers={"X-API-Key": key}).status_code == 200
        assert ca.delete(f"/api/v1/api-keys/{key_id}", headers=h).status_code == 204
        _eventually(lambda: cb.post(query, headers={"X-API-Key": key}).status_code == 401)

        # A logout through A kills the access token in B at once.
        assert cb.get("/api/v1/auth/me", headers=h).status_code == 200
        r = ca.post(
            "/api/v1/auth/logout", headers=h, json={"refresh_token": tokens["refresh_token"]}
        )
        assert r.status_code == 204
        assert cb.get("/api/v1/auth/me", headers=h).status_code == 401
