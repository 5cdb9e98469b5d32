"""Decisions are audited off the request path, and none is lost on a graceful shutdown."""

from __future__ import annotations

import asyncio
import uuid

import httpx
from sqlalchemy import func, select

from app.audit.models import AuditEvent
from app.core.db import set_session_tenant
from tests.conftest import add_policy, make_endpoint, make_tenant, random_ip


async def test_n_queries_then_shutdown_leave_n_decision_events(database):
    from app.main import create_app

    app = create_app()
    n = 60
    async with app.router.lifespan_context(app):
        runtime = app.state.runtime
        # A long flush interval: the events must come from the shutdown flush, not a timer.
        runtime.audit.interval = 3600
        transport = httpx.ASGITransport(app=app, client=(random_ip(), 1234))
        async with httpx.AsyncClient(transport=transport, base_url="http://warden.test") as c:
            handle = await make_tenant(c)
            ep = await make_endpoint(handle)
            await add_policy(
                handle, ep["slug"], "access", {"mode": "deny", "patterns": ["nobody@x.example"]}
            )
            url = f"/api/v1/endpoints/{ep['slug']}/query"
            results = await asyncio.gather(
                *[c.post(url, headers=handle.owner.headers) for _ in range(n)]
            )
            assert all(r.status_code == 200 for r in results)
            tenant_id = uuid.UUID(handle.id)
    # Lifespan exited: the writer flushed what was queued. Count with a fresh engine.
    from sqlalchemy.ext.asyncio import async_sessionmaker

    from app.core.db import make_engine

    engine = make_engine(database)
    try:
        async with async_sessionmaker(engine)() as session:
            set_session_tenant(session, tenant_id)
            count = (
                await session.execute(
                    select(func.count())
                    .select_from(AuditEvent)
                    .where(AuditEvent.action == "endpoint.query")
                )
            ).scalar_one()
            details = (
                await session.execute(
                    select(AuditEvent).where(AuditEvent.action == "endpoint.query").limit(1)
                )
            ).scalar_one()
    finally:
        await engine.dispose()
    assert count == n
    assert details.outcome == "allowed"
    assert details.details["endpoint"] == ep["slug"]
    assert details.request_id


async def test_denials_and_limits_are_audited(client, tenant, runtime):
    ep = await make_endpoint(tenant)
    deny = await add_policy(
        tenant, ep["slug"], "access", {"mode": "deny", "patterns": ["bad@x.example"]}
    )
    bad = await tenant.add_user("member", email="bad@x.example")
    r = await client.post(f"/api/v1/endpoints/{ep['slug']}/query", headers=bad.headers)
    assert r.status_code == 403
    await runtime.audit.flush()
    async with runtime.sessionmaker() as session:
        set_session_tenant(session, uuid.UUID(tenant.id))
        event = (
            await session.execute(
                select(AuditEvent).where(
                    AuditEvent.action == "endpoint.query", AuditEvent.outcome == "denied"
                )
            )
        ).scalar_one()
    assert event.details["policy"] == deny["id"]
    assert event.actor_id == bad.id
    assert event.actor_email == "b***@x.example"
