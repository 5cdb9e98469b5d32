"""Recording audit events into per-tenant hash chains.

Two ways in, one chain logic:
- `record()` appends inside the caller's transaction: a configuration change and its audit row
  commit or roll back together.
- `AuditWriter.submit()` queues high-volume or failure events (decisions, failed logins) and a
  background task appends them in batches within `AUDIT_FLUSH_INTERVAL_MS`, and on shutdown.
Appends lock the chain head row (`SELECT … FOR UPDATE` on PostgreSQL; SQLite transactions are
already serialised by `BEGIN IMMEDIATE`), so concurrent writers in any number of processes extend
the chain one link at a time.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import structlog
from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.audit.models import AuditChainHead, AuditEvent
from app.core.context import current_request
from app.core.db import SKIP_TENANT_FILTER
from app.core.logging import mask_email
from app.core.types import utcnow

log = structlog.get_logger("warden.audit")
GENESIS = "0" * 64
SYSTEM_CHAIN = "system"


@dataclass(frozen=True)
class Actor:
    """Who did it: `user`, `api_key`, `satellite`, `service`, `anonymous` or `system`."""

    type: str
    id: str | None = None
    email: str | None = None


ANONYMOUS = Actor("anonymous")
SYSTEM = Actor("system")


@dataclass
class EventData:
    """An event before it is linked into a chain."""

    tenant_id: uuid.UUID | None
    action: str
    outcome: str
    actor: Actor
    target_type: str | None = None
    target_id: str | None = None
    details: dict[str, Any] = field(default_factory=dict)
    ip: str | None = None
    request_id: str | None = None
    at: datetime = field(default_factory=utcnow)


def chain_key(tenant_id: uuid.UUID | None) -> str:
    """The chain a tenant's events belong to."""
    return str(tenant_id) if tenant_id else SYSTEM_CHAIN


def canonical_event(event: AuditEvent) -> bytes:
    """The bytes that are hashed: every field but the hashes, in a fixed JSON form."""
    body = {
        "id": str(event.id),
        "tenant_id": str(event.tenant_id) if event.tenant_id else None,
        "seq": event.seq,
        "at": event.at.isoformat(timespec="microseconds"),
        "actor_type": event.actor_type,
        "actor_digest": event.actor_digest,
        "action": event.action,
        "target_type": event.target_type,
        "target_id": event.target_id,
        "outcome": event.outcome,
        "request_id": event.request_id,
        "details": event.details,
    }
    return json.dumps(body, sort_keys=True, separators=(",", ":"), default=str).encode()


def actor_digest(actor_id: str | None, actor_email: str | None, ip: str | None) -> str:
    """The commitment to the personal fields that the chain hashes (see AuditEvent)."""
    material = json.dumps([actor_id, actor_email, ip], separators=(",", ":"))
    return hashlib.sha256(material.encode()).hexdigest()


def link_hash(prev_hash: str, event: AuditEvent) -> str:
    """`SHA-256(prev_hash || canonical event)`."""
    return hashlib.sha256(prev_hash.encode() + canonical_event(event)).hexdigest()


def _event_from(data: EventData) -> AuditEvent:
    ctx = current_request()
    email = mask_email(data.actor.email)
    ip = data.ip if data.ip is not None else ctx.ip
    return AuditEvent(
        tenant_id=data.tenant_id,
        seq=0,
        at=data.at,
        actor_type=data.actor.type,
        actor_id=data.actor.id,
        actor_email=email,
        actor_digest=actor_digest(data.actor.id, email, ip),
        action=data.action,
        target_type=data.target_type,
        target_id=data.target_id,
        outcome=data.outcome,
        ip=ip,
        request_id=data.request_id if data.request_id is not None else ctx.request_id,
        details=json.loads(json.dumps(data.details, default=str)),
        prev_hash=GENESIS,
        hash=GENESIS,
    )


async def _lock_head(session: AsyncSession, key: str) -> AuditChainHead:
    dialect = session.bind.dialect.name if session.bind else "sqlite"
    insert = pg_insert if dialect == "postgresql" else sqlite_insert
    await session.execute(
        insert(AuditChainHead)
        .values(chain=key, seq=0, last_hash=GENESIS)
        .on_conflict_do_nothing(index_elements=["chain"])
    )
    head = (
        await session.execute(
            select(AuditChainHead)
            .where(AuditChainHead.chain == key)  # type: ignore[arg-type]
            .with_for_update()
            .execution_options(populate_existing=True)
        )
    ).scalar_one()
    return head


