"""A real browser (Debian's headless Chromium, driven by Playwright) against Warden on 127.0.0.1.

The page is served by Warden's own origin; an attacker's page is served from another port of the
same host. Cookies do not separate ports and SameSite does not either (same site), so the
browser does send the session cookie with the attacker's forged requests, and the attacker's
script can even read the CSRF cookie: what refuses them is Warden's CSRF check (header + Origin).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from tests.conftest import PASSWORD
from tests.sessions.conftest import audit_events
from tests.support.browser import launch_chromium, require_chromium
from tests.support.servers import free_port, serve_in_thread, serve_warden_with_page

TIMEOUT_MS = 15_000

PAGE = """<!doctype html>
<meta charset="utf-8"><title>BFF page</title>
<script>
function csrfToken() {
  const m = document.cookie.match(/(?:^|; )csrf_token=([^;]*)/);
  return m ? decodeURIComponent(m[1]) : null;
}
async function call(method, path, body, withCsrf) {
  const headers = {};
  if (body !== undefined && body !== null) headers["Content-Type"] = "application/json";
  if (withCsrf) headers["X-CSRF-Token"] = csrfToken();
  const r = await fetch(path, {
    method, credentials: "include", headers,
    body: body === undefined || body === null ? undefined : JSON.stringify(body),
  });
  return {status: r.status, text: await r.text()};
}
</script>
<p>Warden BFF test page</p>
"""

ATTACKER = """<!doctype html>
<meta charset="utf-8"><title>Totally harmless</title>
<form id="forged" method="POST" enctype="text/plain" action="{target}">
  <input type="hidden" name='{{"forged":' value='"form"}}'>
