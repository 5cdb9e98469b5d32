"""Back-channel logout across processes: the provider tells one Warden process, and another
process refuses the session within a second (database lookups; Redis tombstones when
configured)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

import httpx
import pytest

from tests.identity_providers.conftest import add_provider, new_tenant, sign_in
from tests.sessions.conftest import warden_child
from tests.support.oidc_provider import form_of
from tests.support.servers import free_port
from tests.support.services import REDIS, needs_redis

MODES = [
    pytest.param("", id="database"),
    pytest.param(REDIS or "", id="redis", marks=needs_redis),
]


@contextlib.asynccontextmanager
async def two_processes(database: str, redis_url: str) -> AsyncIterator[tuple[str, str]]:
    """Two `uvicorn app.main:app` processes on one database (and one Redis, if given), each
    with its own address as PUBLIC_URL."""
    urls = []
    async with contextlib.AsyncExitStack() as stack:
        for _ in range(2):
            port = free_port()
            url = f"http://127.0.0.1:{port}"
            env = {
                "DATABASE_URL": database,
                "REDIS_URL": redis_url,
                "PUBLIC_URL": url,
                "SESSION_COOKIE_SECURE": "false",
            }
            args = ["-m", "uvicorn", "app.main:app", "--host", "127.0.0.1", "--port", str(port)]
            await stack.enter_async_context(warden_child([*args, "--no-access-log"], env, [url]))
            urls.append(url)
        yield urls[0], urls[1]


@pytest.mark.parametrize("redis_url", MODES)
async def test_back_channel_logout_reaches_every_process(database, provider, redis_url):
    async with two_processes(database, redis_url) as (a, b):
        tenant = await new_tenant(a)
        registered = await add_provider(a, provider, tenant)
        async with httpx.AsyncClient(timeout=10) as browser:
            signed = await sign_in(browser, a, registered, f"max@{tenant.domain}")
            async with httpx.AsyncClient(base_url=b, timeout=10) as at_b:
                cookie = {"Cookie": f"session_id={signed.cookie}"}
                assert (await at_b.get("/api/v1/auth/me", headers=cookie)).status_code == 200
                # The user logs out at the provider; its logout token goes to process A.
                r = await browser.get(
                    f"{provider.issuer}/session/end",
                    params={"client_id": registered.client["client_id"]},
                )
                action, fields = form_of(r.text)
                fields["logout"] = "yes"
                r = await browser.post(str(r.url.join(action)), data=fields)
                assert r.status_code in (200, 302, 303), r.text[:300]
                sent = time.monotonic()
                status = 200
                while time.monotonic() - sent < 1.0:
                    status = (await at_b.get("/api/v1/auth/me", headers=cookie)).status_code
                    if status == 401:
                        break
                    await asyncio.sleep(0.02)
                assert status == 401, "process B still accepts the session a second later"