async def append_events(session: AsyncSession, events: Sequence[EventData]) -> list[AuditEvent]:
    """Link events into their chains within the session's transaction."""
    rows: list[AuditEvent] = []
    by_chain: dict[str, list[EventData]] = {}
    for data in events:
        by_chain.setdefault(chain_key(data.tenant_id), []).append(data)
    previous = session.info.get(SKIP_TENANT_FILTER)
    session.info[SKIP_TENANT_FILTER] = True  # the writer may write many tenants' chains
    try:
        for key in sorted(by_chain):  # fixed order: two writers never lock heads crosswise
            head = await _lock_head(session, key)
            for data in by_chain[key]:
                event = _event_from(data)
                head.seq += 1
                event.seq = head.seq
                event.prev_hash = head.last_hash
                event.hash = link_hash(head.last_hash, event)
                head.last_hash = event.hash
                session.add(event)
                rows.append(event)
            session.add(head)
        await session.flush()
    finally:
        session.info[SKIP_TENANT_FILTER] = previous
    return rows


async def record(
    session: AsyncSession,
    *,
    tenant_id: uuid.UUID | None,
    action: str,
    actor: Actor,
    outcome: str = "success",
    target_type: str | None = None,
    target_id: str | None = None,
    details: dict[str, Any] | None = None,
) -> AuditEvent:
    """Append one event inside the caller's transaction (configuration changes)."""
    data = EventData(
        tenant_id=tenant_id,
        action=action,
        outcome=outcome,
        actor=actor,
        target_type=target_type,
        target_id=target_id,
        details=details or {},
    )
    log.info(
        "audit",
        action=action,
        outcome=outcome,
        actor_type=actor.type,
        actor_id=actor.id,
        target_id=target_id,
        tenant_id=str(tenant_id) if tenant_id else None,
    )
    (event,) = await append_events(session, [data])
    return event


class AuditWriter:
    """Batches queued events into the chains off the request path."""

    def __init__(
        self, sessionmaker: async_sessionmaker[AsyncSession], interval_ms: int = 200
    ) -> None:
        self.sessionmaker = sessionmaker
        self.interval = interval_ms / 1000
        self.queue: list[EventData] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._flush_lock = asyncio.Lock()

    def submit(
        self,
        *,
        tenant_id: uuid.UUID | None,
        action: str,
        actor: Actor,
        outcome: str,
        target_type: str | None = None,
        target_id: str | None = None,
        details: dict[str, Any] | None = None,
    ) -> None:
        """Queue an event; it is written within one flush interval."""
        ctx = current_request()
        self.queue.append(
            EventData(
                tenant_id=tenant_id,
                action=action,
                outcome=outcome,
                actor=actor,
                target_type=target_type,
                target_id=target_id,
                details=details or {},
                ip=ctx.ip,
                request_id=ctx.request_id,
            )
        )
        log.info(
            "audit",
            action=action,
            outcome=outcome,
            actor_type=actor.type,
            actor_id=actor.id,
            target_id=target_id,
            tenant_id=str(tenant_id) if tenant_id else None,
        )
        if len(self.queue) >= 500:
            self._wake.set()

    def start(self) -> None:
        """Start the background flusher."""
        self._stopping = False
        self._task = asyncio.create_task(self._run(), name="audit-writer")

    async def _run(self) -> None:
        while not self._stopping:
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=self.interval)
            except TimeoutError:
                pass
            self._wake.clear()
            try:
                await self.flush()
            except Exception as exc:  # keep the events; retry next interval
                log.error("audit_flush_failed", error=repr(exc))

    async def flush(self) -> int:
        """Write everything queued so far; returns how many events were written."""
        async with self._flush_lock:
            if not self.queue:
                return 0
            batch, self.queue = self.queue, []
            try:
                async with self.sessionmaker() as session, session.begin():
                    await append_events(session, batch)
            except BaseException:
                self.queue = batch + self.queue
                raise
            return len(batch)

    async def stop(self) -> None:
        """Stop the flusher and write what is left."""
        self._stopping = True
        self._wake.set()
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        for _ in range(3):
            try:
                await self.flush()
                return
            except Exception as exc:
                log.error("audit_final_flush_failed", error=repr(exc))
                await asyncio.sleep(0.2)
