"""Every query on audit events and chain heads.

Reads of a tenant's chain run in a session scoped to that tenant (the structural filter of
`app.core.db` adds the tenant condition). The system chain (`tenant_id` NULL: events of no
tenant, CLI maintenance) has no tenant to scope to, so its statements opt out of the filter and
name `tenant_id IS NULL` themselves; `in_chain` is the one place that does it.
"""

from __future__ import annotations

import base64
import binascii
import json
import uuid
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any, TypeVar, cast

from sqlalchemy import Delete, Select, and_, delete, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlmodel import col

from app.audit.models import AuditChainHead, AuditEvent
from app.audit.schemas import PUBLIC_COLUMNS, AuditFilters, EventFields
from app.core.db import SKIP_TENANT_FILTER, set_session_tenant
from app.core.errors import Unprocessable
from app.core.logging import mask_email
from app.core.pagination import PageParams

EXPORT_CHUNK = 1000
ERASED_PREFIX = "erased:"
ERASURE_ACTION = "privacy.erased"

Stmt = TypeVar("Stmt", Select[Any], Delete)


def in_chain(stmt: Stmt, tenant_id: uuid.UUID | None) -> Stmt:
    """Restrict a statement to one chain; the session must be scoped to `tenant_id` if set."""
    if tenant_id is not None:
        return stmt  # the session's tenant filter scopes it
    # The system chain belongs to no tenant: opt out of the filter and say so explicitly.
    return stmt.where(col(AuditEvent.tenant_id).is_(None)).execution_options(
        **{SKIP_TENANT_FILTER: True}
    )


def filtered(filters: AuditFilters, stmt: Select[Any] | None = None) -> Select[Any]:
    """`select(AuditEvent)` (or `stmt`) with the filters applied (portable: SQLite, PostgreSQL)."""
    stmt = select(AuditEvent) if stmt is None else stmt
    if filters.actor is not None:
        if "@" in filters.actor:
            # Emails are stored masked; a full address is masked the same way to match.
            masked = mask_email(filters.actor.lower())
            stmt = stmt.where(col(AuditEvent.actor_email) == masked)
        else:
            stmt = stmt.where(col(AuditEvent.actor_id) == filters.actor)
    if filters.action is not None:
        stmt = stmt.where(col(AuditEvent.action) == filters.action)
    if filters.outcome is not None:
        stmt = stmt.where(col(AuditEvent.outcome) == filters.outcome)
    if filters.endpoint is not None:
        # Decisions, policies and credentials name the endpoint in details.endpoint; the
        # endpoint's own create/update/delete events name it in details.slug.
        details: Any = AuditEvent.details
        stmt = stmt.where(
            or_(
                details["endpoint"].as_string() == filters.endpoint,
                and_(
                    col(AuditEvent.target_type) == "endpoint",
                    details["slug"].as_string() == filters.endpoint,
                ),
            )
        )
    if filters.since is not None:
        stmt = stmt.where(col(AuditEvent.at) >= filters.since)
    if filters.until is not None:
        stmt = stmt.where(col(AuditEvent.at) < filters.until)
    return stmt


def encode_seq_cursor(seq: int) -> str:
    """An opaque cursor pointing after (older than) the event with this seq."""
    return base64.urlsafe_b64encode(json.dumps({"seq": seq}).encode()).decode().rstrip("=")


def decode_seq_cursor(cursor: str) -> int:
    """Parse a cursor; a malformed one is a 422, never a 500."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        seq = json.loads(raw)["seq"]
    except (ValueError, TypeError, KeyError, binascii.Error) as exc:
        raise Unprocessable("Invalid cursor.", code="invalid_cursor") from exc
    if not isinstance(seq, int) or isinstance(seq, bool) or seq < 1:
        raise Unprocessable("Invalid cursor.", code="invalid_cursor")
    return seq


async def list_page(
    session: AsyncSession, filters: AuditFilters, params: PageParams
) -> tuple[list[AuditEvent], str | None]:
    """A page of the tenant's events, newest first; seq is unique per tenant, so it is stable."""
    stmt = filtered(filters)
    if params.cursor:
        stmt = stmt.where(col(AuditEvent.seq) < decode_seq_cursor(params.cursor))
    stmt = stmt.order_by(col(AuditEvent.seq).desc()).limit(params.limit + 1)
    rows = list((await session.execute(stmt)).scalars())
    next_cursor = None
    if len(rows) > params.limit:
        rows = rows[: params.limit]
        next_cursor = encode_seq_cursor(rows[-1].seq)
    return rows, next_cursor


# Exports read the public columns as plain rows: several times faster than whole entities.
_PUBLIC = select(*(col(getattr(AuditEvent, name)) for name in PUBLIC_COLUMNS))


async def iter_chunks(
    sessionmaker: async_sessionmaker[AsyncSession],
    tenant_id: uuid.UUID,
    filters: AuditFilters,
    chunk: int = EXPORT_CHUNK,
) -> AsyncIterator[list[EventFields]]:
    """Every matching event of one tenant, oldest first, `chunk` rows at a time.

    Each chunk is read in its own short session: memory stays flat whatever the number of
    events, and SQLite (whose transactions take the write lock) is never held for a whole
    export. Events appended after the export started are not included."""
    async with sessionmaker() as session:
        set_session_tenant(session, tenant_id)
        upto = (await session.execute(select(func.max(AuditEvent.seq)))).scalar_one_or_none()
    if upto is None:
        return
    after = 0
    while True:
        async with sessionmaker() as session:
            set_session_tenant(session, tenant_id)
            stmt = (
                filtered(filters, _PUBLIC)
                .where(col(AuditEvent.seq) > after, col(AuditEvent.seq) <= upto)
                .order_by(col(AuditEvent.seq))
                .limit(chunk)
            )
            rows = cast(list[EventFields], list(await session.execute(stmt)))
        if not rows:
            return
        yield rows
        if len(rows) < chunk:
            return
        after = rows[-1].seq


