"""Issuer squatting across tenants: an (issuer, audience) pair belongs to the tenant that
registered it first. Another tenant registering it is a 409 `issuer_taken` (so the owner's
users never become `ambiguous_tenant`); other audiences of the same issuer stay free."""

from __future__ import annotations

import asyncio

from sqlalchemy import select

from app.core.db import SKIP_TENANT_FILTER
from app.issuers.models import IssuerAudience
from tests.conftest import make_tenant
from tests.issuers.conftest import bearer, trust

ME = "/api/v1/auth/me"


def body(realm, audiences, **extra):
    return {
        "issuer": realm.issuer,
        "jwks_uri": realm.jwks_uri,
        "audiences": audiences,
        "algorithms": ["ES256"],
        **extra,
    }


async def register(handle, payload):
    return await handle.client.post("/api/v1/issuers", json=payload, headers=handle.owner.headers)


async def test_another_tenant_cannot_take_a_trusted_pair(client, tenant, other_tenant, realm):
    await trust(tenant, realm, audiences=["aud1"])
    token = realm.token(aud="aud1")
    assert (await client.get(ME, headers=bearer(token))).json()["tenant"] == tenant.slug

    r = await register(other_tenant, body(realm, ["aud1"]))
    assert r.status_code == 409, r.text
    assert r.json()["error"]["code"] == "issuer_taken"
    # One taken audience among free ones is refused whole, with inline keys as with a JWKS URL.
    r = await register(other_tenant, body(realm, ["aud9", "aud1"]))
    assert r.status_code == 409
    assert r.json()["error"]["code"] == "issuer_taken"
    inline = body(realm, ["aud1"], jwks_uri=None, jwks=realm.jwks())
    r = await register(other_tenant, {k: v for k, v in inline.items() if v is not None})
    assert r.status_code == 409
    assert r.json()["error"]["code"] == "issuer_taken"

    r = await register(other_tenant, body(realm, ["aud2"]))
    assert r.status_code == 201, r.text

    # The owner's users still authenticate without X-Tenant; the other audience goes to B.
    r = await client.get(ME, headers=bearer(token))
    assert r.status_code == 200, r.text
    assert r.json()["tenant"] == tenant.slug
    r = await client.get(ME, headers=bearer(realm.token(aud="aud2")))
    assert r.json()["tenant"] == other_tenant.slug
    # B cannot speak for aud1 even when it names itself.
    r = await client.get(ME, headers=bearer(token, other_tenant.slug))
    assert r.status_code == 401


async def test_the_pair_is_freed_when_its_owner_stops_trusting_it(
    client, tenant, other_tenant, realm
):
    created = await trust(tenant, realm, audiences=["aud1"])
    assert (await register(other_tenant, body(realm, ["aud1"]))).status_code == 409
    r = await client.delete(f"/api/v1/issuers/{created['id']}", headers=tenant.owner.headers)
    assert r.status_code == 204
    assert (await register(other_tenant, body(realm, ["aud1"]))).status_code == 201
    r = await client.get(ME, headers=bearer(realm.token(aud="aud1")))
    assert r.json()["tenant"] == other_tenant.slug


async def test_concurrent_registrations_have_one_winner(client, runtime, realm):
    tenants = [await make_tenant(client) for _ in range(4)]
    results = await asyncio.gather(*(register(t, body(realm, ["shared"])) for t in tenants))
    statuses = sorted(r.status_code for r in results)
    assert statuses == [201, 409, 409, 409], [r.text for r in results]
    assert all(r.json()["error"]["code"] == "issuer_taken" for r in results if r.status_code == 409)
    async with runtime.sessionmaker() as session:
        stmt = (
            select(IssuerAudience)
            .where(IssuerAudience.issuer == realm.issuer)
            .execution_options(**{SKIP_TENANT_FILTER: True})
        )
        assert len((await session.execute(stmt)).scalars().all()) == 1
    winner = next(t for t, r in zip(tenants, results, strict=True) if r.status_code == 201)
    r = await client.get(ME, headers=bearer(realm.token(aud="shared")))
    assert r.json()["tenant"] == winner.slug
