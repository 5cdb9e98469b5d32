"""Cross-tenant matrix: a tenant-A admin gets 404 for every tenant-B object, on every route
that takes an id, for reads and writes; and nothing of B changes."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi.routing import APIRoute

from tests.conftest import TenantHandle

# How to make an object in tenant B for each path parameter, and a valid write body per method.
Factory = Callable[[TenantHandle], Awaitable[dict[str, str]]]


async def _user(b: TenantHandle) -> dict[str, str]:
    member = await b.add_user("member")
    return {"user_id": member.id}


FACTORIES: dict[str, Factory] = {
    "/api/v1/users/{user_id}": _user,
}
BODIES: dict[tuple[str, str], dict[str, Any]] = {
    ("PATCH", "/api/v1/users/{user_id}"): {"role": "viewer"},
}


def templated_routes(app: Any) -> list[tuple[str, str]]:
    """Every (method, path) of the public API whose path carries an id or slug."""
    found = []
    for route in app.routes:
        if isinstance(route, APIRoute) and "{" in route.path and route.path.startswith("/api/"):
            for method in sorted(route.methods - {"HEAD", "OPTIONS"}):
                found.append((method, route.path))
    return found


async def test_every_templated_route_is_covered(app):
    missing = {path for _, path in templated_routes(app) if path not in FACTORIES}
    assert not missing, f"add these routes to the isolation matrix: {sorted(missing)}"


async def test_cross_tenant_access_is_404(app, client, tenant, other_tenant):
    attacker = tenant.owner.headers
    for method, path in templated_routes(app):
        params = await FACTORIES[path](other_tenant)
        url = path
        for name, value in params.items():
            url = url.replace("{" + name + "}", value)
        assert not re.search(r"{\w+}", url), url
        body = BODIES.get((method, path))
        r = await client.request(method, url, headers=attacker, json=body)
        assert r.status_code == 404, (method, path, r.status_code, r.text)
        # B's owner still sees the object unchanged.
        if path == "/api/v1/users/{user_id}":
            r = await client.get(url, headers=other_tenant.owner.headers)
            assert r.status_code == 200
            assert r.json()["role"] == "member"


async def test_tokens_name_their_tenant_only(client, tenant, other_tenant):
    r = await client.get("/api/v1/users", headers=tenant.owner.headers)
    emails = {u["email"] for u in r.json()["items"]}
    assert other_tenant.owner.email not in emails
    r = await client.get("/api/v1/tenant", headers=tenant.owner.headers)
    assert r.json()["slug"] == tenant.slug
