"""Database engine, the per-request session and the structural tenant filter.

Every mapped class with a `tenant_id` column is tenant-owned. A `do_orm_execute` hook adds
`tenant_id == <session tenant>` to every ORM query against such classes, and a `before_flush`
hook stamps and checks `tenant_id` on writes. A session that has no tenant set refuses to
query tenant-owned rows unless the statement opts out with `skip_tenant_filter=True` (used only
by the few cross-tenant lookups: credential resolution, CLI maintenance).
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from functools import lru_cache
from typing import Any, cast

import psycopg
import psycopg.connection_async
import psycopg.errors
from sqlalchemy import MetaData, event
from sqlalchemy.engine import URL, Engine, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, create_async_engine
from sqlalchemy.orm import ORMExecuteState, Session, with_loader_criteria
from sqlalchemy.sql.elements import ClauseElement
from sqlalchemy.sql.util import find_tables
from sqlmodel import SQLModel

from app.core.config import Settings, get_settings

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}
SQLModel.metadata.naming_convention = NAMING_CONVENTION
metadata: MetaData = SQLModel.metadata

TENANT_KEY = "tenant_id"
SKIP_TENANT_FILTER = "skip_tenant_filter"


class TenantScopeError(RuntimeError):
    """A tenant-owned table was queried or written without a tenant scope."""


def async_url(raw: str) -> URL:
    """Accept the URL forms users write and pick the async driver ourselves."""
    if raw.startswith("postgres://"):
        raw = "postgresql://" + raw[len("postgres://") :]
    url = make_url(raw)
    backend = url.get_backend_name()
    if backend == "sqlite":
        return url.set(drivername="sqlite+aiosqlite")
    if backend == "postgresql":
        return url.set(drivername="postgresql+psycopg")
    raise ValueError(f"unsupported database: {backend}")


def sync_url(raw: str) -> URL:
    """The same database with a synchronous driver (alembic, CLI maintenance)."""
    url = async_url(raw)
    if url.get_backend_name() == "sqlite":
        return url.set(drivername="sqlite")
    return url


def _sqlite_pragmas(busy_timeout_ms: int) -> Callable[[Any, Any], None]:
    def install(dbapi_connection: Any, _record: Any) -> None:
        # pysqlite's own transaction handling defers BEGIN; we issue it ourselves (see below).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={busy_timeout_ms:d}")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    return install


def _sqlite_begin(conn: Any) -> None:
    # IMMEDIATE takes the write lock up front: two deferred transactions that both read and then
    # write would otherwise fail with SQLITE_BUSY instead of waiting their turn.
    conn.exec_driver_sql("BEGIN IMMEDIATE")


def configure_sqlite(engine: Engine, busy_timeout_seconds: float = 30.0) -> None:
    """Install the pragmas and locking discipline SQLite needs for concurrent writers."""
    event.listen(engine, "connect", _sqlite_pragmas(int(busy_timeout_seconds * 1000)))
    event.listen(engine, "begin", _sqlite_begin)


# The client's own deadline beyond the server's statement timeout: a server that is alive
# cancels the statement itself; one that cannot answer (frozen, partitioned) is given up on.
CLIENT_GRACE_SECONDS = 1.0


_WAIT_INTERVAL: float = psycopg.connection_async._WAIT_INTERVAL


class BoundedConnection(psycopg.AsyncConnection[Any]):
    """A psycopg connection whose every round trip (queries, commit, rollback, the pool's
    ping) gives up after `io_timeout` seconds. `statement_timeout` only works while the server
    can run; a frozen server (or a silent network) would otherwise hold the request, the pooled
    connection and the pool slot forever. A connection that timed out is closed: its state is
    unknown, and a closed connection tells the pool to discard it."""

    io_timeout: float | None = None

    async def wait(
        self,
        gen: Any,
        interval: float = _WAIT_INTERVAL,
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> Any:
        try:
            return await super().wait(gen, interval, timeout or self.io_timeout)
        except psycopg.errors._WaitTimeout:
            self.pgconn.finish()
            raise psycopg.OperationalError("the database did not answer in time") from None


def _bounded_connect(io_timeout: float) -> Callable[..., Awaitable[BoundedConnection]]:
    async def connect(*args: Any, **kwargs: Any) -> BoundedConnection:
        conn = await BoundedConnection.connect(*args, **kwargs)
        conn.io_timeout = io_timeout
        return conn

    return connect


def make_engine(database_url: str, settings: Settings | None = None) -> AsyncEngine:
    """Create the async engine for a database URL, every database call bounded by the
    settings' timeouts (connect, statement, pool wait)."""
    settings = settings or get_settings()
    url = async_url(database_url)
    if url.get_backend_name() == "sqlite":
        busy = settings.database_busy_timeout_seconds
        engine = create_async_engine(url, connect_args={"timeout": busy})
        configure_sqlite(engine.sync_engine, busy)
        return engine
    statement_ms = max(1, round(settings.database_statement_timeout_seconds * 1000))
    return create_async_engine(
        url,
        pool_size=10,
        max_overflow=20,
        pool_pre_ping=True,
        pool_timeout=settings.database_pool_timeout_seconds,
        connect_args={
            "connect_timeout": settings.database_connect_timeout_seconds,
            "options": f"-c statement_timeout={statement_ms}",
            "async_creator_fn": _bounded_connect(
                settings.database_statement_timeout_seconds + CLIENT_GRACE_SECONDS
            ),
        },
    )


