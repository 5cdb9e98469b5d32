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
import functools
import hashlib
import itertools
import json
import logging
import operator
import os
import random
import re
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

import structlog
from sqlalchemy import delete, insert, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession, async_sessionmaker
from sqlmodel import col

from app.audit import repository
from app.audit.models import AuditChainHead, AuditEvent
from app.audit.schemas import AuditFilters, ExportFormat, csv_chunk, csv_header, jsonl_chunk
from app.core.context import current_request
from app.core.db import SKIP_TENANT_FILTER, set_session_tenant
from app.core.errors import ServiceUnavailable
from app.core.identity import SYSTEM, Actor
from app.core.logging import mask_email
from app.core.pagination import PageParams
from app.core.types import utcnow

log = structlog.get_logger("warden.audit")
_stdlib_log = logging.getLogger("warden.audit")
GENESIS = "0" * 64
SYSTEM_CHAIN = "system"
MAX_BATCH = 5_000  # events per writer transaction
MAX_PENDING = 50_000  # queued events beyond which submitters wait (`AuditWriter.room`)
ROOM_TIMEOUT_SECONDS = 10.0  # a request waits this long for room, then gets 503
# Events linked, encoded or sent between two yields to the event loop (well under a
# millisecond of work): a flush must not hold the requests in flight for longer than that.
YIELD_EVERY = 32


@dataclass(slots=True)  # one per audited request
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
    # Fixed when the event is created: a retried write is recognised by it (never re-appended).
    id: uuid.UUID = field(default_factory=lambda: time_ordered_id())


def chain_key(tenant_id: uuid.UUID | None) -> str:
    """The chain a tenant's events belong to."""
    return str(tenant_id) if tenant_id else SYSTEM_CHAIN


def by_chain(events: Iterable[EventData]) -> dict[str, list[EventData]]:
    """Events grouped by chain, each group in queue order (grouped by tenant first: a batch
    holds thousands of events of a few tenants)."""
    by_tenant: dict[uuid.UUID | None, list[EventData]] = {}
    for data in events:
        group = by_tenant.get(data.tenant_id)
        if group is None:
            group = by_tenant[data.tenant_id] = []
        group.append(data)
    chains: dict[str, list[EventData]] = {}
    for tenant_id, group in by_tenant.items():
        chains.setdefault(chain_key(tenant_id), []).extend(group)
    return chains


def canonical_event(event: AuditEvent | EventRow, details_json: str | None = None) -> bytes:
    """The bytes that are hashed: every field but the hashes, in a fixed JSON form:
    `json.dumps(body, sort_keys=True, separators=(",", ":"), default=str)` of the fields below,
    written out one by one (keys in sorted order) because it is computed for every event. The
    leading three fields (one actor doing one action) and the trailing three (one target of
    one tenant) repeat from event to event: they are written once per value. `details_json`:
    `canonical_details(event.details)`, when the caller has it already."""
    return (
        _canonical_head(event.action, event.actor_digest, event.actor_type)
        + _CANONICAL_MIDDLE.format(
            _json(event.at.isoformat(timespec="microseconds")),
            canonical_details(event.details) if details_json is None else details_json,
            _json(str(event.id)),
            _json(event.outcome),
            _json(event.request_id),
            _json(event.seq),
        )
        + _canonical_tail(event.target_id, event.target_type, event.tenant_id)
    ).encode()


_CANONICAL_MIDDLE = '"at":{},"details":{},"id":{},"outcome":{},"request_id":{},"seq":{},'


@functools.lru_cache(maxsize=4_096)  # pure functions of their arguments: memos, not state
def _canonical_head(action: str, actor_digest: str, actor_type: str) -> str:
    return f'{{"action":{_json(action)},"actor_digest":{_json(actor_digest)},"actor_type":{_json(actor_type)},'  # noqa: E501


@functools.lru_cache(maxsize=4_096)
def _canonical_tail(
    target_id: str | None, target_type: str | None, tenant_id: uuid.UUID | None
) -> str:
    tenant = str(tenant_id) if tenant_id else None
    return f'"target_id":{_json(target_id)},"target_type":{_json(target_type)},"tenant_id":{_json(tenant)}}}'  # noqa: E501


def canonical_details(details: Mapping[str, Any]) -> str:
    """An event's details as the chain hashes them (also valid JSON for the details column)."""
    return _CANONICAL_JSON.encode(details)


