"""Two Warden processes: any process serves any session, and a revocation made through one is
refused by the other on the very next request (database lookups; Redis records when configured)."""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import AsyncIterator

import httpx
import pytest

from tests.conftest import PASSWORD
from tests.sessions.conftest import ALLOWED_ORIGIN, set_cookies, warden_child
from tests.support.servers import free_port
from tests.support.services import REDIS, needs_redis

MODES = [
    pytest.param("", id="database"),
    pytest.param(
        REDIS or "",
        id="redis",
        marks=needs_redis,
    ),
]


@contextlib.asynccontextmanager
async def two_processes(database: str, redis_url: str) -> AsyncIterator[tuple[str, str]]:
    """Two `uvicorn app.main:app` processes on one database (and one Redis, if given)."""
    env = {"DATABASE_URL": database, "REDIS_URL": redis_url}
    urls = []
    async with contextlib.AsyncExitStack() as stack:
        for _ in range(2):
            port = free_port()
            url = f"http://127.0.0.1:{port}"
            args = ["-m", "uvicorn", "app.main:app", "--host", "127.0.0.1", "--port", str(port)]
            await stack.enter_async_context(warden_child([*args, "--no-access-log"], env, [url]))
            urls.append(url)
        yield urls[0], urls[1]


def _cookie_headers(response: httpx.Response, *, write: bool = False) -> dict[str, str]:
    cookies = set_cookies(response)
    headers = {"Cookie": f"session_id={cookies['session_id']['value']}"}
    if write:
        headers |= {"X-CSRF-Token": cookies["csrf_token"]["value"], "Origin": ALLOWED_ORIGIN}
    return headers


@pytest.mark.parametrize("redis_url", MODES)
async def test_sessions_and_revocations_cross_processes(database, redis_url):
    slug = f"bff-{secrets.token_hex(4)}"
    owner = f"owner@{slug}.example"
    async with (
        two_processes(database, redis_url) as (a, b),
        httpx.AsyncClient(base_url=a, timeout=10) as ca,
        httpx.AsyncClient(base_url=b, timeout=10) as cb,
    ):
        r = await ca.post(
            "/api/v1/auth/register",
            json={"tenant": slug, "tenant_name": "BFF", "email": owner, "password": PASSWORD},
        )
        assert r.status_code == 201, r.text
        login = {"email": owner, "password": PASSWORD, "tenant": slug}
        first = await ca.post("/api/v1/sessions", json=login)
        second = await ca.post("/api/v1/sessions", json=login)
        for response in (first, second):
            assert response.status_code == 201, response.text
        ca.cookies.clear()

        # Made on A, served by B (and by A again).
        for client in (cb, ca, cb):
            r = await client.get("/api/v1/auth/me", headers=_cookie_headers(first))
            assert r.status_code == 200, r.text
            assert r.json()["email"] == owner

        # Logged out through B: refused by A on the very next request.
        r = await cb.delete("/api/v1/sessions/current", headers=_cookie_headers(first, write=True))
        assert r.status_code == 204, r.text
        r = await ca.get("/api/v1/auth/me", headers=_cookie_headers(first))
        assert r.status_code == 401

        # A member's sessions end everywhere when an admin deactivates them on another process.
        r = await ca.post(
            "/api/v1/users",
            json={"email": f"m@{slug}.example", "password": PASSWORD, "role": "member"},
            headers=_cookie_headers(second, write=True),
        )
        assert r.status_code == 201, r.text
        member_id = r.json()["id"]
        member = await cb.post("/api/v1/sessions", json={**login, "email": f"m@{slug}.example"})
        assert member.status_code == 201
        cb.cookies.clear()
        assert (await ca.get("/api/v1/auth/me", headers=_cookie_headers(member))).status_code == 200
        r = await ca.patch(
            f"/api/v1/users/{member_id}",
            json={"is_active": False},
            headers=_cookie_headers(second, write=True),
        )
        assert r.status_code == 200, r.text
        for client in (cb, ca):
            r = await client.get("/api/v1/auth/me", headers=_cookie_headers(member))
            assert r.status_code == 401
