"""The batched writer: big batches stay whole and chained, a backlog pushes back instead of
growing without bound, and a tenant deleted while its events were queued blocks nothing."""

from __future__ import annotations

import asyncio
import json
import os
import uuid

import pytest
from sqlalchemy import func, select

from app.audit import service as audit_service
from app.audit.models import AuditEvent
from app.audit.service import AuditWriter
from app.audit.verify import verify_chain
from app.core.db import SKIP_TENANT_FILTER, set_session_tenant
from app.core.errors import ServiceUnavailable
from app.core.identity import ANONYMOUS
from tests.conftest import make_tenant


async def test_deleting_a_tenant_while_the_writer_holds_its_chain_does_not_deadlock(
    client, runtime
):
    """The writer locks a chain head, then inserts (which needs the tenant row); a deletion of
    that tenant arriving in between waits for the head instead of taking the tenant row first
    (on PostgreSQL the other order was a deadlock: one side aborted, the request a 503)."""
    doomed = await make_tenant(client)
    await runtime.audit.flush()
    event = audit_service.EventData(
        tenant_id=uuid.UUID(doomed.id), action="test.racing", outcome="success", actor=ANONYMOUS
    )
    async with runtime.audit._flush_lock, runtime.sessionmaker() as session:
        async with session.begin():
            await audit_service._lock_head(session, audit_service.chain_key(event.tenant_id))
            deletion = asyncio.create_task(
                client.delete("/api/v1/tenant", headers=doomed.owner.headers)
            )
            await asyncio.sleep(0.5)  # the deletion is under way, waiting for what it needs
            await audit_service.append_events(session, [event])
        r = await asyncio.wait_for(deletion, timeout=20)
    assert r.status_code == 204, r.text
    r = await client.get("/api/v1/auth/me", headers=doomed.owner.headers)
    assert r.status_code == 401


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
    # The background flusher stays out until the tenant is gone (else it may write the doomed
    # event into the chain the deletion then removes).
    async with runtime.audit._flush_lock:
        r = await client.delete("/api/v1/tenant", headers=doomed.owner.headers)
    assert r.status_code == 204
    await runtime.audit.flush()
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


def _submit(writer: AuditWriter, tenant_id: uuid.UUID, count: int, marker: str) -> None:
    for n in range(count):
        writer.submit(
            tenant_id=tenant_id,
            action="test.batch",
            actor=ANONYMOUS,
            outcome="success",
            details={"marker": marker, "n": n},
        )


async def test_a_backlog_is_written_in_bounded_transactions_and_stays_one_chain(
    client, runtime, monkeypatch
):
    # More events than one transaction takes and than one multi-row statement holds.
    monkeypatch.setattr(audit_service, "MAX_BATCH", 700)
    tenant = await make_tenant(client)
    tenant_id = uuid.UUID(tenant.id)
    writer = AuditWriter(runtime.sessionmaker)  # no background task: flushed here only
    marker = uuid.uuid4().hex
    _submit(writer, tenant_id, 1_601, marker)
    assert await writer.flush() == 1_601
    assert writer.queue == []
    async with runtime.sessionmaker() as session:
        set_session_tenant(session, tenant_id)
        seqs = (
            await session.execute(
                select(AuditEvent.seq, AuditEvent.details)
                .where(AuditEvent.action == "test.batch")
                .order_by(AuditEvent.seq)
            )
        ).all()
    assert [d["n"] for _, d in seqs] == list(range(1_601))  # submission order kept
    assert [s for s, _ in seqs] == list(range(seqs[0][0], seqs[0][0] + 1_601))  # no gaps
    assert (await verify_chain(runtime.sessionmaker, tenant_id)).status == "intact"


async def test_a_full_queue_makes_submitters_wait_until_it_drains(client, runtime, monkeypatch):
    monkeypatch.setattr(audit_service, "MAX_PENDING", 50)
    tenant = await make_tenant(client)
    writer = AuditWriter(runtime.sessionmaker)
    _submit(writer, uuid.UUID(tenant.id), 60, uuid.uuid4().hex)
    waiting = asyncio.create_task(writer.room())
    await asyncio.sleep(0.05)
    assert not waiting.done()  # over the mark: the request path waits
    await writer.flush()
    await asyncio.wait_for(waiting, 1)
    await writer.room()  # below the mark: returns at once


async def test_a_queue_that_cannot_drain_answers_503_not_a_hang(client, runtime, monkeypatch):
    monkeypatch.setattr(audit_service, "MAX_PENDING", 10)
    monkeypatch.setattr(audit_service, "ROOM_TIMEOUT_SECONDS", 0.2)
    tenant = await make_tenant(client)
    writer = AuditWriter(runtime.sessionmaker)  # nothing flushes it
    marker = uuid.uuid4().hex
    _submit(writer, uuid.UUID(tenant.id), 10, marker)
    with pytest.raises(ServiceUnavailable) as refused:
        await writer.room()
    assert refused.value.code == "audit_backlog"
    assert len(writer.queue) == 10  # nothing was dropped
    await writer.flush()
    async with runtime.sessionmaker() as session:
        set_session_tenant(session, uuid.UUID(tenant.id))
        stored = await session.scalar(
            select(func.count()).where(AuditEvent.details["marker"].as_string() == marker)
        )
    assert stored == 10


