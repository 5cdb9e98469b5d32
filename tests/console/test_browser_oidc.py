"""Signing in to the console through the tenant's identity provider in a real browser (Debian's
headless Chromium through Playwright, the real OpenID provider): the sign-in page's button, the
provider's login form, back on the console; signing out ends the provider's session too and
comes back to the console's sign-in page; a refused sign-in lands there too, saying why (the
console's CSP stays intact on the way)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from tests.identity_providers.conftest import new_tenant, serve_warden
from tests.support.browser import launch_chromium, require_chromium
from tests.support.oidc_provider import TestProvider, run_provider

TIMEOUT_MS = 15_000


@pytest.fixture(scope="module")
def provider() -> Iterator[TestProvider]:
    """The OpenID provider, one per test module."""
    with run_provider() as running:
        yield running


async def _register(warden: str, provider: TestProvider, tenant: Any) -> None:
    """The client at the provider (with the console's post-logout URI) and the provider in
    Warden."""
    client = await provider.register_client(
        [f"{warden}/api/v1/sessions/oidc/{tenant.slug}/corp/callback"],
        backchannel_logout_uri=f"{warden}/api/v1/sessions/oidc/backchannel-logout",
        post_logout_redirect_uris=[f"{warden}/console/sign-in"],
    )
    async with httpx.AsyncClient(base_url=warden, timeout=15) as c:
        r = await c.post(
            "/api/v1/identity-providers",
            headers=tenant.headers,
            json={
                "name": "corp",
                "issuer": provider.issuer,
                "client_id": client["client_id"],
                "client_secret": client["client_secret"],
                "allowed_email_domains": [tenant.domain],
                "jit_provisioning": True,
            },
        )
    assert r.status_code == 201, r.text


async def test_console_sign_in_and_out_through_the_provider_in_chromium(provider, app):
    require_chromium()
    async with contextlib.AsyncExitStack() as stack:
        warden = (await stack.enter_async_context(serve_warden())).url
        tenant = await new_tenant(warden)
        await _register(warden, provider, tenant)
        login = f"dana@{tenant.domain}"

        browser = await launch_chromium(stack)
        context = await browser.new_context()
        context.set_default_timeout(TIMEOUT_MS)
        page = await context.new_page()
        problems: list[str] = []

        def on_console(message: Any) -> None:
            location = (message.location or {}).get("url", "")
            if message.type == "error" and location.startswith(warden):
                problems.append(f"console error: {message.text} ({location})")

        def on_response(response: Any) -> None:
            if response.status >= 400 and response.url.startswith(warden):
                problems.append(f"unexpected {response.status}: {response.url}")

        page.on("console", on_console)
        page.on("pageerror", lambda error: problems.append(f"page error: {error}"))
        page.on("response", on_response)

        # The sign-in page offers the tenant's provider; its button goes to the provider's form.
        await page.goto(f"{warden}/console/sign-in?tenant={tenant.slug}")
        async with page.expect_navigation():
            await page.click("a:text('Sign in with corp')")
        assert page.url.startswith(f"{provider.issuer}/interaction/")
        await page.fill('input[name="login"]', login)
        await page.fill('input[name="password"]', "whatever")
        async with page.expect_navigation(url=f"{warden}/console/me"):
            await page.click('button[type="submit"]')
        assert login in await page.inner_text("header")

        # Sign out: Warden's session ends and the browser goes on to the provider's logout,
        # then back to the console's sign-in page.
        async with page.expect_navigation(url=lambda url: url.startswith(provider.issuer)):
            await page.click("header button:text('Sign out')")
        async with page.expect_navigation(url=f"{warden}/console/sign-in"):
            await page.click('button[name="logout"]')
        await page.goto(f"{warden}/console/me")
        assert urlsplit(page.url).path == "/console/sign-in"  # the session is gone
        # The provider's session ended too: its button asks for a login again.
        await page.goto(f"{warden}/console/sign-in?tenant={tenant.slug}")
        async with page.expect_navigation():
            await page.click("a:text('Sign in with corp')")
        assert page.url.startswith(f"{provider.issuer}/interaction/")
        # A refused sign-in (an identity outside the provider's allowed domains) comes back to
        # the sign-in page, which says why (not a JSON error), with the providers offered again.
        await page.fill('input[name="login"]', "eve@elsewhere.example")
        await page.fill('input[name="password"]', "whatever")
        async with page.expect_navigation(url=lambda url: "/console/sign-in?" in url):
            await page.click('button[type="submit"]')
        assert "not provisioned in this tenant" in await page.inner_text("main")
        assert await page.is_visible("a:text('Sign in with corp')")
        await page.goto(f"{warden}/console/me")
        assert urlsplit(page.url).path == "/console/sign-in"  # and no session came of it
        assert not problems, problems
