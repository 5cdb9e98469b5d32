"""Every security event PRODUCT.md names is in the trail: each action below is triggered
through the API or the CLI, and the test asserts its event exists (with its outcome)."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from datetime import timedelta

import httpx
from sqlalchemy import select

from app.audit.models import AuditEvent
from app.audit.verify import verify_chain
from app.core.config import Settings
from app.core.db import SKIP_TENANT_FILTER
from app.core.types import utcnow
from tests.audit.helpers import events, flush, system_events
from tests.conftest import add_policy, make_endpoint, make_tenant, random_ip

# (action, outcome) pairs in a tenant's chain, by PRODUCT.md's categories.
TENANT_EVENTS = {
    # authentication attempts, failures included, and token handling
    ("auth.login", "success"),
    ("auth.login", "failure"),
    ("auth.refresh", "success"),
    ("auth.refresh_reuse", "failure"),
    ("auth.logout", "success"),
    ("auth.api_key_rejected", "failure"),
    # authorisation failures
    ("auth.forbidden", "denied"),
    # endpoint queries, policy violations, rate-limit hits, decisions
    ("endpoint.query", "allowed"),
    ("endpoint.query", "denied"),
    ("endpoint.query", "rate_limited"),
    ("authz.check", "denied"),
    # configuration changes: tenant, users, endpoints, policies, credentials, API keys
    ("tenant.created", "success"),
    ("tenant.updated", "success"),
    ("user.created", "success"),
    ("user.updated", "success"),
    ("user.deleted", "success"),
    ("endpoint.created", "success"),
    ("endpoint.updated", "success"),
    ("endpoint.deleted", "success"),
    ("policy.created", "success"),
    ("policy.updated", "success"),
    ("policy.deleted", "success"),
    ("credential.created", "success"),
    ("credential.replaced", "success"),
    ("credential.deleted", "success"),
    ("api_key.created", "success"),
    ("api_key.revoked", "success"),
    # the audit trail itself, exports and erasures
    ("audit.exported", "success"),
    ("audit.verified", "success"),
    ("privacy.exported", "success"),
    ("privacy.erased", "success"),
}
# Events with no tenant to belong to go to the system chain.
SYSTEM_EVENTS = {
    ("auth.token_rejected", "failure"),  # a token that names no tenant we can trust
    ("auth.login", "rate_limited"),  # counted before the tenant is looked up
    ("tenant.deleted", "success"),  # the tenant's own chain goes with it
    ("keys.rotated", "success"),
    ("keys.reencrypted", "success"),
}


def cli(*args: str) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "app.cli", *args],
        env=dict(os.environ),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


async def system_chain_since(runtime, since) -> list[AuditEvent]:
    await flush(runtime)
    async with runtime.sessionmaker() as session:
        stmt = (
            select(AuditEvent)
            .where(AuditEvent.tenant_id.is_(None), AuditEvent.at >= since)  # type: ignore[union-attr, arg-type]
            .execution_options(**{SKIP_TENANT_FILTER: True})
        )
        return list((await session.execute(stmt)).scalars())


async def test_every_security_event_is_recorded(client, tenant, runtime, upstream):
    started = utcnow() - timedelta(seconds=1)
    h = tenant.owner.headers
    api = "/api/v1"

    # Authentication: success, failure, refresh, reuse, logout, a rejected API key.
    member = await tenant.add_user("member")
    r = await client.post(
        f"{api}/auth/login",
        json={"email": member.email, "password": "nope", "tenant": tenant.slug},
    )
    assert r.status_code == 401
    r = await client.post(f"{api}/auth/refresh", json={"refresh_token": member.refresh_token})
    assert r.status_code == 200
    r = await client.post(f"{api}/auth/refresh", json={"refresh_token": member.refresh_token})
    assert r.json()["error"]["code"] == "refresh_token_reused"
    session = await tenant.login(member.email)
    r = await client.post(
        f"{api}/auth/logout",
        json={"refresh_token": session["refresh_token"]},
        headers={"Authorization": f"Bearer {session['access_token']}"},
    )
    assert r.status_code == 204
    r = await client.post(
        f"{api}/api-keys", headers=h, json={"name": "k", "scopes": ["authz:check"]}
    )
    key_id, key = r.json()["id"], r.json()["key"]
    assert (await client.delete(f"{api}/api-keys/{key_id}", headers=h)).status_code == 204
    r = await client.post(f"{api}/authz/check", headers={"X-API-Key": key}, json={"endpoint": "x"})
    assert r.status_code == 401

    # A token no tenant vouches for: the system chain, found by its request id.
    rejected_request = uuid.uuid4().hex
    r = await client.get(
        f"{api}/auth/me",
        headers={
            "Authorization": "Bearer eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0.",
            "X-Request-ID": rejected_request,
        },
    )
    assert r.status_code == 401

    # Authorisation failure: a member at an admin route.
    assert (await client.get(f"{api}/users", headers=member.headers)).status_code == 403

    # Configuration changes.
    assert (
        await client.patch(f"{api}/tenant", headers=h, json={"name": "Renamed"})
    ).status_code == 200
    other = await tenant.add_user("viewer")
    r = await client.patch(f"{api}/users/{other.id}", headers=h, json={"role": "member"})
    assert r.status_code == 200
    assert (await client.delete(f"{api}/users/{other.id}", headers=h)).status_code == 204
    ep = await make_endpoint(tenant, upstream_url=f"{upstream}/echo")
    slug = ep["slug"]
    r = await client.patch(f"{api}/endpoints/{slug}", headers=h, json={"description": "d"})
    assert r.status_code == 200
    credential = {"header": "X-Upstream-Key", "value": "upstream-secret-0001"}
    for value in ("upstream-secret-0001", "upstream-secret-0002"):
        r = await client.put(
            f"{api}/endpoints/{slug}/credential", headers=h, json={**credential, "value": value}
        )
        assert r.status_code == 200
    assert (await client.delete(f"{api}/endpoints/{slug}/credential", headers=h)).status_code == 204
    policy = await add_policy(
        tenant, slug, "access", {"mode": "deny", "patterns": ["nobody@x.example"]}
    )
    r = await client.patch(
        f"{api}/endpoints/{slug}/policies/{policy['id']}", headers=h, json={"priority": 5}
    )
    assert r.status_code == 200
    await add_policy(
        tenant,
        slug,
        "rate_limit",
        {"requests_per_period": 1, "period_seconds": 60, "scope": "per_user"},
    )

    # Queries: allowed, rate-limited, denied by policy; a decision-only check.
    query = f"{api}/endpoints/{slug}/query"
    assert (await client.post(query, headers=member.headers, json={})).status_code == 200
    assert (await client.post(query, headers=member.headers, json={})).status_code == 429
    r = await client.patch(
        f"{api}/endpoints/{slug}/policies/{policy['id']}",
        headers=h,
        json={"configuration": {"mode": "deny", "patterns": [f"*@{tenant.slug}.example"]}},
    )
    assert r.status_code == 200, r.text
    assert (await client.post(query, headers=h, json={})).status_code == 403
    r = await client.post(f"{api}/authz/check", headers=h, json={"endpoint": slug})
    assert r.json()["allowed"] is False
    assert (
        await client.delete(f"{api}/endpoints/{slug}/policies/{policy['id']}", headers=h)
    ).status_code == 204
    assert (await client.delete(f"{api}/endpoints/{slug}", headers=h)).status_code == 204

    # The trail itself, the user's own data, erasure.
    assert (await client.get(f"{api}/audit-events/export", headers=h)).status_code == 200
    assert (await client.post(f"{api}/audit-events/verify", headers=h)).status_code == 200
    assert (await client.get(f"{api}/me/export", headers=member.headers)).status_code == 200
    assert (await client.delete(f"{api}/me", headers=member.headers)).status_code == 204

    # Tenant deletion and key rotations land in the system chain.
    doomed = await make_tenant(client)
    assert (await client.delete(f"{api}/tenant", headers=doomed.owner.headers)).status_code == 204
    new_kid = cli("keys", "rotate").split()[-1]
    cli("keys", "rotate-encryption")
    await runtime.signing_keys.load(create_if_missing=False)

    # Login attempts over the per-account limit, counted by an app with a low limit.
    from app.main import create_app

    strict = create_app(Settings(login_rate_limit="2/minute"))
    async with strict.router.lifespan_context(strict):
        body = {"email": member.email, "password": "nope", "tenant": tenant.slug}
        codes = []
        for _ in range(3):  # from three addresses: the account's limit bites, not an address's
            transport = httpx.ASGITransport(app=strict, client=(random_ip(), 1234))
            async with httpx.AsyncClient(transport=transport, base_url="http://warden.test") as c:
                codes.append((await c.post(f"{api}/auth/login", json=body)).status_code)
    assert codes == [401, 401, 429]

    recorded = {(e.action, e.outcome) for e in await events(runtime, tenant.id)}
    assert TENANT_EVENTS - recorded == set()
    system = await system_chain_since(runtime, started)
    assert SYSTEM_EVENTS - {(e.action, e.outcome) for e in system} == set()
    assert [e.action for e in await system_events(runtime, rejected_request)] == [
        "auth.token_rejected"
    ]
    assert any(e.action == "tenant.deleted" and e.target_id == doomed.id for e in system)
    assert any(e.action == "keys.rotated" and e.target_id == new_kid for e in system)
    limited = [e for e in system if e.outcome == "rate_limited"]
    assert limited[0].actor_email == f"{member.email[0]}***@{member.email.split('@')[1]}"
    assert (await verify_chain(runtime.sessionmaker, uuid.UUID(tenant.id))).status == "intact"