async def test_a_query_waits_for_room_in_the_trail(client, tenant, runtime, monkeypatch):
    monkeypatch.setattr(audit_service, "MAX_PENDING", 1)
    monkeypatch.setattr(audit_service, "ROOM_TIMEOUT_SECONDS", 0.2)
    flush = runtime.audit.flush

    async def stalled() -> int:  # a database that does not keep up
        return 0

    monkeypatch.setattr(runtime.audit, "flush", stalled)
    try:
        _submit(runtime.audit, uuid.UUID(tenant.id), 1, uuid.uuid4().hex)
        r = await client.post(
            "/api/v1/authz/check", json={"endpoint": "nope-nope"}, headers=tenant.owner.headers
        )
        assert r.status_code == 503, r.text
        assert r.json()["error"]["code"] == "audit_backlog"
        assert r.headers["retry-after"] == "5"
    finally:
        monkeypatch.undo()
        await flush()


@pytest.mark.parametrize(
    "details",
    [
        {"endpoint": "e", "allowed": True, "n": 3, "policy": None},
        {1: "int key", "x": "y"},
        {"ratio": 0.5, "big": 10**30},
        {"id": uuid.UUID(int=7), "nested": {"a": [1, (2, 3)]}},
        {"when": audit_service.utcnow(), "tags": ("a", "b")},
        {},
    ],
)
def test_details_are_stored_as_json_reads_them_back(details):
    # The chain hashes `details` as written: it must equal what the JSON column returns.
    expected = json.loads(json.dumps(details, default=str))
    ready = audit_service._json_ready(details)
    assert ready == expected
    assert json.dumps(ready, sort_keys=True) == json.dumps(expected, sort_keys=True)


def test_event_ids_are_time_ordered_uuid7(monkeypatch):
    ids = []
    for ms in (1_700_000_000_000, 1_700_000_000_001, 1_700_000_000_002):
        monkeypatch.setattr(audit_service.time, "time_ns", lambda ms=ms: ms * 1_000_000)
        ids.append(audit_service.time_ordered_id())
    assert [i.version for i in ids] == [7, 7, 7]
    assert all(i.variant == uuid.RFC_4122 for i in ids)
    assert [i.int >> 80 for i in ids] == [1_700_000_000_000, 1_700_000_000_001, 1_700_000_000_002]
    assert sorted(ids, key=lambda i: i.hex) == ids  # the stored form sorts by time
    assert len({audit_service.time_ordered_id() for _ in range(10_000)}) == 10_000


def test_forked_workers_do_not_repeat_event_ids():
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child draws the bits its parent is about to draw, unless reseeded
        os.write(write_end, audit_service._ids.getrandbits(64).to_bytes(8))
        os._exit(0)
    os.waitpid(pid, 0)
    child = int.from_bytes(os.read(read_end, 8))
    os.close(read_end)
    os.close(write_end)
    assert child != audit_service._ids.getrandbits(64)


async def test_a_flush_yields_to_requests_and_events_submitted_meanwhile_join_the_chain(
    client, runtime
):
    # A flush links, encodes and sends in slices of `YIELD_EVERY` events, so requests in flight
    # keep being served while it runs (p99 stays flat); what they submit meanwhile is written
    # after the events already queued, in one intact chain.
    tenant = await make_tenant(client)
    tenant_id = uuid.UUID(tenant.id)
    writer = AuditWriter(runtime.sessionmaker)  # no background task: flushed here only
    marker = uuid.uuid4().hex
    _submit(writer, tenant_id, 1_200, marker)
    flushing = asyncio.create_task(writer.flush())
    turns = submitted = 0
    while not flushing.done():  # a request that gets a turn whenever the flush yields
        if submitted < 100:
            writer.submit(
                tenant_id=tenant_id,
                action="test.batch",
                actor=ANONYMOUS,
                outcome="success",
                details={"marker": marker, "n": 1_200 + submitted},
            )
            submitted += 1
        turns += 1
        await asyncio.sleep(0)
    assert await flushing == 1_200 + submitted
    # Linking, encoding and sending each gave way at least once per slice.
    assert turns >= 3 * 1_200 // audit_service.YIELD_EVERY
    async with runtime.sessionmaker() as session:
        set_session_tenant(session, tenant_id)
        details = (
            await session.execute(
                select(AuditEvent.details)
                .where(AuditEvent.action == "test.batch")
                .order_by(AuditEvent.seq)
            )
        ).scalars()
        assert [d["n"] for d in details] == list(range(1_200 + submitted))
    assert (await verify_chain(runtime.sessionmaker, tenant_id)).status == "intact"