_CANONICAL_JSON = json.JSONEncoder(sort_keys=True, separators=(",", ":"), default=str)
_json_string = json.encoder.encode_basestring_ascii  # what the encoder writes for a str


def _json(value: object) -> str:
    """One value as `_CANONICAL_JSON` writes it (strings, ints and None without the encoder)."""
    if value is None:
        return "null"
    if type(value) is str:
        return _json_string(value)
    if type(value) is int:
        return int.__repr__(value)
    return _CANONICAL_JSON.encode(value)


def actor_digest(actor_id: str | None, actor_email: str | None, ip: str | None) -> str:
    """The commitment to the personal fields that the chain hashes (see AuditEvent)."""
    material = json.dumps([actor_id, actor_email, ip], separators=(",", ":"))
    return hashlib.sha256(material.encode()).hexdigest()


@functools.lru_cache(maxsize=10_000)  # a pure function of its arguments: a memo, not state
def _cached_actor_digest(actor_id: str | None, actor_email: str | None, ip: str | None) -> str:
    return actor_digest(actor_id, actor_email, ip)


_PLAIN = (str, int, bool, type(None))


def _json_ready(details: dict[str, Any]) -> dict[str, Any]:
    """`details` as it reads back from the JSON column (what the chain hashes): flat details
    of plain values already are; anything else goes through JSON once."""
    if all(type(key) is str and type(value) in _PLAIN for key, value in details.items()):
        return dict(details)
    loaded: dict[str, Any] = json.loads(json.dumps(details, default=str))
    return loaded


def link_hash(prev_hash: str, event: AuditEvent | EventRow, details_json: str | None = None) -> str:
    """`SHA-256(prev_hash || canonical event)`."""
    return hashlib.sha256(prev_hash.encode() + canonical_event(event, details_json)).hexdigest()


@dataclass(slots=True)
class EventRow:
    """An audit row as written: a plain object (a SQLModel instance costs ~30 µs to build,
    which the batched writer would pay per decision)."""

    id: uuid.UUID
    tenant_id: uuid.UUID | None
    seq: int
    at: datetime
    actor_type: str
    actor_id: str | None
    actor_email: str | None
    actor_digest: str
    action: str
    target_type: str | None
    target_id: str | None
    outcome: str
    ip: str | None
    request_id: str | None
    details: dict[str, Any]
    prev_hash: str
    hash: str


EVENT_COLUMNS = tuple(EventRow.__dataclass_fields__)