POST_COMMIT = "post_commit"


def after_commit(session: AsyncSession | Session, callback: Callable[[], Awaitable[None]]) -> None:
    """Run `callback` once the request's transaction has committed (e.g. cache invalidation)."""
    session.info.setdefault(POST_COMMIT, []).append(callback)


async def run_post_commit(session: AsyncSession) -> None:
    """Run and forget the callbacks registered with `after_commit`."""
    for callback in session.info.pop(POST_COMMIT, []):
        await callback()


def set_session_tenant(session: AsyncSession | Session, tenant_id: uuid.UUID | None) -> None:
    """Scope every later query and write of this session to one tenant."""
    session.info[TENANT_KEY] = tenant_id


def session_tenant(session: AsyncSession | Session) -> uuid.UUID | None:
    """The tenant this session is scoped to, if any."""
    value = session.info.get(TENANT_KEY)
    return value if isinstance(value, uuid.UUID) else None


@lru_cache
def tenant_owned_classes() -> tuple[type[Any], ...]:
    """Every mapped class that carries a tenant_id column."""
    classes = []
    for mapper in SQLModel._sa_registry.mappers:
        if TENANT_KEY in mapper.columns:
            classes.append(mapper.class_)
    return tuple(classes)


@lru_cache
def tenant_owned_tables() -> frozenset[str]:
    """Names of every table with a tenant_id column."""
    return frozenset(t.name for t in metadata.tables.values() if TENANT_KEY in t.c)


@event.listens_for(Session, "do_orm_execute")
def _tenant_filter(state: ORMExecuteState) -> None:
    if not (state.is_select or state.is_update or state.is_delete):
        return
    if state.execution_options.get(SKIP_TENANT_FILTER) or state.is_column_load:
        return
    if state.is_relationship_load:
        return
    # Every table anywhere in the statement (FROM, joins, subqueries, UPDATE/DELETE targets),
    # not just the selected entities: `select(func.count()).select_from(User)` counts too.
    statement = cast(ClauseElement, state.statement)
    touched = {t.name for t in find_tables(statement, include_joins=True, include_crud=True)}
    owned = touched & tenant_owned_tables()
    if not owned:
        return
    tid = state.session.info.get(TENANT_KEY)
    if tid is None:
        raise TenantScopeError(f"query on tenant-owned {', '.join(sorted(owned))} without a scope")
    for cls in tenant_owned_classes():
        state.statement = state.statement.options(
            with_loader_criteria(cls, lambda c: c.tenant_id == tid, include_aliases=True)
        )


@event.listens_for(Session, "before_flush")
def _stamp_tenant(session: Session, _ctx: Any, _instances: Any) -> None:
    tid = session.info.get(TENANT_KEY)
    for obj in list(session.new) + list(session.dirty) + list(session.deleted):
        if not hasattr(obj, TENANT_KEY):
            continue
        if session.info.get(SKIP_TENANT_FILTER):
            continue
        current = getattr(obj, TENANT_KEY)
        if current is None and obj in session.new and tid is not None:
            setattr(obj, TENANT_KEY, tid)
            continue
        if tid is None:
            raise TenantScopeError(f"write to {type(obj).__name__} without a tenant scope")
        if current != tid:
            raise TenantScopeError(f"write to {type(obj).__name__} of another tenant")
