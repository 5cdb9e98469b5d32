"""Fixtures for identity-provider tests: a real OpenID provider (node), Warden serving on a real
port (the provider redirects browsers to it and posts back-channel logouts to it), and helpers
to make a tenant, register a client at the provider and the provider in Warden."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from sqlalchemy import func, select

from app.core.db import set_session_tenant
from app.users.models import User
from tests.conftest import PASSWORD
from tests.sessions.conftest import audit_events, internal, set_cookies  # noqa: F401
from tests.support.oidc_provider import TestProvider, provider_login, run_provider
from tests.support.servers import free_port, serve_warden_with_page


@dataclass
class Warden:
    """Warden on 127.0.0.1 (its own runtime, the suite's database)."""

    url: str
    runtime: Any


@contextlib.asynccontextmanager
async def serve_warden(page: str | None = None, **overrides: Any) -> AsyncIterator[Warden]:
    """Warden with its lifespan in a uvicorn thread; PUBLIC_URL is its own address. With
    `page`, `/app` serves that HTML from Warden's own origin (the BFF's page)."""
    port = free_port()
    async with serve_warden_with_page(port, page, "/app", **overrides) as application:
        yield Warden(url=f"http://127.0.0.1:{port}", runtime=application.state.runtime)


@pytest.fixture(scope="module")
def provider() -> Iterator[TestProvider]:
    """The OpenID provider, one per test module."""
    with run_provider() as running:
        yield running


@pytest.fixture(scope="module")
async def warden(app: Any) -> AsyncIterator[Warden]:
    """Warden on a real port, one per test module (`app` makes sure the database is migrated)."""
    async with serve_warden() as running:
        yield running


@dataclass
class Tenant:
    """A tenant made through Warden's API, with its owner's bearer token."""

    slug: str
    id: str
    owner_email: str
    headers: dict[str, str]

    @property
    def domain(self) -> str:
        return f"{self.slug}.example"


async def new_tenant(warden: str) -> Tenant:
    """Sign up a tenant and log its owner in."""
    slug = f"sso-{secrets.token_hex(4)}"
    email = f"owner@{slug}.example"
    async with httpx.AsyncClient(base_url=warden, timeout=10) as c:
        r = await c.post(
            "/api/v1/auth/register",
            json={"tenant": slug, "tenant_name": "SSO", "email": email, "password": PASSWORD},
        )
        assert r.status_code == 201, r.text
        tenant_id = r.json()["tenant"]["id"]
        r = await c.post(
            "/api/v1/auth/login", json={"email": email, "password": PASSWORD, "tenant": slug}
        )
        assert r.status_code == 200, r.text
    headers = {"Authorization": f"Bearer {r.json()['access_token']}"}
    return Tenant(slug=slug, id=tenant_id, owner_email=email, headers=headers)


@dataclass
class Registered:
    """A provider registered in Warden, with the client the OpenID provider issued for it."""

    tenant: Tenant
    name: str
    body: dict[str, Any]
    client: dict[str, Any]

    @property
    def start_url(self) -> str:
        return str(self.body["sign_in_url"])


async def add_provider(
    warden: str,
    provider: TestProvider,
    tenant: Tenant,
    *,
    name: str = "corp",
    jit: bool = True,
    domains: list[str] | None = None,
    default_role: str = "member",
) -> Registered:
    """Register a client at the provider (exact redirect URI, back-channel logout URI) and the
    provider in Warden's tenant."""
    client = await provider.register_client(
        [f"{warden}/api/v1/sessions/oidc/{tenant.slug}/{name}/callback"],
        backchannel_logout_uri=f"{warden}/api/v1/sessions/oidc/backchannel-logout",
        post_logout_redirect_uris=[f"{warden}/", f"{warden}/bye", f"{warden}/app"],
    )
    async with httpx.AsyncClient(base_url=warden, timeout=15) as c:
        r = await c.post(
            "/api/v1/identity-providers",
            headers=tenant.headers,
            json={
                "name": name,
                "issuer": provider.issuer,
                "client_id": client["client_id"],
                "client_secret": client["client_secret"],
                "scopes": ["openid", "email", "profile", "groups"],
                "allowed_email_domains": domains if domains is not None else [tenant.domain],
                "default_role": default_role,
                "jit_provisioning": jit,
            },
        )
    assert r.status_code == 201, r.text
    return Registered(tenant=tenant, name=name, body=r.json(), client=client)


@dataclass
class SignedIn:
    """A browser signed in through a provider: its cookies and where it was sent."""

    cookie: str
    csrf: str
    location: str
    response: httpx.Response

    def headers(self, origin: str, *, write: bool = False) -> dict[str, str]:
        headers = {"Cookie": f"session_id={self.cookie}"}
        if write:
            headers |= {"X-CSRF-Token": self.csrf, "Origin": origin}
        return headers


async def sign_in(
    client: httpx.AsyncClient, warden: str, registered: Registered, login: str, **params: str
) -> SignedIn:
    """The whole code flow without a browser: Warden → provider login form → callback."""
    query = "&".join(f"{k}={v}" for k, v in params.items())
    start = registered.start_url + (f"?{query}" if query else "")
    callback = await provider_login(client, start, login, warden=warden)
    r = await client.get(callback)
    assert r.status_code == 303, r.text
    cookies = set_cookies(r)
    return SignedIn(
        cookie=cookies["session_id"]["value"],
        csrf=cookies["csrf_token"]["value"],
        location=r.headers["location"],
        response=r,
    )


def authorization_params(location: str) -> dict[str, str]:
    """The query of the provider's authorization URL Warden redirected to."""
    return {k: v[0] for k, v in parse_qs(urlsplit(location).query).items()}


async def count_users(runtime: Any, tenant_id: str, email: str) -> int:
    """How many users of the tenant have this email."""
    async with runtime.sessionmaker() as db:
        set_session_tenant(db, uuid.UUID(tenant_id))
        stmt = select(func.count()).select_from(User).where(User.email == email)  # type: ignore[arg-type]
        return int((await db.execute(stmt)).scalar_one())


async def wait_for_events(runtime: Any, tenant_id: str, action: str, count: int = 1) -> list[Any]:
    """A tenant's events of one action once at least `count` exist (the writer is batched)."""
    deadline = time.monotonic() + 10
    while True:
        events = await audit_events(runtime, tenant_id, action)
        if len(events) >= count or time.monotonic() > deadline:
            return events
        await asyncio.sleep(0.05)
