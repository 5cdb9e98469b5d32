"""Test fixtures: a migrated database (SQLite by default, PostgreSQL + Redis when
WARDEN_TEST_DATABASE_URL / WARDEN_TEST_REDIS_URL are set), the app with its lifespan, clients.

Tests isolate themselves by creating their own tenants (random slugs), so one migrated database
serves the whole session, real servers and background writers included.
"""

from __future__ import annotations

import base64
import os
import secrets
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from sqlalchemy.engine import make_url

from tests.support.environment import make_hermetic

# Before anything reads settings: nothing the person running the suite exported, and no `.env`
# (`warden dev` writes one with SESSION_COOKIE_SECURE=false), may change a result. Every
# variable Settings reads is dropped, no dotenv file is read (here or in child processes), and
# the values below are the only configuration. WARDEN_TEST_* choose the stack.
make_hermetic()

_TMP = tempfile.mkdtemp(prefix="warden-tests-")
_PG_URL = os.environ.get("WARDEN_TEST_DATABASE_URL")
_REDIS_URL = os.environ.get("WARDEN_TEST_REDIS_URL")
_DB_NAME = f"warden_test_{secrets.token_hex(4)}"


def _database_url() -> str:
    if not _PG_URL:
        return f"sqlite:///{_TMP}/warden.db"
    return make_url(_PG_URL).set(database=_DB_NAME).render_as_string(hide_password=False)


MASTER_KEY = base64.urlsafe_b64encode(secrets.token_bytes(32)).decode().rstrip("=")
# The suite's whole configuration (with REDIS_URL when WARDEN_TEST_REDIS_URL is set).
TEST_SETTINGS = {
    "DATABASE_URL": _database_url(),
    "WARDEN_MASTER_KEY": MASTER_KEY,
    "ALLOW_SIGNUP": "true",
    "GLOBAL_RATE_LIMIT": "100000/minute",
    "LOGIN_RATE_LIMIT": "1000/minute",
    "ARGON2_TIME_COST": "1",
    "ARGON2_MEMORY_COST": "1024",
    "ARGON2_PARALLELISM": "1",
    "LOG_LEVEL": "info",
    "PUBLIC_URL": "http://warden.test",
    "AUDIT_FLUSH_INTERVAL_MS": "50",
    "CORS_ORIGINS": "http://app.example",
    "UPSTREAM_ALLOWED_HOSTS": "127.0.0.1",
    "UPSTREAM_TIMEOUT_SECONDS": "1.5",
}
if _REDIS_URL:
    TEST_SETTINGS["REDIS_URL"] = _REDIS_URL
os.environ.update(TEST_SETTINGS)


def _create_pg_database() -> None:
    import psycopg

    assert _PG_URL is not None
    admin = make_url(_PG_URL).set(drivername="postgresql")
    with psycopg.connect(
        admin.render_as_string(hide_password=False), autocommit=True, connect_timeout=5
    ) as conn:
        conn.execute(f'CREATE DATABASE "{_DB_NAME}"')


def _drop_pg_database() -> None:
    import psycopg

    assert _PG_URL is not None
    admin = make_url(_PG_URL).set(drivername="postgresql")
    with psycopg.connect(admin.render_as_string(hide_password=False), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{_DB_NAME}" WITH (FORCE)')


@pytest.fixture(scope="session", autouse=True)
def database() -> Iterator[str]:
    """A fresh database with every migration applied; services must be up (no skipping)."""
    if _PG_URL:
        _create_pg_database()
    if _REDIS_URL:
        import redis

        redis.Redis.from_url(_REDIS_URL, socket_connect_timeout=5).flushdb()
    from app.cli import run_migrations

    run_migrations(os.environ["DATABASE_URL"])
    yield os.environ["DATABASE_URL"]
    if _PG_URL:
        _drop_pg_database()


@pytest.fixture(scope="session")
async def app(database: str) -> AsyncIterator[Any]:
    """The public app with its lifespan running (runtime, audit writer)."""
    from app.main import create_app

    global _APP
    import app.web.state

    # Between tests the session's event loop is stopped. A periodic key reload / key-usage write
    # caught mid-transaction by that stop would hold SQLite's write lock while a test waits on a
    # Warden child process (which then cannot start). Tests reload keys explicitly instead.
    app.web.state.KEY_RELOAD_SECONDS = 24 * 3600
    application = create_app()
    async with application.router.lifespan_context(application):
        _APP = application
        yield application
        _APP = None


_APP: Any = None


@pytest.fixture(autouse=True)
async def _settle_background_writes() -> AsyncIterator[None]:
    """After each test, let the in-process audit writer finish its batch. Between tests the
    event loop is stopped: a flush frozen mid-transaction would hold SQLite's write lock and
    starve any Warden child process a following test starts (it would wait 30 s, then fail)."""
    yield
    if _APP is not None:
        await _APP.state.runtime.audit.flush()


def random_ip() -> str:
    """A distinct client address per client, so per-IP limits do not couple tests."""
    return f"10.{secrets.randbelow(250)}.{secrets.randbelow(250)}.{secrets.randbelow(250) + 1}"


@pytest.fixture
async def client(app: Any) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client talking to the app in-process."""
    transport = httpx.ASGITransport(app=app, client=(random_ip(), 40000))
    async with httpx.AsyncClient(transport=transport, base_url="http://warden.test") as c:
        yield c


@pytest.fixture
def runtime(app: Any) -> Any:
    """The app's runtime (keys, audit writer, limiter)."""
    return app.state.runtime


PASSWORD = "correct-horse-battery-staple"


@dataclass
class Member:
    """A user of a test tenant with a live token."""

    id: str
    email: str
    role: str
    password: str
    access_token: str
    refresh_token: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.access_token}"}