async def get_head(session: AsyncSession, key: str) -> AuditChainHead | None:
    """A chain's head, read without locking (verification)."""
    stmt = (
        select(AuditChainHead)
        .where(col(AuditChainHead.chain) == key)
        .execution_options(populate_existing=True)
    )
    return (await session.execute(stmt)).scalar_one_or_none()


async def chain_keys(session: AsyncSession) -> list[str]:
    """Every chain that has a head (one per tenant with events, plus `system`)."""
    stmt = select(col(AuditChainHead.chain)).order_by(col(AuditChainHead.chain))
    return [str(key) for key in (await session.execute(stmt)).scalars()]


async def chain_segment(
    session: AsyncSession, tenant_id: uuid.UUID | None, after: int, upto: int, limit: int
) -> list[AuditEvent]:
    """Events of one chain with `after < seq <= upto`, in seq order."""
    stmt = in_chain(
        select(AuditEvent)
        .where(col(AuditEvent.seq) > after, col(AuditEvent.seq) <= upto)
        .order_by(col(AuditEvent.seq))
        .limit(limit),
        tenant_id,
    )
    return list((await session.execute(stmt)).scalars())


async def erasures(session: AsyncSession, tenant_id: uuid.UUID | None) -> list[AuditEvent]:
    """The chain's erasure events (each names its pseudonym as target and tallies its rows)."""
    stmt = in_chain(select(AuditEvent).where(col(AuditEvent.action) == ERASURE_ACTION), tenant_id)
    return list((await session.execute(stmt)).scalars())


async def actor_seqs(
    session: AsyncSession, actor_id: str, chunk: int = 10_000
) -> AsyncIterator[list[int]]:
    """The seqs of the tenant's events by `actor_id`, ascending, `chunk` at a time."""
    after = 0
    while True:
        stmt = (
            select(col(AuditEvent.seq))
            .where(col(AuditEvent.actor_id) == actor_id, col(AuditEvent.seq) > after)
            .order_by(col(AuditEvent.seq))
            .limit(chunk)
        )
        seqs = [int(seq) for seq in (await session.execute(stmt)).scalars()]
        if not seqs:
            return
        yield seqs
        after = seqs[-1]


async def first_seq_since(
    session: AsyncSession, tenant_id: uuid.UUID | None, after: int, cutoff: datetime
) -> int | None:
    """The lowest seq above `after` whose event is not older than `cutoff`."""
    stmt = in_chain(
        select(func.min(AuditEvent.seq)).where(
            col(AuditEvent.seq) > after, col(AuditEvent.at) >= cutoff
        ),
        tenant_id,
    )
    value = (await session.execute(stmt)).scalar_one_or_none()
    return int(value) if value is not None else None


async def count_upto(session: AsyncSession, tenant_id: uuid.UUID | None, seq: int) -> int:
    """How many events of the chain have `seq <= seq`."""
    stmt = in_chain(
        select(func.count()).select_from(AuditEvent).where(col(AuditEvent.seq) <= seq), tenant_id
    )
    return int((await session.execute(stmt)).scalar_one())


async def hash_at(session: AsyncSession, tenant_id: uuid.UUID | None, seq: int) -> str | None:
    """The stored hash of the event at `seq`, if that event exists."""
    stmt = in_chain(select(col(AuditEvent.hash)).where(col(AuditEvent.seq) == seq), tenant_id)
    value = (await session.execute(stmt)).scalar_one_or_none()
    return str(value) if value is not None else None


async def delete_upto(session: AsyncSession, tenant_id: uuid.UUID | None, seq: int) -> int:
    """Delete the chain's events with `seq <= seq`; returns how many went."""
    stmt = in_chain(delete(AuditEvent).where(col(AuditEvent.seq) <= seq), tenant_id)
    result = await session.execute(stmt.execution_options(synchronize_session=False))
    return int(getattr(result, "rowcount", 0) or 0)


async def pseudonymise_actor(session: AsyncSession, actor_id: str, alias: str) -> int:
    """Erasure: the tenant's events by `actor_id` now name `alias`, with no email and no ip.

    `actor_digest` (hashed into the chain) is left alone: it still commits to the original
    values, so the chain verifies, and `verify` accepts the alias because an erasure event
    introduced it."""
    stmt = (
        update(AuditEvent)
        .where(col(AuditEvent.actor_id) == actor_id)
        .values(actor_id=alias, actor_email=None, ip=None)
        .execution_options(synchronize_session=False)
    )
    result = await session.execute(stmt)
    return int(getattr(result, "rowcount", 0) or 0)


async def outcomes_since(
    session: AsyncSession, actions: tuple[str, ...], since: datetime, limit: int
) -> list[tuple[datetime, str, Any]]:
    """(at, outcome, details) of the tenant's newest events of `actions` since `since`."""
    stmt = (
        select(col(AuditEvent.at), col(AuditEvent.outcome), col(AuditEvent.details))
        .where(col(AuditEvent.action).in_(actions), col(AuditEvent.at) >= since)
        .order_by(col(AuditEvent.seq).desc())
        .limit(limit)
    )
    return [(row[0], row[1], row[2]) for row in (await session.execute(stmt)).all()]
