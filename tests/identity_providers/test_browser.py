"""Signing in through the provider in a real browser (Debian's headless Chromium through
Playwright): the provider's login form, the redirect back, Warden's cookies, a protected call,
and logout at Warden and at the provider."""

from __future__ import annotations

import contextlib
import json

from tests.identity_providers.conftest import add_provider, new_tenant, serve_warden
from tests.support.browser import launch_chromium, require_chromium

TIMEOUT_MS = 15_000

PAGE = """<!doctype html>
<meta charset="utf-8"><title>App</title>
<script>
function csrfToken() {
  const m = document.cookie.match(/(?:^|; )csrf_token=([^;]*)/);
  return m ? decodeURIComponent(m[1]) : null;
}
async function call(method, path, withCsrf) {
  const headers = withCsrf ? {"X-CSRF-Token": csrfToken()} : {};
  const r = await fetch(path, {method, credentials: "include", headers});
  return {status: r.status, text: await r.text()};
}
</script>
<p>signed in</p>
"""


async def test_sign_in_through_the_provider_in_chromium(provider, app):
    require_chromium()
    async with contextlib.AsyncExitStack() as stack:
        warden = await stack.enter_async_context(serve_warden(page=PAGE))
        tenant = await new_tenant(warden.url)
        registered = await add_provider(warden.url, provider, tenant)
        login = f"pat@{tenant.domain}"

        browser = await launch_chromium(stack)
        context = await browser.new_context()
        context.set_default_timeout(TIMEOUT_MS)
        page = await context.new_page()

        # 1. Warden sends the browser to the provider's login form.
        await page.goto(f"{registered.start_url}?return_to=/app")
        assert page.url.startswith(f"{provider.issuer}/interaction/")
        await page.fill('input[name="login"]', login)
        await page.fill('input[name="password"]', "whatever")
        async with page.expect_navigation(url=f"{warden.url}/app"):
            await page.click('button[type="submit"]')

        # 2. Back on the app's page with Warden's cookies; no token reachable from script.
        jar = {c["name"]: c for c in await context.cookies(warden.url)}
        assert jar["session_id"]["httpOnly"] is True
        assert jar["session_id"]["sameSite"] == "Lax"
        assert jar["csrf_token"]["httpOnly"] is False
        visible = await page.evaluate("document.cookie")
        assert "csrf_token=" in visible
        assert "session_id" not in visible
        assert "eyJ" not in visible

        # 3. A protected call with the cookie alone.
        me = await page.evaluate("() => call('GET', '/api/v1/auth/me', false)")
        assert me["status"] == 200, me
        assert json.loads(me["text"])["email"] == login

        # 4. Logout: Warden's session ends, then the provider's (RP-initiated), back to the app.
        out = await page.evaluate(
            "() => call('DELETE', '/api/v1/sessions/current?post_logout_redirect_uri="
            + f"{warden.url}/app', true)"
        )
        assert out["status"] == 200, out
        end_session = json.loads(out["text"])["end_session_url"]
        assert end_session.startswith(provider.issuer)
        await page.goto(end_session)
        async with page.expect_navigation(url=f"{warden.url}/app"):
            await page.click('button[name="logout"]')
        me = await page.evaluate("() => call('GET', '/api/v1/auth/me', false)")
        assert me["status"] == 401
        # Signing in again asks the provider for a login again: its session ended too.
        await page.goto(registered.start_url)
        assert page.url.startswith(f"{provider.issuer}/interaction/")
