"""Helpers for audit tests: read a chain as stored, tamper with rows, append many events fast."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from types import SimpleNamespace
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.audit.models import AuditChainHead, AuditEvent
from app.audit.service import EventData, actor_digest, append_events, link_hash
from app.core.db import SKIP_TENANT_FILTER, make_engine, set_session_tenant
from app.core.identity import Actor
from app.core.types import utcnow


def scoped(runtime: Any, tenant_id: str | uuid.UUID) -> AsyncSession:
    """A session of the app's database scoped to one tenant."""
    session: AsyncSession = runtime.sessionmaker()
    set_session_tenant(session, uuid.UUID(str(tenant_id)))
    return session


async def flush(runtime: Any) -> None:
    """Write every queued (batched) event now."""
    await runtime.audit.flush()


async def events(
    runtime: Any, tenant_id: str | uuid.UUID, action: str | None = None
) -> list[AuditEvent]:
    """A tenant's stored events in seq order (optionally one action)."""
    await flush(runtime)
    async with scoped(runtime, tenant_id) as session:
        stmt = select(AuditEvent).order_by(AuditEvent.seq)  # type: ignore[arg-type]
        if action is not None:
            stmt = stmt.where(AuditEvent.action == action)  # type: ignore[arg-type]
        return list((await session.execute(stmt)).scalars())


async def system_events(runtime: Any, request_id: str) -> list[AuditEvent]:
    """Events of the system chain (no tenant) written for one request."""
    await flush(runtime)
    async with runtime.sessionmaker() as session:
        stmt = (
            select(AuditEvent)
            .where(AuditEvent.tenant_id.is_(None), AuditEvent.request_id == request_id)  # type: ignore[union-attr, arg-type]
            .execution_options(**{SKIP_TENANT_FILTER: True})
        )
        return list((await session.execute(stmt)).scalars())


async def tamper(runtime: Any, tenant_id: str | uuid.UUID, at_seq: int, **values: Any) -> None:
    """Edit one stored event behind Warden's back (what an attacker with DB access does)."""
    async with scoped(runtime, tenant_id) as session, session.begin():
        await session.execute(
            update(AuditEvent)
            .where(AuditEvent.seq == at_seq)  # type: ignore[arg-type]
            .values(**values)
            .execution_options(synchronize_session=False)
        )


async def append_many(
    sessionmaker: async_sessionmaker[AsyncSession],
    tenant_id: str | uuid.UUID,
    count: int,
    *,
    batch: int = 5000,
    action: str = "test.event",
    **fields: Any,
) -> None:
    """Append `count` events to a tenant's chain through the real chain logic, in batches."""
    tid = uuid.UUID(str(tenant_id))
    done = 0
    while done < count:
        size = min(batch, count - done)
        async with sessionmaker() as session, session.begin():
            await append_events(
                session,
                [
                    EventData(
                        tenant_id=tid,
                        action=action,
                        outcome="success",
                        actor=Actor("user", "u-1", "alice@example.com"),
                        target_type="endpoint",
                        target_id=str(done + i),
                        details={"n": done + i},
                        **fields,
                    )
                    for i in range(size)
                ],
            )
        done += size


async def bulk_append(
    sessionmaker: async_sessionmaker[AsyncSession],
    tenant_id: str | uuid.UUID,
    count: int,
    *,
    batch: int = 20_000,
    action: str = "test.bulk",
) -> None:
    """Many events fast: the chain is computed here (same `link_hash`) and inserted in bulk.

    For volume tests only; `append_many` goes through `append_events` itself."""
    tid = uuid.UUID(str(tenant_id))
    digest = actor_digest("u-1", "a***@example.com", "127.0.0.1")
    at = utcnow()
    done = 0
    while done < count:
        size = min(batch, count - done)
        async with sessionmaker() as session, session.begin():
            set_session_tenant(session, tid)
            head = (
                await session.execute(
                    select(AuditChainHead)
                    .where(AuditChainHead.chain == str(tid))  # type: ignore[arg-type]
                    .with_for_update()
                )
            ).scalar_one()
            seq, prev = head.seq, head.last_hash
            rows = []
            for i in range(size):
                seq += 1
                row = {
                    "id": uuid.uuid4(),
                    "tenant_id": tid,
                    "seq": seq,
                    "at": at,
                    "actor_type": "user",
                    "actor_id": "u-1",
                    "actor_email": "a***@example.com",
                    "actor_digest": digest,
                    "action": action,
                    "target_type": "endpoint",
                    "target_id": str(done + i),
                    "outcome": "success",
                    "ip": "127.0.0.1",
                    "request_id": None,
                    "details": {"n": done + i},
                    "prev_hash": prev,
                }
                row["hash"] = prev = link_hash(prev, SimpleNamespace(**row))  # type: ignore[arg-type]
                rows.append(row)
            await session.execute(AuditEvent.__table__.insert(), rows)  # type: ignore[attr-defined]
            head.seq, head.last_hash = seq, prev
        done += size


def warden(database_url: str, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """Run the `warden` CLI as a user would, against one database."""
    return subprocess.run(
        [sys.executable, "-m", "app.cli", *args],
        env={**os.environ, "DATABASE_URL": database_url, **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


async def own_database(tmp_path: Any) -> tuple[str, async_sessionmaker[AsyncSession]]:
    """A fresh migrated SQLite database: commands over every chain see only this test's."""
    from app.cli import run_migrations

    url = f"sqlite:///{tmp_path}/audit-cli.db"
    run_migrations(url)
    return url, async_sessionmaker(make_engine(url), expire_on_commit=False)


async def add_tenant(
    maker: async_sessionmaker[AsyncSession], slug: str, count: int, **fields: Any
) -> uuid.UUID:
    """A tenant row with `count` appended events (no sign-up events)."""
    from app.tenants.models import Tenant

    async with maker() as session, session.begin():
        tenant = Tenant(slug=slug, name=slug)
        session.add(tenant)
    if count:
        await append_many(maker, tenant.id, count, **fields)
    return tenant.id
