"""A batch whose COMMIT reached the database but whose answer was lost is not written twice.

The PostgreSQL test puts a real TCP proxy between the writer and the database: it forwards the
writer's `COMMIT`, lets the server apply it, then cuts both sockets without relaying the reply
(the writer sees a lost connection). The SQLite test raises after the commit has returned (a
failure injected above the driver, the same ambiguity)."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
import uuid
from collections.abc import Iterator

import pytest
from sqlalchemy import select
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import async_sessionmaker

from app.audit.models import AuditEvent
from app.audit.service import AuditWriter, EventData
from app.audit.verify import verify_chain
from app.core.db import make_engine, set_session_tenant
from app.core.identity import ANONYMOUS
from tests.conftest import make_tenant

# The statement text as it travels, in a simple Query ('Q') or an extended-protocol Parse ('P',
# which psycopg 3 uses): NUL-terminated.
COMMIT_MESSAGE = b"COMMIT\x00"


class CommitCutter:
    """A TCP proxy on 127.0.0.1; once armed, the next COMMIT is delivered and its answer lost."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.armed = threading.Event()
        self.cuts = 0
        self._stop = False
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        self.listener.settimeout(0.2)
        while not self._stop:
            try:
                client, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            server = socket.create_connection(self.target)
            held = threading.Event()  # set: the server's answers are no longer relayed
            for args in ((client, server, True, held), (server, client, False, held)):
                threading.Thread(target=self._pipe, args=args, daemon=True).start()

    def _pipe(
        self, src: socket.socket, dst: socket.socket, upstream: bool, held: threading.Event
    ) -> None:
        try:
            while data := src.recv(65536):
                if not upstream:
                    if held.is_set():
                        continue  # the COMMIT's answer is swallowed
                    dst.sendall(data)
                    continue
                cut = COMMIT_MESSAGE in data and self.armed.is_set()
                if cut:
                    self.armed.clear()
                    held.set()
                dst.sendall(data)
                if cut:
                    # Delivered; give the server time to apply it, then cut the line.
                    time.sleep(0.5)
                    self.cuts += 1
                    for sock in (src, dst):
                        with contextlib.suppress(OSError):
                            sock.shutdown(socket.SHUT_RDWR)
                    return
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                with contextlib.suppress(OSError):
                    sock.close()

    def close(self) -> None:
        self._stop = True
        self.listener.close()
        self._thread.join(timeout=5)


@contextlib.contextmanager
def commit_cutter(database_url: str) -> Iterator[tuple[CommitCutter, str]]:
    url = make_url(database_url)
    cutter = CommitCutter((url.host or "127.0.0.1", url.port or 5432))
    # Plain text on the wire (the proxy reads the message types); no pre-ping in between.
    proxied = url.set(host="127.0.0.1", port=cutter.port, query={"sslmode": "disable"})
    try:
        yield cutter, proxied.render_as_string(hide_password=False)
    finally:
        cutter.close()


def _submit(writer: AuditWriter, tenant_id: uuid.UUID, count: int, marker: str) -> None:
    for n in range(count):
        writer.submit(
            tenant_id=tenant_id,
            action="test.idempotent",
            actor=ANONYMOUS,
            outcome="success",
            details={"marker": marker, "n": n},
        )


async def _rows(runtime, tenant_id: uuid.UUID, marker: str) -> list[tuple[int, int]]:
    async with runtime.sessionmaker() as session:
        set_session_tenant(session, tenant_id)
        rows = (
            await session.execute(
                select(AuditEvent.seq, AuditEvent.details)
                .where(AuditEvent.action == "test.idempotent")
                .order_by(AuditEvent.seq)
            )
        ).all()
    return [(seq, details["n"]) for seq, details in rows if details["marker"] == marker]


async def _assert_written_once(runtime, tenant_id: uuid.UUID, marker: str, count: int) -> None:
    rows = await _rows(runtime, tenant_id, marker)
    assert [n for _, n in rows] == list(range(count))  # each event once, in submission order
    seqs = [seq for seq, _ in rows]
    assert seqs == list(range(seqs[0], seqs[0] + count))  # no gap left by a skipped event
    assert (await verify_chain(runtime.sessionmaker, tenant_id)).status == "intact"


async def test_a_commit_whose_answer_is_lost_is_not_written_again(client, runtime, database):
    if make_url(database).get_backend_name() != "postgresql":
        pytest.skip("the wire-level cut needs PostgreSQL (WARDEN_TEST_DATABASE_URL)")
    tenant_id = uuid.UUID((await make_tenant(client)).id)
    marker = uuid.uuid4().hex
    with commit_cutter(database) as (cutter, proxied):
        engine = make_engine(proxied)
        try:
            writer = AuditWriter(async_sessionmaker(engine, expire_on_commit=False))
            _submit(writer, tenant_id, 40, marker)
            cutter.armed.set()
            with pytest.raises(Exception):  # noqa: B017,PT011  (the driver's "connection lost")
                await writer.flush()
            assert cutter.cuts == 1
            assert len(writer.queue) == 40  # kept: the writer cannot know the COMMIT applied
            # ... but it did: the rows are there, read without the proxy.
            assert len(await _rows(runtime, tenant_id, marker)) == 40
            _submit(writer, tenant_id, 5, marker + "-later")
            assert await writer.flush() == 45
            assert writer.queue == []
        finally:
            await engine.dispose()
    await _assert_written_once(runtime, tenant_id, marker, 40)
    await _assert_written_once(runtime, tenant_id, marker + "-later", 5)


async def test_a_retry_after_an_applied_commit_skips_what_was_written(client, runtime):
    tenant_id = uuid.UUID((await make_tenant(client)).id)
    marker = uuid.uuid4().hex
    writer = AuditWriter(runtime.sessionmaker)
    original = writer._write
    failures = iter([True])

    async def commit_then_lose_the_answer(*args):
        await original(*args)  # committed ...
        if next(failures, False):
            raise ConnectionResetError("connection lost after COMMIT")  # ... answer lost

    writer._write = commit_then_lose_the_answer  # type: ignore[method-assign]
    _submit(writer, tenant_id, 30, marker)
    with pytest.raises(ConnectionResetError):
        await writer.flush()
    assert len(writer.queue) == 30
    # Meanwhile another writer (another process) extends the same chain.
    other = AuditWriter(runtime.sessionmaker)
    _submit(other, tenant_id, 3, marker + "-other")
    await other.flush()
    assert await writer.flush() == 30
    await _assert_written_once(runtime, tenant_id, marker, 30)
    await _assert_written_once(runtime, tenant_id, marker + "-other", 3)


def test_an_event_id_is_fixed_when_it_is_created():
    data = EventData(tenant_id=None, action="x", outcome="success", actor=ANONYMOUS)
    assert data.id.version == 7  # set at submission, not when the batch is linked
