"""The batched writer survives a tenant deleted while its events were queued."""

from __future__ import annotations

import uuid

from sqlalchemy import select

from app.audit.models import AuditEvent
from app.audit.service import ANONYMOUS
from app.core.db import SKIP_TENANT_FILTER, set_session_tenant
from tests.conftest import make_tenant


async def test_events_of_a_deleted_tenant_do_not_block_the_queue(client, runtime):
    doomed = await make_tenant(client)
    survivor = await make_tenant(client)
    await runtime.audit.flush()
    marker = uuid.uuid4().hex
    runtime.audit.submit(
        tenant_id=uuid.UUID(doomed.id),
        action="test.queued",
        actor=ANONYMOUS,
        outcome="success",
        details={"marker": marker},
    )
    runtime.audit.submit(
        tenant_id=uuid.UUID(survivor.id),
        action="test.queued",
        actor=ANONYMOUS,
        outcome="success",
        details={"marker": marker},
    )
    r = await client.delete("/api/v1/tenant", headers=doomed.owner.headers)
    assert r.status_code == 204
    await runtime.audit.flush()  # (the background flusher may have written them already)
    assert runtime.audit.queue == []
    async with runtime.sessionmaker() as session:
        set_session_tenant(session, uuid.UUID(survivor.id))
        kept = (
            (await session.execute(select(AuditEvent).where(AuditEvent.action == "test.queued")))
            .scalars()
            .all()
        )
        assert [e.details["marker"] for e in kept] == [marker]
        moved = (
            (
                await session.execute(
                    select(AuditEvent)
                    .where(AuditEvent.action == "test.queued", AuditEvent.tenant_id.is_(None))
                    .execution_options(**{SKIP_TENANT_FILTER: True})
                )
            )
            .scalars()
            .all()
        )
        assert [(e.details["marker"], e.details["tenant_id"]) for e in moved] == [
            (marker, doomed.id)
        ]