</form>
<script>
async function attack(target) {{
  const out = {{}};
  const m = document.cookie.match(/(?:^|; )csrf_token=([^;]*)/);
  const stolen = m ? decodeURIComponent(m[1]) : null;
  out.stolenCsrf = stolen !== null;
  // A "simple" request: no preflight, the browser sends it with the cookie, the answer is opaque.
  try {{
    const r = await fetch(target, {{
      method: "POST", mode: "no-cors", credentials: "include", body: '{{"forged": "no-cors"}}',
    }});
    out.noCors = r.type;
  }} catch (e) {{ out.noCors = "error"; }}
  // With the stolen token in a header: needs a CORS preflight, which Warden refuses.
  try {{
    const r = await fetch(target, {{
      method: "POST", credentials: "include",
      headers: {{"Content-Type": "application/json", "X-CSRF-Token": stolen}},
      body: '{{"forged": "cors"}}',
    }});
    out.cors = r.status;
  }} catch (e) {{ out.cors = "blocked"; }}
  return out;
}}
</script>
"""


class Recorder:
    """An upstream that remembers every body it was sent."""

    def __init__(self) -> None:
        self.bodies: list[str] = []

    async def hit(self, request: Request) -> Response:
        self.bodies.append((await request.body()).decode("utf-8", "replace"))
        return JSONResponse({"upstream": "ok"})

    def app(self) -> Starlette:
        return Starlette(routes=[Route("/hit", self.hit, methods=["POST"])])


@contextlib.asynccontextmanager
async def warden_with_page(port: int) -> AsyncIterator[str]:
    """Warden (lifespan and all) plus the page at `/`, one origin, uvicorn in a thread."""
    async with serve_warden_with_page(port, PAGE, "/"):
        yield f"http://127.0.0.1:{port}"


@contextlib.contextmanager
def attacker_site(target: str) -> Iterator[str]:
    """Another origin (same host, another port) serving a page that forges requests."""

    async def page(request: Request) -> Response:
        return HTMLResponse(ATTACKER.format(target=target))

    with serve_in_thread(Starlette(routes=[Route("/", page)])) as url:
        yield url


async def _setup_tenant(warden: str, upstream: str) -> dict[str, Any]:
    slug = f"web-{uuid.uuid4().hex[:8]}"
    email = f"owner@{slug}.example"
    async with httpx.AsyncClient(base_url=warden, timeout=10) as c:
        r = await c.post(
            "/api/v1/auth/register",
            json={"tenant": slug, "tenant_name": "Web", "email": email, "password": PASSWORD},
        )
        assert r.status_code == 201, r.text
        tenant_id = r.json()["tenant"]["id"]
        r = await c.post(
            "/api/v1/auth/login", json={"email": email, "password": PASSWORD, "tenant": slug}
        )
        headers = {"Authorization": f"Bearer {r.json()['access_token']}"}
        endpoint = f"ep-{uuid.uuid4().hex[:6]}"
        r = await c.post(
            "/api/v1/endpoints",
            json={"name": "Web", "slug": endpoint, "upstream_url": f"{upstream}/hit"},
            headers=headers,
        )
        assert r.status_code == 201, r.text
    return {"slug": slug, "id": tenant_id, "email": email, "endpoint": endpoint}


async def _refused_origins(runtime: Any, tenant_id: str, expected: int) -> list[str]:
    """Origins of the tenant's `auth.csrf_failed` events, once the server's writer has
    flushed them (it runs in the server's thread, every AUDIT_FLUSH_INTERVAL_MS)."""
    deadline = time.monotonic() + 10
    while True:
        events = await audit_events(runtime, tenant_id, "auth.csrf_failed")
        if len(events) >= expected or time.monotonic() > deadline:
            return [e.details["origin"] for e in events]
        await asyncio.sleep(0.05)


async def test_browser_login_cookie_auth_and_cross_origin_forgery(runtime):
    require_chromium()
    recorder = Recorder()
    async with contextlib.AsyncExitStack() as stack:
        upstream = stack.enter_context(serve_in_thread(recorder.app()))
        warden = await stack.enter_async_context(warden_with_page(free_port()))
        tenant = await _setup_tenant(warden, upstream)
        query = f"/api/v1/endpoints/{tenant['endpoint']}/query"
        evil = stack.enter_context(attacker_site(f"{warden}{query}"))
        assert evil.rsplit(":", 1)[0] == warden.rsplit(":", 1)[0]  # same host, other port

        browser = await launch_chromium(stack)
        context = await browser.new_context()
        context.set_default_timeout(TIMEOUT_MS)
        page = await context.new_page()
        await page.goto(f"{warden}/")

        # 1. Log in through the page: a session cookie and a CSRF token, no JWT.
        login = await page.evaluate(
            "b => call('POST', '/api/v1/sessions', b, false)",
            {"email": tenant["email"], "password": PASSWORD, "tenant": tenant["slug"]},
        )
        assert login["status"] == 201, login
        assert "access_token" not in login["text"]
        assert "eyJ" not in login["text"]

        # 2. Script sees the CSRF cookie, never the session cookie.
        visible = await page.evaluate("document.cookie")
        assert "csrf_token=" in visible
        assert "session_id" not in visible
        jar = {c["name"]: c for c in await context.cookies()}
        assert jar["session_id"]["httpOnly"] is True
        assert jar["session_id"]["sameSite"] == "Lax"
        assert jar["session_id"]["path"] == "/"
        assert jar["csrf_token"]["httpOnly"] is False

        # 3. The browser's cookie authenticates a plain fetch.
        me = await page.evaluate(
            "() => fetch('/api/v1/auth/me', {credentials: 'include'})"
            ".then(async r => ({status: r.status, text: await r.text()}))"
        )
        assert me["status"] == 200, me
        assert json.loads(me["text"])["email"] == tenant["email"]

        # 4. State-changing calls: refused without the CSRF header, forwarded with it.
        refused = await page.evaluate(f"() => call('POST', '{query}', {{q: 'no-csrf'}}, false)")
        assert refused["status"] == 403
        assert json.loads(refused["text"])["error"]["code"] == "csrf_failed"
        assert recorder.bodies == []
        allowed = await page.evaluate(f"() => call('POST', '{query}', {{q: 'legit'}}, true)")
        assert allowed["status"] == 200, allowed
        assert recorder.bodies == ['{"q":"legit"}']

        # 5. The attacker's page forges requests with the victim's cookie: all refused.
        attacker = await context.new_page()
        await attacker.goto(f"{evil}/")
        result = await attacker.evaluate("t => attack(t)", f"{warden}{query}")
        assert result["stolenCsrf"] is True  # same host: the CSRF cookie alone would not do
        assert result["noCors"] == "opaque"  # sent, answer hidden from the attacker
        assert result["cors"] == "blocked"  # the preflight is refused: the header never goes
        async with attacker.expect_navigation():
            await attacker.evaluate("() => document.getElementById('forged').submit()")
        assert attacker.url == f"{warden}{query}"
        body = json.loads(await attacker.inner_text("body"))
        assert body["error"]["code"] == "csrf_failed"  # the cookie was sent, and refused
        assert recorder.bodies == ['{"q":"legit"}']  # nothing forged reached the upstream
        origins = await _refused_origins(runtime, tenant["id"], expected=3)
        assert origins == [warden, evil, evil]  # step 4's refusal, then no-cors fetch and form

        # 6. Logout through the page clears both cookies; the session is dead.
        out = await page.evaluate("() => call('DELETE', '/api/v1/sessions/current', null, true)")
        assert out["status"] == 204, out
        assert "csrf_token" not in await page.evaluate("document.cookie")
        assert {c["name"] for c in await context.cookies()}.isdisjoint({"session_id", "csrf_token"})
        me = await page.evaluate(
            "() => fetch('/api/v1/auth/me', {credentials: 'include'}).then(r => r.status)"
        )
        assert me == 401