@dataclass(frozen=True)
class _DriverInsert:
    """`INSERT INTO audit_events` compiled once per dialect, with the columns' own bind
    processors: a batch goes to the driver without SQLAlchemy's per-row bookkeeping, which had
    cost more CPU than the decisions being audited.

    Positional (`?`, SQLite) drivers get multi-row statements of `ROWS_PER_STATEMENT` rows: the
    sqlite3 module's `executemany` takes the GIL back after every row, and aiosqlite runs it in a
    thread that a busy event loop starves (a batch of thousands then took seconds). PostgreSQL
    gets `COPY … FROM STDIN` in the same transaction: psycopg's pipelined `executemany` cost the
    event loop about 3x as much per row (a statement and a result per row)."""

    ROWS_PER_STATEMENT = 500  # 17 columns: far below SQLite's 32,766 variables

    head: str  # `INSERT INTO audit_events (...) VALUES `
    group: str  # `(?, ?, ...)` for positional drivers
    sql: str
    names: tuple[str, ...]
    processors: tuple[Callable[[Any], Any] | None, ...]
    positional: bool

    @classmethod
    def compile(cls, dialect: Dialect) -> _DriverInsert:
        table = AuditEvent.__table__  # type: ignore[attr-defined]
        compiled = insert(table).compile(dialect=dialect, column_keys=list(EVENT_COLUMNS))
        positional = bool(compiled.positional)
        names = tuple(compiled.positiontup or ()) if positional else EVENT_COLUMNS
        if set(names) != set(EVENT_COLUMNS):
            raise RuntimeError(f"audit insert binds {names}, expected {EVENT_COLUMNS}")
        processors = tuple(
            table.c[name].type.dialect_impl(dialect).bind_processor(dialect) for name in names
        )
        head, _, group = compiled.string.partition(" VALUES ")
        return cls(f"{head} VALUES ", group, compiled.string, names, processors, positional)

    async def _values(
        self, rows: Sequence[EventRow], details_texts: Sequence[str]
    ) -> list[tuple[Any, ...]]:
        """The driver's values of each row. The details column gets the JSON text the chain
        hashed (`canonical_details`) instead of a second encoding by its bind processor."""
        read = operator.attrgetter(*self.names)
        details = self.names.index("details")
        convert = [
            (i, proc) for i, proc in enumerate(self.processors) if proc is not None and i != details
        ]
        values = []
        for count, (row, text) in enumerate(zip(rows, details_texts, strict=True), 1):
            if count % YIELD_EVERY == 0:
                await asyncio.sleep(0)
            raw: list[Any] = list(read(row))
            for i, proc in convert:
                raw[i] = proc(raw[i])
            raw[details] = text
            values.append(tuple(raw))
        return values

    async def execute(
        self, connection: AsyncConnection, rows: Sequence[EventRow], details_texts: Sequence[str]
    ) -> None:
        """Insert `rows` in as few driver calls as the driver allows (`details_texts`: each
        row's `canonical_details`)."""
        values = await self._values(rows, details_texts)
        if connection.dialect.name == "postgresql":
            await self._copy(connection, values)
            return
        if not self.positional:
            named = [dict(zip(self.names, row, strict=True)) for row in values]
            await connection.exec_driver_sql(self.sql, named)
            return
        step = self.ROWS_PER_STATEMENT
        for start in range(0, len(values), step):
            chunk = values[start : start + step]
            sql = self.head + ", ".join([self.group] * len(chunk))
            flat = tuple(itertools.chain.from_iterable(chunk))
            await connection.exec_driver_sql(sql, flat)

    async def _copy(self, connection: AsyncConnection, values: list[tuple[Any, ...]]) -> None:
        """`COPY audit_events (…) FROM STDIN` on the session's own psycopg connection (so in its
        transaction, under its deadlines); a refused row fails the whole COPY, raised as
        SQLAlchemy's `IntegrityError` like any other insert."""
        import psycopg

        raw = await connection.get_raw_connection()
        driver: psycopg.AsyncConnection[Any] = raw.driver_connection  # type: ignore[assignment]
        columns = ", ".join(self.names)
        sql = f"COPY audit_events ({columns}) FROM STDIN"
        try:
            async with driver.cursor() as cursor, cursor.copy(sql) as copy:
                for count, row in enumerate(values, 1):
                    if count % YIELD_EVERY == 0:
                        await asyncio.sleep(0)
                    await copy.write_row(row)
        except psycopg.IntegrityError as exc:
            raise IntegrityError(sql, None, exc) from exc


_DRIVER_INSERTS: dict[str, _DriverInsert] = {}


def _driver_insert(dialect: Dialect) -> _DriverInsert:
    statement = _DRIVER_INSERTS.get(dialect.name)
    if statement is None:
        statement = _DRIVER_INSERTS[dialect.name] = _DriverInsert.compile(dialect)
    return statement


