"""Cross-tenant matrix: a tenant-A owner gets 404 for every tenant-B object, on every route
that takes an id or slug, for reads and writes; and nothing of B changes."""

from __future__ import annotations

import re
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi.routing import APIRoute

from tests.conftest import TenantHandle, add_policy, make_endpoint

Factory = Callable[[TenantHandle], Awaitable[dict[str, str]]]


async def _user(b: TenantHandle) -> dict[str, str]:
    member = await b.add_user("member")
    return {"user_id": member.id}


async def _endpoint(b: TenantHandle) -> dict[str, str]:
    ep = await make_endpoint(b)
    await b.client.put(
        f"/api/v1/endpoints/{ep['slug']}/credential",
        headers=b.owner.headers,
        json={"header": "X-Key", "value": "tenant-b-secret-value"},
    )
    return {"slug": ep["slug"]}


async def _policy(b: TenantHandle) -> dict[str, str]:
    ep = await make_endpoint(b)
    policy = await add_policy(b, ep["slug"], "rule", {"rule": "allow"})
    return {"slug": ep["slug"], "policy_id": policy["id"]}


async def _api_key(b: TenantHandle) -> dict[str, str]:
    r = await b.client.post(
        "/api/v1/api-keys",
        headers=b.owner.headers,
        json={"name": "b-key", "scopes": ["endpoints:query"]},
    )
    return {"key_id": r.json()["id"]}


async def _issuer(b: TenantHandle) -> dict[str, str]:
    from cryptography.hazmat.primitives.asymmetric import ec

    from app.core import jose

    public = ec.generate_private_key(ec.SECP256R1()).public_key()
    r = await b.client.post(
        "/api/v1/issuers",
        headers=b.owner.headers,
        json={
            "issuer": f"https://idp.example/{b.slug}/{uuid.uuid4().hex[:8]}",
            "jwks": {"keys": [jose.public_jwk(public, kid="b-key", alg="ES256")]},
            "audiences": ["b-api"],
            "algorithms": ["ES256"],
        },
    )
    assert r.status_code == 201, r.text
    return {"issuer_id": r.json()["id"]}


async def _identity_provider(b: TenantHandle) -> dict[str, str]:
    # Written directly: registering through the API needs a live discovery document, which
    # tests/identity_providers exercises; here only the row's tenant matters.
    from app.core.db import set_session_tenant
    from app.identity_providers.models import IdentityProvider
    from tests import conftest

    runtime = conftest._APP.state.runtime
    async with runtime.sessionmaker() as db, db.begin():
        set_session_tenant(db, uuid.UUID(b.id))
        row = IdentityProvider(
            tenant_id=uuid.UUID(b.id),
            name=f"b-{uuid.uuid4().hex[:8]}",
            issuer="https://idp.example/b",
            client_id="b-client",
            client_auth="client_secret_post",
            provider_metadata={"authorization_endpoint": "https://idp.example/b/auth"},
            scopes=["openid"],
            claim_mapping={},
            allowed_email_domains=[],
            default_role="member",
        )
        db.add(row)
    return {"provider_id": str(row.id)}


async def _gateway_path(b: TenantHandle) -> dict[str, str]:
    # Envoy's check path carries the original path, never a tenant: B's bound prefix asked
    # about under another host (here the API's own) selects nothing of B's.
    ep = await make_endpoint(b, host=f"{b.slug}.example.test", path_prefix="/b-only")
    return {"path:path": f"{ep['path_prefix'].lstrip('/')}/orders"}


async def _browser_session(b: TenantHandle) -> dict[str, str]:
    r = await b.client.post(
        "/api/v1/sessions",
        json={"email": b.owner.email, "password": b.owner.password, "tenant": b.slug},
    )
    assert r.status_code == 201, r.text
    b.client.cookies.clear()  # the attacker's requests must not carry B's cookie
    return {"session_id": r.json()["session"]["id"]}


FACTORIES: dict[str, Factory] = {
    "/api/v1/users/{user_id}": _user,
    "/api/v1/endpoints/{slug}": _endpoint,
    "/api/v1/endpoints/{slug}/policies": _endpoint,
    "/api/v1/endpoints/{slug}/credential": _endpoint,
    "/api/v1/endpoints/{slug}/query": _endpoint,
    "/api/v1/endpoints/{slug}/policies/{policy_id}": _policy,
    "/api/v1/api-keys/{key_id}": _api_key,
    "/api/v1/issuers/{issuer_id}": _issuer,
    "/api/v1/endpoints/{slug}/istio": _endpoint,
    "/api/v1/authz/forward/{path:path}": _gateway_path,
    "/api/v1/sessions/{session_id}": _browser_session,
    "/api/v1/identity-providers/{provider_id}": _identity_provider,
}
BODIES: dict[tuple[str, str], dict[str, Any]] = {
    ("PATCH", "/api/v1/users/{user_id}"): {"role": "viewer"},
    ("PATCH", "/api/v1/endpoints/{slug}"): {"is_active": False},
    ("POST", "/api/v1/endpoints/{slug}/policies"): {
        "policy_type": "rule",
        "configuration": {"rule": "deny"},
    },
    ("PATCH", "/api/v1/endpoints/{slug}/policies/{policy_id}"): {"enabled": False},
    ("PUT", "/api/v1/endpoints/{slug}/credential"): {"header": "X-Key", "value": "stolen-1234"},
    ("PATCH", "/api/v1/identity-providers/{provider_id}"): {"enabled": False},
}


