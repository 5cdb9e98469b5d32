"""Real Warden processes writing chains: two at once keep one chain intact, with no gap and no
duplicate seq; SIGTERM loses no batched event; SIGKILL loses at most the last flush window and
never breaks the chain. Runs on SQLite and, in CI, on PostgreSQL, where the head row's
`FOR UPDATE` lock is what serialises the writers."""

from __future__ import annotations

import asyncio
import os
import signal
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from itertools import repeat
from pathlib import Path

import httpx
from sqlalchemy import select
from sqlalchemy.ext.asyncio import async_sessionmaker

from app.audit.models import AuditEvent
from app.audit.verify import verify_chain
from app.core.db import make_engine, set_session_tenant
from tests.conftest import PASSWORD
from tests.support.processes import warden_process

WORKERS_PER_PROCESS = 3
ROUNDS = 12


def hammer(base_url: str, slug: str, token: str, worker: int) -> int:
    """Alternate a configuration change and a failed login; returns how many rounds it did."""
    headers = {"Authorization": f"Bearer {token}"}
    with httpx.Client(base_url=base_url, timeout=30) as client:
        for i in range(ROUNDS):
            r = client.patch("/api/v1/tenant", headers=headers, json={"name": f"w{worker}-{i}"})
            assert r.status_code == 200, r.text
            r = client.post(
                "/api/v1/auth/login",
                json={"email": f"owner@{slug}.example", "password": "wrong", "tenant": slug},
            )
            assert r.status_code == 401, r.text
    return ROUNDS


async def stored_chain(database: str, tenant_id: uuid.UUID) -> tuple[list[AuditEvent], object]:
    engine = make_engine(database)
    try:
        maker = async_sessionmaker(engine, expire_on_commit=False)
        async with maker() as session:
            set_session_tenant(session, tenant_id)
            rows = list(
                (await session.execute(select(AuditEvent).order_by(AuditEvent.seq))).scalars()  # type: ignore[arg-type]
            )
        return rows, await verify_chain(maker, tenant_id)
    finally:
        await engine.dispose()


def test_two_processes_writing_one_chain(database):
    slug = f"cc-{uuid.uuid4().hex[:8]}"
    env = {"DATABASE_URL": database, "LOG_LEVEL": "warning", "AUDIT_FLUSH_INTERVAL_MS": "20"}
    with warden_process(env) as a, warden_process(env) as b:
        r = httpx.post(
            f"{a}/api/v1/auth/register",
            json={
                "tenant": slug,
                "tenant_name": "CC",
                "email": f"owner@{slug}.example",
                "password": PASSWORD,
            },
            timeout=30,
        )
        assert r.status_code == 201, r.text
        tenant_id = uuid.UUID(r.json()["tenant"]["id"])
        r = httpx.post(
            f"{b}/api/v1/auth/login",
            json={"email": f"owner@{slug}.example", "password": PASSWORD, "tenant": slug},
            timeout=30,
        )
        token = r.json()["access_token"]
        urls = [url for url in (a, b) for _ in range(WORKERS_PER_PROCESS)]
        with ThreadPoolExecutor(max_workers=len(urls)) as pool:
            done = sum(pool.map(hammer, urls, repeat(slug), repeat(token), range(len(urls))))
    # Both processes stopped (SIGTERM): their batched events are flushed.
    rows, report = asyncio.run(stored_chain(database, tenant_id))
    assert report.status == "intact", report  # type: ignore[attr-defined]
    assert [e.seq for e in rows] == list(range(1, len(rows) + 1))
    counts = Counter((e.action, e.outcome) for e in rows)
    assert counts[("tenant.updated", "success")] == done
    assert counts[("auth.login", "failure")] == done
    assert counts[("auth.login", "success")] == 1
    assert len(rows) == 2 + 1 + 2 * done  # sign-up (2), login, then the hammering
    assert len({e.hash for e in rows}) == len(rows)


def _pid_serving(url: str) -> int:
    """The pid of the Warden process listening on `url` (to kill it the hard way)."""
    port = url.rsplit(":", 1)[1].encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if (
            b"app.main:app" in argv
            and b"--port" in argv
            and argv[argv.index(b"--port") + 1] == port
        ):
            return int(entry.name)
    raise AssertionError(f"no process serves {url}")


def _tenant_with_endpoints(url: str, *slugs: str) -> tuple[str, uuid.UUID]:
    """A tenant with decision-only endpoints; returns its owner's token and its id."""
    slug = f"ks-{uuid.uuid4().hex[:8]}"
    with httpx.Client(base_url=url, timeout=30) as c:
        body = {
            "tenant": slug,
            "tenant_name": "K",
            "email": f"o@{slug}.example",
            "password": PASSWORD,
        }
        r = c.post("/api/v1/auth/register", json=body)
        tenant_id = uuid.UUID(r.json()["tenant"]["id"])
        r = c.post(
            "/api/v1/auth/login",
            json={"email": f"o@{slug}.example", "password": PASSWORD, "tenant": slug},
        )
        token = r.json()["access_token"]
        for name in slugs:
            r = c.post(
                "/api/v1/endpoints",
                headers={"Authorization": f"Bearer {token}"},
                json={"name": name, "slug": name},
            )
            assert r.status_code == 201, r.text
    return token, tenant_id


def _query_concurrently(url: str, token: str, slug: str, count: int) -> None:
    def one(_: int) -> int:
        with httpx.Client(base_url=url, timeout=30) as c:
            r = c.post(
                f"/api/v1/endpoints/{slug}/query", headers={"Authorization": f"Bearer {token}"}
            )
            return r.status_code

    with ThreadPoolExecutor(max_workers=8) as pool:
        assert set(pool.map(one, range(count))) == {200}


def _queries_of(rows: list[AuditEvent], slug: str) -> int:
    return sum(1 for e in rows if e.action == "endpoint.query" and e.details["endpoint"] == slug)


def test_sigterm_loses_no_decision_event(database):
    queries = 60
    # A long flush interval: what reaches the chain comes from the shutdown flush.
    env = {"DATABASE_URL": database, "LOG_LEVEL": "warning", "AUDIT_FLUSH_INTERVAL_MS": "5000"}
    with warden_process(env) as url:
        token, tenant_id = _tenant_with_endpoints(url, "busy")
        _query_concurrently(url, token, "busy", queries)
    rows, report = asyncio.run(stored_chain(database, tenant_id))
    assert _queries_of(rows, "busy") == queries
    assert report.status == "intact", report  # type: ignore[attr-defined]
    assert [e.seq for e in rows] == list(range(1, len(rows) + 1))


def test_sigkill_loses_at_most_the_last_flush_window(database):
    per_batch = 20
    env = {"DATABASE_URL": database, "LOG_LEVEL": "warning", "AUDIT_FLUSH_INTERVAL_MS": "200"}
    with warden_process(env) as url:
        token, tenant_id = _tenant_with_endpoints(url, "before", "after")
        _query_concurrently(url, token, "before", per_batch)
        time.sleep(1.0)  # several flush windows: the first batch is written
        _query_concurrently(url, token, "after", per_batch)
        os.kill(_pid_serving(url), signal.SIGKILL)  # no shutdown flush for the second batch
    rows, report = asyncio.run(stored_chain(database, tenant_id))
    assert _queries_of(rows, "before") == per_batch
    assert _queries_of(rows, "after") <= per_batch
    # A flush cut off mid-transaction rolls back whole: the chain never holds half a batch.
    assert report.status == "intact", report  # type: ignore[attr-defined]
    assert [e.seq for e in rows] == list(range(1, len(rows) + 1))