def time_ordered_id() -> uuid.UUID:
    """A UUIDv7 (RFC 9562: 48-bit millisecond time, then randomness): audit rows arrive in
    time order, so their primary-key index grows at its end instead of splitting random pages."""
    value = (time.time_ns() // 1_000_000) << 80 | _ids.getrandbits(80) & _RAND_BITS
    return uuid.UUID(int=value | _V7_BITS)


_RAND_BITS = (1 << 80) - 1 & ~(0xF << 76) & ~(0x3 << 62)
_V7_BITS = 0x7 << 76 | 0x2 << 62
# Ids must be unique, not secret: a generator seeded from the OS (reseeded in forked children,
# which would otherwise repeat their parent's sequence) instead of a system call per event.
_ids = random.Random(os.urandom(32))  # noqa: S311
os.register_at_fork(after_in_child=lambda: _ids.seed(os.urandom(32)))


def _event_from(data: EventData) -> EventRow:
    ctx = current_request()
    email = mask_email(data.actor.email)
    ip = data.ip if data.ip is not None else ctx.ip
    return EventRow(
        id=data.id,
        tenant_id=data.tenant_id,
        seq=0,
        at=data.at,
        actor_type=data.actor.type,
        actor_id=data.actor.id,
        actor_email=email,
        actor_digest=_cached_actor_digest(data.actor.id, email, ip),
        action=data.action,
        target_type=data.target_type,
        target_id=data.target_id,
        outcome=data.outcome,
        ip=ip,
        request_id=data.request_id if data.request_id is not None else ctx.request_id,
        details=_json_ready(data.details),
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


async def append_events(
    session: AsyncSession, events: Sequence[EventData], *, skip_written: bool = False
) -> list[EventRow]:
    """Link events into their chains within the session's transaction.

    `skip_written`: the events may already be in the trail (an earlier transaction's outcome is
    unknown: its COMMIT may have reached the database and only the answer been lost). Once the
    chain heads are locked, that transaction has either committed or rolled back; the events
    found by id are left out, the others are linked after the current head."""
    rows: list[EventRow] = []
    details_texts: list[str] = []  # each row's details as hashed, written as they are
    chains = by_chain(events)
    previous = session.info.get(SKIP_TENANT_FILTER)
    session.info[SKIP_TENANT_FILTER] = True  # the writer may write many tenants' chains
    try:
        # Fixed order: two writers never lock heads crosswise.
        heads = [(key, await _lock_head(session, key)) for key in sorted(chains)]
        written = await _written_ids(session, events) if skip_written else set()
        for key, head in heads:
            # Linked in locals: every attribute set on the ORM head costs microseconds.
            seq, last_hash = head.seq, head.last_hash
            for count, data in enumerate(chains[key], 1):
                if count % YIELD_EVERY == 0:
                    await asyncio.sleep(0)  # a big batch must not stall the requests in flight
                if data.id in written:
                    continue
                event = _event_from(data)
                seq += 1
                event.seq = seq
                event.prev_hash = last_hash
                details = canonical_details(event.details)
                last_hash = event.hash = link_hash(last_hash, event, details)
                rows.append(event)
                details_texts.append(details)
            head.seq, head.last_hash = seq, last_hash
            session.add(head)
        await session.flush()
        if rows:
            connection = await session.connection()
            await _driver_insert(connection.dialect).execute(connection, rows, details_texts)
    finally:
        session.info[SKIP_TENANT_FILTER] = previous
    return rows


async def _written_ids(session: AsyncSession, events: Sequence[EventData]) -> set[uuid.UUID]:
    """Which of these events' ids are already in the trail."""
    ids = [data.id for data in events]
    found: set[uuid.UUID] = set()
    for start in range(0, len(ids), 500):  # bounded IN lists (SQLite's variable limit)
        stmt = (
            select(col(AuditEvent.id))
            .where(col(AuditEvent.id).in_(ids[start : start + 500]))
            .execution_options(**{SKIP_TENANT_FILTER: True})  # ids of many tenants' chains
        )
        found.update((await session.execute(stmt)).scalars())
    return found


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
) -> EventRow:
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
        self._room = asyncio.Event()
        # Ids of queued events whose last write ended without a known outcome (the COMMIT may
        # have been applied and only its answer lost): their next write skips what is written.
        self._unsure: set[uuid.UUID] = set()

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
        if _stdlib_log.isEnabledFor(logging.INFO):  # decisions are hot: skip a filtered line early
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
        """Write everything queued so far, `MAX_BATCH` events a transaction; returns how many
        events were written."""
        written = 0
        async with self._flush_lock:
            while self.queue:
                batch, self.queue = self.queue[:MAX_BATCH], self.queue[MAX_BATCH:]
                unsure = bool(self._unsure) and any(e.id in self._unsure for e in batch)
                try:
                    try:
                        await self._write(batch, unsure)
                    except IntegrityError:  # refused by a constraint: nothing was written
                        await self._write_chain_by_chain(batch, unsure)
                except BaseException:
                    # Lost connection, cancelled, crashed mid-COMMIT: maybe written, maybe not.
                    self._unsure.update(e.id for e in batch)
                    self.queue = batch + self.queue
                    raise
                if unsure:
                    self._unsure.difference_update(e.id for e in batch)
                written += len(batch)
                if len(self.queue) < MAX_PENDING:
                    self._room.set()
        return written

    async def room(self) -> None:
        """Back-pressure: wait while `MAX_PENDING` events are queued (a database slower than
        the request rate must not grow the queue without bound; events are never dropped)."""
        if len(self.queue) < MAX_PENDING:
            return
        deadline = asyncio.get_running_loop().time() + ROOM_TIMEOUT_SECONDS
        while len(self.queue) >= MAX_PENDING and not self._stopping:
            self._room.clear()
            self._wake.set()
            remaining = deadline - asyncio.get_running_loop().time()
            try:
                await asyncio.wait_for(self._room.wait(), timeout=max(remaining, 0))
            except TimeoutError:
                raise ServiceUnavailable(
                    "The audit trail cannot keep up; try again shortly.",
                    code="audit_backlog",
                    headers={"Retry-After": "5"},
                ) from None

    async def _write(self, events: list[EventData], unsure: bool = False) -> None:
        async with self.sessionmaker() as session, session.begin():
            await append_events(session, events, skip_written=unsure)

    async def _write_chain_by_chain(self, batch: list[EventData], unsure: bool = False) -> None:
        """A tenant deleted after its events were queued fails the whole batch (its chain is
        gone): write each chain on its own and move a vanished tenant's events to the system
        chain, so one deletion never blocks every later event."""
        for events in by_chain(batch).values():
            try:
                await self._write(events, unsure)
            except IntegrityError:
                moved = [
                    replace(e, tenant_id=None, details={**e.details, "tenant_id": str(e.tenant_id)})
                    for e in events
                ]
                log.warning("audit_events_of_deleted_tenant", count=len(moved))
                await self._write(moved, unsure)

    async def stop(self) -> None:
        """Stop the flusher and write what is left."""
        self._stopping = True
        self._wake.set()
        self._room.set()
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


@dataclass
class SeqTally:
    """A count and SHA-256 over seqs taken in ascending order.

    An erasure records the tally of the rows it pseudonymises (`privacy.erased` details);
    `verify` recomputes it, so no row can later be passed off as an erased user's."""

    count: int = 0
    first: int | None = None
    _hash: Any = field(default_factory=hashlib.sha256, repr=False)

    def add(self, seq: int) -> None:
        """Count one more seq (callers go in ascending order)."""
        self.count += 1
        self.first = seq if self.first is None else self.first
        self._hash.update(f"{seq},".encode())

    @property
    def digest(self) -> str:
        """SHA-256 over the seqs added so far."""
        return str(self._hash.hexdigest())

    def as_details(self) -> dict[str, Any]:
        """What the erasure event records."""
        return {"events": self.count, "first_seq": self.first, "seqs": self.digest}


class UnknownTenant(LookupError):
    """A maintenance command named a tenant that does not exist."""


class ChainBroken(RuntimeError):
    """A maintenance operation refused to touch a chain that does not verify."""


async def resolve_chains(
    sessionmaker: async_sessionmaker[AsyncSession],
    slugs: Mapping[str, str],
    slug: str | None = None,
) -> list[tuple[str, uuid.UUID | None]]:
    """(display name, tenant id or None for the system chain) of one tenant's or every chain;
    `slugs` maps tenant ids (as text) to slugs, as the tenants domain tells them."""
    async with sessionmaker() as session:
        keys = await repository.chain_keys(session)
    if slug is not None:
        by_slug = {v: k for k, v in slugs.items()}
        if slug not in by_slug:
            raise UnknownTenant(slug)
        return [(slug, uuid.UUID(by_slug[slug]))]
    return [
        (SYSTEM_CHAIN, None) if key == SYSTEM_CHAIN else (slugs.get(key, key), uuid.UUID(key))
        for key in keys
    ]


async def prune_chain(
    session: AsyncSession, tenant_id: uuid.UUID | None, cutoff: datetime, actor: Actor = SYSTEM
) -> int:
    """Delete a chain's events older than `cutoff` and move its checkpoint past them.

    Runs in the caller's transaction with the head locked, so appends wait and the checkpoint
    and the deletion commit together. Only a seq prefix is deleted: a batched event can carry an
    earlier `at` than its predecessor, so the prefix stops at the first event not yet due.
    The prune is recorded (`audit.pruned`) as the chain's next event."""
    if tenant_id is not None:
        set_session_tenant(session, tenant_id)
    head = await _lock_head(session, chain_key(tenant_id))
    first_kept = await repository.first_seq_since(session, tenant_id, head.base_seq, cutoff)
    through = head.seq if first_kept is None else first_kept - 1
    if through <= head.base_seq:
        return 0
    last_hash = await repository.hash_at(session, tenant_id, through)
    expected = through - head.base_seq
    if last_hash is None or await repository.count_upto(session, tenant_id, through) != expected:
        # Rows are already missing: pruning would erase the evidence `verify` reports.
        raise ChainBroken(f"chain {chain_key(tenant_id)} has missing events; run verify")
    deleted = await repository.delete_upto(session, tenant_id, through)
    head.base_seq = through
    head.base_hash = last_hash
    session.add(head)
    await session.flush()  # before record() re-reads the head row
    await record(
        session,
        tenant_id=tenant_id,
        action="audit.pruned",
        actor=actor,
        target_type="audit_chain",
        target_id=chain_key(tenant_id),
        details={"count": deleted, "through_seq": through, "cutoff": cutoff.isoformat()},
    )
    return deleted


@dataclass(frozen=True)
class PruneResult:
    """What a prune did to one chain (`refused` names why it left a chain alone)."""

    name: str
    pruned: int
    refused: str | None = None


_AGE = re.compile(r"\A(\d{1,6})([dhms])\Z")
_AGE_UNITS = {"d": "days", "h": "hours", "m": "minutes", "s": "seconds"}


def parse_age(text: str) -> timedelta:
    """`90d`, `12h`, `30m`, `45s` → a timedelta."""
    match = _AGE.match(text.strip())
    if match is None:
        raise ValueError(f"invalid age {text!r}: use a number and d, h, m or s (e.g. 90d)")
    return timedelta(**{_AGE_UNITS[match.group(2)]: int(match.group(1))})


async def prune_chains(
    sessionmaker: async_sessionmaker[AsyncSession],
    older_than: timedelta,
    slugs: Mapping[str, str],
    slug: str | None = None,
) -> list[PruneResult]:
    """Prune one tenant's chain or every chain, each in its own transaction."""
    cutoff = utcnow() - older_than
    done = []
    for name, tenant_id in await resolve_chains(sessionmaker, slugs, slug):
        try:
            async with sessionmaker() as session, session.begin():
                done.append(PruneResult(name, await prune_chain(session, tenant_id, cutoff)))
        except ChainBroken as exc:
            done.append(PruneResult(name, 0, str(exc)))
    return done


async def forget_chain(session: AsyncSession, tenant_id: uuid.UUID) -> None:
    """Drop a deleted tenant's chain head (its events went with the tenant's rows)."""
    await session.execute(
        delete(AuditChainHead).where(AuditChainHead.chain == chain_key(tenant_id))  # type: ignore[arg-type]
    )


async def list_events(
    session: AsyncSession, filters: AuditFilters, params: PageParams
) -> tuple[list[AuditEvent], str | None]:
    """A page of the session tenant's events, newest first."""
    return await repository.list_page(session, filters, params)


async def export_events(
    session: AsyncSession,
    sessionmaker: async_sessionmaker[AsyncSession],
    *,
    tenant_id: uuid.UUID,
    actor: Actor,
    filters: AuditFilters,
    fmt: ExportFormat,
) -> AsyncIterator[str]:
    """Record the export in the caller's transaction; return the stream of its content.

    The stream reads through its own short sessions (`repository.iter_chunks`): the request's
    session is committed and closed before the response body is sent."""
    await record(
        session,
        tenant_id=tenant_id,
        action="audit.exported",
        actor=actor,
        details={"format": fmt, "filters": filters.describe()},
    )
    return _export_stream(sessionmaker, tenant_id, filters, fmt)


async def _export_stream(
    sessionmaker: async_sessionmaker[AsyncSession],
    tenant_id: uuid.UUID,
    filters: AuditFilters,
    fmt: ExportFormat,
) -> AsyncIterator[str]:
    if fmt == "csv":
        yield csv_header()
    async for rows in repository.iter_chunks(sessionmaker, tenant_id, filters):
        yield csv_chunk(rows) if fmt == "csv" else jsonl_chunk(rows)


async def outcomes_since(
    session: AsyncSession, actions: tuple[str, ...], since: datetime, limit: int = 20_000
) -> list[tuple[datetime, str, Any]]:
    """(at, outcome, details) of the session tenant's newest events of `actions` since `since`
    (at most `limit`, for summaries such as the console's overview)."""
    return await repository.outcomes_since(session, actions, since, limit)


async def get_event(session: AsyncSession, event_id: uuid.UUID) -> AuditEvent | None:
    """One of the session tenant's events."""
    return await session.get(AuditEvent, event_id)
