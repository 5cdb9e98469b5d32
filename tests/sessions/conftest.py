"""Helpers for browser-session tests: log a browser in, read its cookies, reach the rows."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from sqlalchemy import select, update

from app.audit.models import AuditEvent
from app.core.db import set_session_tenant
from app.credentials.models import BrowserSession
from tests.conftest import PASSWORD, TenantHandle

ALLOWED_ORIGIN = "http://app.example"  # CORS_ORIGINS in tests/conftest.py
PUBLIC_ORIGIN = "http://warden.test"  # PUBLIC_URL in tests/conftest.py


def set_cookies(response: httpx.Response) -> dict[str, dict[str, Any]]:
    """Every `Set-Cookie` of a response: name → {"value", lower-cased attributes…}."""
    found: dict[str, dict[str, Any]] = {}
    for raw in response.headers.get_list("set-cookie"):
        first, *attributes = [part.strip() for part in raw.split(";")]
        name, _, value = first.partition("=")
        cookie: dict[str, Any] = {"value": value}
        for attribute in attributes:
            key, sep, attr_value = attribute.partition("=")
            cookie[key.lower()] = attr_value if sep else True
        found[name] = cookie
    return found


@dataclass
class BrowserLogin:
    """A browser session as the browser holds it."""

    id: str
    cookie: str
    csrf: str
    response: httpx.Response

    def headers(self, *, csrf: bool = True, origin: str | None = ALLOWED_ORIGIN) -> dict[str, str]:
        """What the browser sends: the cookie, and (for writes) the CSRF header and Origin."""
        headers = {"Cookie": f"session_id={self.cookie}"}
        if csrf:
            headers["X-CSRF-Token"] = self.csrf
        if origin is not None:
            headers["Origin"] = origin
        return headers


async def browser_login(
    client: httpx.AsyncClient,
    handle: TenantHandle,
    email: str | None = None,
    password: str = PASSWORD,
    headers: dict[str, str] | None = None,
) -> BrowserLogin:
    """`POST /api/v1/sessions` as a browser of `handle`'s tenant (the owner by default)."""
    r = await client.post(
        "/api/v1/sessions",
        json={"email": email or handle.owner.email, "password": password, "tenant": handle.slug},
        headers=headers or {},
    )
    assert r.status_code == 201, r.text
    # Tests send the cookie explicitly; the client's jar must not add one behind their back.
    client.cookies.clear()
    cookies = set_cookies(r)
    body = r.json()
    assert cookies["csrf_token"]["value"] == body["csrf_token"]
    return BrowserLogin(
        id=body["session"]["id"],
        cookie=cookies["session_id"]["value"],
        csrf=body["csrf_token"],
        response=r,
    )


async def session_row(runtime: Any, tenant_id: str, session_id: str) -> BrowserSession:
    """The stored row of a session."""
    async with runtime.sessionmaker() as db:
        set_session_tenant(db, uuid.UUID(tenant_id))
        row = await db.get(BrowserSession, uuid.UUID(session_id))
        assert row is not None
        return row


async def change_session_row(runtime: Any, tenant_id: str, session_id: str, **values: Any) -> None:
    """Edit a session row behind Warden's back (time travel for timeout tests)."""
    async with runtime.sessionmaker() as db, db.begin():
        set_session_tenant(db, uuid.UUID(tenant_id))
        await db.execute(
            update(BrowserSession)
            .where(BrowserSession.id == uuid.UUID(session_id))  # type: ignore[arg-type]
            .values(**values)
        )


async def audit_events(runtime: Any, tenant_id: str, action: str) -> list[AuditEvent]:
    """A tenant's stored events of one action, oldest first (queued ones flushed first)."""
    await runtime.audit.flush()
    async with runtime.sessionmaker() as db:
        set_session_tenant(db, uuid.UUID(tenant_id))
        stmt = (
            select(AuditEvent)
            .where(AuditEvent.action == action)  # type: ignore[arg-type]
            .order_by(AuditEvent.seq)  # type: ignore[arg-type]
        )
        return list((await db.execute(stmt)).scalars())


async def api_key(handle: TenantHandle, *scopes: str) -> str:
    """A new API key of `handle`'s tenant with these scopes (the secret)."""
    r = await handle.client.post(
        "/api/v1/api-keys",
        headers=handle.owner.headers,
        json={"name": "bff", "scopes": list(scopes or ("sessions:exchange",))},
    )
    assert r.status_code == 201, r.text
    key: str = r.json()["key"]
    return key


@pytest.fixture
async def internal(app: Any) -> AsyncIterator[httpx.AsyncClient]:
    """A client of the internal app sharing the public app's runtime (as `warden serve` does)."""
    from app.internal import create_internal_app

    internal_app = create_internal_app(runtime=app.state.runtime)
    async with internal_app.router.lifespan_context(internal_app):
        transport = httpx.ASGITransport(app=internal_app, client=("127.0.0.1", 40001))
        async with httpx.AsyncClient(
            transport=transport, base_url="http://warden-internal.test"
        ) as c:
            yield c


@contextlib.asynccontextmanager
async def warden_child(
    args: list[str], env: dict[str, str], urls: list[str], *, exits_cleanly: bool = False
) -> AsyncIterator[None]:
    """A Warden child process (`python <args>`), ready once every URL's `/ready` answers 200;
    stopped with SIGTERM (with `exits_cleanly`, it must then exit with status 0: plain uvicorn
    re-raises the signal once it has shut down).

    Async on purpose: the test process's own runtime shares the SQLite file, and an event loop
    blocked while waiting could sit on the write lock the child needs to start."""
    log = tempfile.TemporaryFile()
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        *args,
        env={**os.environ, "LOG_LEVEL": "warning", **env},
        stdout=log,
        stderr=log,
    )
    try:
        async with httpx.AsyncClient(timeout=1) as probe:
            deadline = time.monotonic() + 30
            while True:
                if proc.returncode is not None:
                    log.seek(0)
                    raise RuntimeError(log.read().decode(errors="replace"))
                try:
                    statuses = [(await probe.get(f"{url}/ready")).status_code for url in urls]
                    if all(status == 200 for status in statuses):
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError("the Warden process did not become ready")
                await asyncio.sleep(0.1)
        yield
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
        try:
            status = await asyncio.wait_for(proc.wait(), 20)
            assert status == 0 or not exits_cleanly, status
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
            log.close()