def _api_routes(app: Any) -> list[tuple[set[str], str]]:
    """(methods, full path) of every API route, also inside included routers (FastAPI keeps
    those as `_IncludedRouter` entries, not as `APIRoute`s in `app.routes`)."""
    found = []
    for route in app.routes:
        if isinstance(route, APIRoute):
            found.append((set(route.methods), route.path))
        for context in getattr(route, "effective_route_contexts", lambda: [])():
            if isinstance(context.original_route, APIRoute):
                found.append((set(context.original_route.methods), context.path))
    return found


def templated_routes(app: Any) -> list[tuple[str, str]]:
    """Every (method, path) of the public API whose path carries an id or slug."""
    found = []
    for methods, path in _api_routes(app):
        if "{" in path and path.startswith("/api/") and path not in PUBLIC_BY_NAME:
            for method in sorted(methods - {"HEAD", "OPTIONS"}):
                found.append((method, path))
    return found


# Public routes that name their tenant in the path instead of taking it from a credential:
# another tenant's provider there is a 404 like an unknown one (tests/identity_providers).
PUBLIC_BY_NAME = {
    "/api/v1/sessions/oidc/{tenant}/{provider}/start",
    "/api/v1/sessions/oidc/{tenant}/{provider}/callback",
}


def test_the_matrix_sees_the_routers_routes(app):
    # Routes of included routers are not `APIRoute`s of `app.routes` in this FastAPI: a matrix
    # that looked only there would check nothing and pass.
    routes = templated_routes(app)
    assert ("GET", "/api/v1/users/{user_id}") in routes
    assert ("DELETE", "/api/v1/identity-providers/{provider_id}") in routes


def fill(path: str, params: dict[str, str]) -> str:
    url = path
    for name, value in params.items():
        url = url.replace("{" + name + "}", value)
    assert not re.search(r"{\w+}", url), url
    return url


async def b_state(b: TenantHandle) -> Any:
    """Everything tenant B can see of its own configuration."""
    h = b.owner.headers
    users = (await b.client.get("/api/v1/users", headers=h)).json()
    endpoints = (await b.client.get("/api/v1/endpoints", headers=h)).json()["items"]
    details = []
    for ep in endpoints:
        one = (await b.client.get(f"/api/v1/endpoints/{ep['slug']}", headers=h)).json()
        pols = (await b.client.get(f"/api/v1/endpoints/{ep['slug']}/policies", headers=h)).json()
        details.append((one, pols["items"]))
    keys = (await b.client.get("/api/v1/api-keys", headers=h)).json()
    issuers = (await b.client.get("/api/v1/issuers", headers=h)).json()
    sessions = (await b.client.get("/api/v1/sessions", headers=h)).json()
    idps = (await b.client.get("/api/v1/identity-providers", headers=h)).json()
    return users, details, keys, issuers, sessions, idps


async def test_every_templated_route_is_covered(app):
    missing = {path for _, path in templated_routes(app) if path not in FACTORIES}
    assert not missing, f"add these routes to the isolation matrix: {sorted(missing)}"


async def test_cross_tenant_access_is_404(app, client, tenant, other_tenant):
    attacker = tenant.owner.headers
    own_endpoint = await make_endpoint(tenant)
    targets = []
    for method, path in templated_routes(app):
        targets.append((method, path, await FACTORIES[path](other_tenant)))
    before = await b_state(other_tenant)
    for method, path, params in targets:
        body = BODIES.get((method, path))
        r = await client.request(method, fill(path, params), headers=attacker, json=body)
        assert r.status_code == 404, (method, path, r.status_code, r.text)
        if "policy_id" in params:
            # A's own endpoint with B's policy id: still 404.
            mixed = {**params, "slug": own_endpoint["slug"]}
            r = await client.request(method, fill(path, mixed), headers=attacker, json=body)
            assert r.status_code == 404, (method, path, "own slug", r.status_code)
    assert await b_state(other_tenant) == before


async def test_tokens_name_their_tenant_only(client, tenant, other_tenant):
    r = await client.get("/api/v1/users", headers=tenant.owner.headers)
    emails = {u["email"] for u in r.json()["items"]}
    assert other_tenant.owner.email not in emails
    r = await client.get("/api/v1/tenant", headers=tenant.owner.headers)
    assert r.json()["slug"] == tenant.slug