@dataclass
class TenantHandle:
    """A tenant made through the API, with helpers to add users."""

    client: httpx.AsyncClient
    slug: str
    id: str
    owner: Member
    members: dict[str, Member] = field(default_factory=dict)

    async def login(self, email: str, password: str = PASSWORD) -> dict[str, Any]:
        r = await self.client.post(
            "/api/v1/auth/login", json={"email": email, "password": password, "tenant": self.slug}
        )
        assert r.status_code == 200, r.text
        data: dict[str, Any] = r.json()
        return data

    async def add_user(self, role: str, email: str | None = None) -> Member:
        email = email or f"{role}-{secrets.token_hex(3)}@{self.slug}.example"
        r = await self.client.post(
            "/api/v1/users",
            json={"email": email, "password": PASSWORD, "role": role},
            headers=self.owner.headers,
        )
        assert r.status_code == 201, r.text
        tokens = await self.login(email)
        member = Member(
            r.json()["id"], email, role, PASSWORD, tokens["access_token"], tokens["refresh_token"]
        )
        self.members[email] = member
        return member


async def make_tenant(client: httpx.AsyncClient, slug: str | None = None) -> TenantHandle:
    """Register a tenant through the public API and log its owner in."""
    slug = slug or f"t-{uuid.uuid4().hex[:12]}"
    email = f"owner@{slug}.example"
    r = await client.post(
        "/api/v1/auth/register",
        json={"tenant": slug, "tenant_name": slug.upper(), "email": email, "password": PASSWORD},
    )
    assert r.status_code == 201, r.text
    body = r.json()
    handle = TenantHandle(client, slug, body["tenant"]["id"], None)  # type: ignore[arg-type]
    tokens = await handle.login(email)
    handle.owner = Member(
        body["user"]["id"],
        email,
        "owner",
        PASSWORD,
        tokens["access_token"],
        tokens["refresh_token"],
    )
    return handle


@pytest.fixture
async def tenant(client: httpx.AsyncClient) -> TenantHandle:
    """A fresh tenant with its owner logged in."""
    return await make_tenant(client)


@pytest.fixture
async def other_tenant(client: httpx.AsyncClient) -> TenantHandle:
    """A second, unrelated tenant."""
    return await make_tenant(client)


@pytest.fixture(scope="session")
def upstream() -> Iterator[str]:
    """A real echo server on 127.0.0.1 (base URL)."""
    from tests.support.servers import serve_in_thread, upstream_app

    with serve_in_thread(upstream_app()) as url:
        yield url


async def make_endpoint(
    handle: TenantHandle, slug: str | None = None, **fields: Any
) -> dict[str, Any]:
    """Create an endpoint in a tenant as its owner."""
    slug = slug or f"ep-{uuid.uuid4().hex[:8]}"
    body = {"name": slug.title(), "slug": slug, **fields}
    r = await handle.client.post("/api/v1/endpoints", json=body, headers=handle.owner.headers)
    assert r.status_code == 201, r.text
    data: dict[str, Any] = r.json()
    return data


async def add_policy(
    handle: TenantHandle, slug: str, policy_type: str, configuration: dict[str, Any], **extra: Any
) -> dict[str, Any]:
    """Attach a policy to an endpoint as the tenant's owner."""
    r = await handle.client.post(
        f"/api/v1/endpoints/{slug}/policies",
        json={"policy_type": policy_type, "configuration": configuration, **extra},
        headers=handle.owner.headers,
    )
    assert r.status_code == 201, r.text
    data: dict[str, Any] = r.json()
    return data
