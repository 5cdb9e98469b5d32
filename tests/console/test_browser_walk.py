"""The console walked in a real browser (Debian's headless Chromium, driven by Playwright) as an
owner, an admin, a member and a viewer, against Warden on 127.0.0.1.

The walk fails on any console error, page error, failed request, 4xx/5xx the step did not
expect, or a page a role must not see. An attacker page on another port of the same host forges
a form post with the victim's cookies (and the CSRF cookie it can read): refused by the Origin
check.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Route

from tests.conftest import PASSWORD
from tests.sessions.test_browser import warden_with_page
from tests.support.browser import launch_chromium, require_chromium
from tests.support.servers import free_port, serve_in_thread

TIMEOUT_MS = 15_000

FORGERY = """<!doctype html>
<meta charset="utf-8"><title>Win a prize</title>
<form id="forged" method="POST" action="{target}">
  <input type="hidden" name="csrf_token" id="stolen" value="">
</form>
<script>
// Same host, another port: this page can read the CSRF cookie, and the browser sends the
// session cookie with the form. Only the Origin tells Warden the post is forged.
const m = document.cookie.match(/(?:^|; )csrf_token=([^;]*)/);
document.getElementById("stolen").value = m ? decodeURIComponent(m[1]) : "";
</script>
"""


@contextlib.contextmanager
def forgery_site(target: str) -> Iterator[str]:
    """Another origin serving a page with a form that posts to `target`."""

    async def page(request: Request) -> Response:
        return HTMLResponse(FORGERY.format(target=target))

    async def no_icon(request: Request) -> Response:
        return Response(status_code=204)

    routes = [Route("/", page), Route("/favicon.ico", no_icon)]
    with serve_in_thread(Starlette(routes=routes)) as url:
        yield url


class Watch:
    """Everything a page does wrong: console errors, page errors, failed requests, and
    responses of 400 or more that the current step did not announce."""

    def __init__(self, page: Any, who: str) -> None:
        self.who = who
        self.problems: list[str] = []
        self.expected: set[tuple[str, int]] = set()
        page.on("console", self._console)
        page.on("pageerror", lambda error: self.problems.append(f"page error: {error}"))
        page.on("requestfailed", self._failed)
        page.on("response", self._response)

    def _announced(self, url: str, status: int) -> bool:
        return (urlsplit(url).path, status) in self.expected

    def _console(self, message: Any) -> None:
        if message.type != "error":
            return
        location = message.location.get("url", "") if message.location else ""
        text = message.text
        for path, status in self.expected:
            if f"status of {status}" in text and urlsplit(location).path == path:
                return
        self.problems.append(f"console error: {text} ({location})")

    def _failed(self, request: Any) -> None:
        failure = request.failure or ""
        # A download ends its navigation by design, and the browser drops a page's icon fetch
        # when the walk moves on before it lands ("net::ERR_ABORTED" in both cases).
        if "ERR_ABORTED" in failure and (
            "/export" in request.url or request.url.endswith("/favicon.svg")
        ):
            return
        self.problems.append(f"request failed: {request.method} {request.url} {failure}")

    def _response(self, response: Any) -> None:
        if response.status >= 400 and not self._announced(response.url, response.status):
            self.problems.append(f"unexpected {response.status}: {response.url}")

    @contextlib.contextmanager
    def expecting(self, path: str, status: int) -> Iterator[None]:
        """Within this block, `status` from `path` is what the step means to provoke."""
        self.expected.add((path, status))
        try:
            yield
        finally:
            self.expected.discard((path, status))

    def check(self) -> None:
        assert not self.problems, f"{self.who}: {self.problems}"


async def _tenant(warden: str) -> dict[str, Any]:
    """A tenant with an owner, an admin, a member and a viewer, made through the API."""
    slug = f"walk-{uuid.uuid4().hex[:8]}"
    people = {"owner": f"owner@{slug}.example"}
    async with httpx.AsyncClient(base_url=warden, timeout=10) as c:
        r = await c.post(
            "/api/v1/auth/register",
            json={
                "tenant": slug,
                "tenant_name": "Walk",
                "email": people["owner"],
                "password": PASSWORD,
            },
        )
        assert r.status_code == 201, r.text
        token = (
            await c.post(
                "/api/v1/auth/login",
                json={"email": people["owner"], "password": PASSWORD, "tenant": slug},
            )
        ).json()["access_token"]
        for role in ("admin", "member", "viewer"):
            people[role] = f"{role}@{slug}.example"
            r = await c.post(
                "/api/v1/users",
                json={"email": people[role], "password": PASSWORD, "role": role},
                headers={"Authorization": f"Bearer {token}"},
            )
            assert r.status_code == 201, r.text
    return {"slug": slug, "people": people}


async def _sign_in(page: Any, warden: str, tenant: dict[str, Any], role: str) -> None:
    await page.goto(f"{warden}/console")
    assert urlsplit(page.url).path == "/console/sign-in"
    await page.fill("#f-tenant", tenant["slug"])
    await page.fill("#f-email", tenant["people"][role])
    await page.fill("#f-password", PASSWORD)
    async with page.expect_navigation():
        await page.click("button:text('Sign in')")


async def _sign_out(page: Any, warden: str, watch: Watch) -> None:
    async with page.expect_navigation():
        await page.click("header button:text('Sign out')")
    assert urlsplit(page.url).path == "/console/sign-in"
    assert "You are signed out." in await page.inner_text("main")
    await page.goto(f"{warden}/console/me")
    assert urlsplit(page.url).path == "/console/sign-in"  # the session is gone


async def _bearer(warden: str, tenant: dict[str, Any], role: str) -> dict[str, str]:
    async with httpx.AsyncClient(base_url=warden, timeout=10) as client:
        r = await client.post(
            "/api/v1/auth/login",
            json={"email": tenant["people"][role], "password": PASSWORD, "tenant": tenant["slug"]},
        )
    return {"Authorization": f"Bearer {r.json()['access_token']}"}


async def _walk_owner(context: Any, warden: str, tenant: dict[str, Any], evil: str) -> None:
    page = await context.new_page()
    watch = Watch(page, "owner")
    page.on("dialog", lambda dialog: asyncio.ensure_future(dialog.accept()))
    await _sign_in(page, warden, tenant, "owner")
    assert urlsplit(page.url).path == "/console/overview"
    # Every page of the console sends the strict policy.
    response = await page.goto(f"{warden}/console/overview")
    assert response is not None
    csp = response.headers["content-security-policy"]
    assert "default-src 'self'" in csp
    assert "frame-ancestors 'none'" in csp
    assert "'unsafe-inline'" not in csp

    # Protect an endpoint.
    await page.click("nav >> text=Endpoints")
    await page.click("text=New endpoint")
    await page.fill("#f-name", "Orders")
    await page.fill("#f-slug", "orders")
    await page.fill("#f-host", f"orders.{tenant['slug']}.example")
    await page.fill("#f-path_prefix", "/v1/")
    async with page.expect_navigation():
        await page.click("button:text('Create endpoint')")
    assert urlsplit(page.url).path == "/console/endpoints/orders", await page.inner_text("main")
    assert "Endpoint created." in await page.inner_text("main")
    assert "forwardAuth" in await page.inner_text("#snippet-3")
    assert "AuthorizationPolicy" in await page.inner_text("#snippet-istio")

    # An allow policy: the matching test emails show as the patterns are typed.
    await page.click("text=Add access policy")
    await page.select_option("#f-mode", "allow")
    await page.fill("#f-test_emails", "ann@example.org\nmallory@evil.test")
    await page.fill("#f-patterns", "*@example.org")
    await page.wait_for_selector(".matches li.hit >> text=ann@example.org")
    assert "matches no pattern" in await page.inner_text(".matches")
    async with page.expect_navigation():
        await page.click("button:text('Add policy')")
    assert "Policy added." in await page.inner_text("main")

    # A rate limit.
    await page.click("text=Add rate limit")
    await page.fill("#f-requests_per_period", "5")
    await page.fill("#f-period_seconds", "60")
    await page.select_option("#f-scope", "per_user")
    async with page.expect_navigation():
        await page.click("button:text('Add policy')")
    assert "5 per 60 s, per_user" in await page.inner_text("main")

    # A real denial: the member's email matches no allow pattern.
    member = await _bearer(warden, tenant, "member")
    async with httpx.AsyncClient(base_url=warden, timeout=10) as client:
        r = await client.post("/api/v1/endpoints/orders/query", json={}, headers=member)
        assert r.status_code == 403, r.text

    # Explain a denial by hand.
    await page.click("nav >> text=Why?")
    await page.select_option("#f-endpoint", "orders")
    await page.check("#mode-email")
    await page.fill("#f-email", "mallory@evil.test")
    async with page.expect_navigation():
        await page.click("button:text('Explain')")
    assert await page.get_attribute("[data-verdict]", "data-verdict") == "denied"
    assert "no pattern of allow policy" in await page.inner_text(".reasons")

    # An API key: its secret once, copyable; then revoked.
    await page.click("nav >> text=API keys")
    await page.fill("#f-name", "ci")
    async with page.expect_navigation():
        await page.click("button:text('Create key')")
    secret = (await page.inner_text("#new-key")).strip()
    assert secret.startswith("wk_")
    await page.click("button[data-copy='new-key']")
    await page.wait_for_selector("button[data-copy='new-key']:text('Copied')")
    assert await page.evaluate("navigator.clipboard.readText()") == secret
    await page.goto(f"{warden}/console/api-keys")
    assert secret not in await page.content()  # never shown again
    async with page.expect_navigation():
        await page.click("tr:has-text('ci') >> button:text('Revoke')")
    assert "API key revoked." in await page.inner_text("main")
    async with httpx.AsyncClient(base_url=warden, timeout=10) as c:
        r = await c.post("/api/v1/endpoints/orders/query", headers={"X-API-Key": secret})
        assert r.status_code == 401

    # The audit trail: filter, open the denial in the explainer, export, verify.
    await page.click("nav >> text=Audit")
    await page.fill("#f-action", "endpoint.query")
    await page.select_option("#f-outcome", "denied")
    async with page.expect_navigation():
        await page.click("button:text('Filter')")
    rows = await page.locator("tbody tr").count()
    assert rows == 1, await page.inner_text("tbody")
    async with page.expect_navigation():
        await page.click("tbody >> text=Why?")
    assert urlsplit(page.url).path == "/console/why"
    assert await page.input_value("#f-endpoint") == "orders"
    chosen = await page.eval_on_selector("#f-user", "s => s.options[s.selectedIndex].text")
    assert tenant["people"]["member"] in chosen
    async with page.expect_navigation():
        await page.click("button:text('Explain')")
    assert await page.get_attribute("[data-verdict]", "data-verdict") == "denied"

    await page.goto(f"{warden}/console/audit?outcome=denied")
    async with page.expect_download() as download_info:
        await page.click("text=Export CSV")
    download = await download_info.value
    exported = (await download.path()).read_text()
    assert exported.splitlines()[0].startswith("id,seq,at,")
    assert ",denied," in exported
    async with page.expect_navigation():
        await page.click("button:text('Verify chain')")
    assert await page.get_attribute("[data-verdict]", "data-verdict") == "intact"

    # A forged cross-origin form post (with the CSRF cookie the attacker can read) is refused.
    forged = await context.new_page()
    forged_watch = Watch(forged, "forgery")
    await forged.goto(f"{evil}/")
    with forged_watch.expecting("/console/endpoints/orders/delete", 403):
        async with forged.expect_navigation():
            await forged.evaluate("() => document.getElementById('forged').submit()")
        assert "Cross-site request refused" in await forged.inner_text("main")
    forged_watch.check()
    await forged.close()
    await page.goto(f"{warden}/console/endpoints/orders")
    assert "Orders" in await page.inner_text("h1")  # still there

    # The overview draws the last hour from the audit trail.
    await page.click("nav >> text=Overview")
    assert await page.locator("svg rect.bar").count() >= 1
    assert "orders" in await page.inner_text("main")
    await _fits_a_phone(page)

    await _sign_out(page, warden, watch)
    watch.check()
    await page.close()


async def _walk_admin(context: Any, warden: str, tenant: dict[str, Any]) -> None:
    page = await context.new_page()
    watch = Watch(page, "admin")
    await _sign_in(page, warden, tenant, "admin")
    assert urlsplit(page.url).path == "/console/overview"
    for label in ("Endpoints", "Users", "Issuers", "API keys", "Audit", "Tenant", "My account"):
        await page.click(f"nav >> text={label}")
        assert await page.locator("h1").count() == 1
    assert await page.locator("text=Delete the tenant").count() == 0  # owners only

    # A rule through the structured editor; the JSON follows it.
    await page.goto(f"{warden}/console/endpoints/orders/new-policy?type=rule")
    await page.wait_for_selector("[data-rule-editor]:not([hidden])")
    editor_inputs = page.locator("[data-rule-tree] input")
    await editor_inputs.nth(1).fill("owner")
    assert json.loads(await page.input_value("#f-configuration"))["f2"] == "owner"
    async with page.expect_navigation():
        await page.click("button:text('Add policy')")
    assert "Policy added." in await page.inner_text("main")

    # A bad rule: the API's validation message next to the field, nothing saved.
    await page.goto(f"{warden}/console/endpoints/orders/new-policy?type=rule")
    await page.fill(
        "#f-configuration", '{"rule": "match", "eval": "===", "f1": "args.auth.role", "f2": "x"}'
    )
    with watch.expecting("/console/endpoints/orders/new-policy", 422):
        async with page.expect_navigation():
            await page.click("button:text('Add policy')")
    assert "unknown operator" in await page.inner_text("#f-configuration-problem")

    # The owner's role is beyond an admin: the refusal shows on the page.
    await page.goto(f"{warden}/console/users")
    owner_row = page.locator(f"tr:has-text('{tenant['people']['owner']}')")
    await owner_row.locator("select").select_option("member")
    with watch.expecting(f"/console/users/{await _user_id(owner_row)}", 403):
        async with page.expect_navigation():
            await owner_row.locator("button:text('Change role')").click()
    assert "Only an owner can change or remove an owner." in await page.inner_text("main")

    await _sign_out(page, warden, watch)
    watch.check()
    await page.close()


async def _user_id(row: Any) -> str:
    action = await row.locator("form").first.get_attribute("action")
    return str(action).rsplit("/", 1)[-1]


async def _walk_member(context: Any, warden: str, tenant: dict[str, Any]) -> None:
    page = await context.new_page()
    await page.set_viewport_size({"width": 390, "height": 844})  # a phone
    watch = Watch(page, "member")
    await _sign_in(page, warden, tenant, "member")
    assert urlsplit(page.url).path == "/console/me"
    assert "this browser" in await page.inner_text("main")
    width = await page.evaluate("[document.documentElement.scrollWidth, window.innerWidth]")
    assert width[0] <= width[1], f"horizontal scrolling at phone width: {width}"
    nav = await page.inner_text("header nav")
    assert nav.split() == ["My", "account"]  # a member's console is their own account
    assert "Users" not in nav
    assert "Audit" not in nav
    assert "API keys" not in nav
    async with page.expect_download() as download_info:
        await page.click("text=Export my data")
    exported = json.loads((await (await download_info.value).path()).read_text())
    assert tenant["people"]["member"] in json.dumps(exported)
    for path in (
        "/console/users",
        "/console/audit",
        "/console/api-keys",
        "/console/why",
        "/console/endpoints",
        "/console/endpoints/orders",
        "/console/tenant",
    ):
        with watch.expecting(path, 403):
            response = await page.goto(f"{warden}{path}")
            assert response is not None
            assert response.status == 403
            assert "Not allowed" in await page.inner_text("h1")
    await _sign_out(page, warden, watch)
    watch.check()
    await page.close()


async def _fits_a_phone(page: Any) -> None:
    """At phone width the page scrolls only vertically (wide tables and code scroll inside
    their own boxes). The layout is given a moment to settle after the resize (a loaded CI
    machine measured once mid-reflow); a page that still scrolls sideways fails."""
    from playwright.async_api import TimeoutError as PlaywrightTimeout

    size = page.viewport_size
    await page.set_viewport_size({"width": 390, "height": 844})
    fits = "() => document.documentElement.scrollWidth <= window.innerWidth"
    with contextlib.suppress(PlaywrightTimeout):
        await page.wait_for_function(fits, timeout=2000)
    overflow = await page.evaluate(
        "() => [...document.querySelectorAll('body *')]"
        ".filter(e => e.getBoundingClientRect().right > window.innerWidth + 1"
        " && !e.closest('.table-wrap, pre'))"
        ".map(e => e.tagName + '.' + e.className).slice(0, 10)"
    )
    width = await page.evaluate("[document.documentElement.scrollWidth, window.innerWidth]")
    assert width[0] <= width[1], (
        f"{page.url} scrolls sideways at phone width ({width[0]} > {width[1]} px): {overflow}"
    )
    await page.set_viewport_size(size)


async def _walk_viewer(context: Any, warden: str, tenant: dict[str, Any]) -> None:
    page = await context.new_page()
    watch = Watch(page, "viewer")
    # By keyboard only: the skip link, then the form fields in order.
    await page.goto(f"{warden}/console/sign-in")
    await page.keyboard.press("Tab")
    assert await page.evaluate("document.activeElement.textContent") == "Skip to content"
    await page.keyboard.press("Tab")
    assert await page.evaluate("document.activeElement.textContent") == "Warden"
    await page.keyboard.press("Tab")
    assert await page.evaluate("document.activeElement.id") == "f-tenant"
    # Focus is visible: the keyboard's position is outlined.
    outline = await page.evaluate("getComputedStyle(document.activeElement).outlineStyle")
    assert outline not in ("none", ""), outline
    await page.keyboard.type(tenant["slug"])
    await page.keyboard.press("Tab")
    await page.keyboard.type(tenant["people"]["viewer"])
    await page.keyboard.press("Tab")
    await page.keyboard.type(PASSWORD)
    async with page.expect_navigation():
        await page.keyboard.press("Enter")
    assert urlsplit(page.url).path == "/console/endpoints"

    await page.click("text=Orders")
    assert await page.locator("main form").count() == 0  # read-only: not one form
    await _fits_a_phone(page)
    assert "*@example.org" in await page.inner_text("main")
    with watch.expecting("/console/new-endpoint", 403):
        response = await page.goto(f"{warden}/console/new-endpoint")
        assert response is not None
        assert response.status == 403
    # Even a hand-made form with the viewer's own valid CSRF token changes nothing.
    await page.goto(f"{warden}/console/endpoints/orders")
    with watch.expecting("/console/endpoints/orders/delete", 403):
        async with page.expect_navigation():
            await page.evaluate(
                """() => {
                  const f = document.createElement('form');
                  f.method = 'post';
                  f.action = '/console/endpoints/orders/delete';
                  const t = document.createElement('input');
                  t.name = 'csrf_token';
                  t.value = document.querySelector('header input[name=csrf_token]').value;
                  f.appendChild(t);
                  document.body.appendChild(f);
                  f.submit();
                }"""
            )
    assert "This requires the admin role." in await page.inner_text("main")
    await page.goto(f"{warden}/console/endpoints/orders")
    assert "Orders" in await page.inner_text("h1")
    await _sign_out(page, warden, watch)
    watch.check()
    await page.close()


async def test_console_walk_as_every_role() -> None:
    require_chromium()
    async with contextlib.AsyncExitStack() as stack:
        warden = await stack.enter_async_context(warden_with_page(free_port()))
        tenant = await _tenant(warden)
        evil = stack.enter_context(forgery_site(f"{warden}/console/endpoints/orders/delete"))
        browser = await launch_chromium(stack)
        for role, walk in (
            ("owner", _walk_owner),
            ("admin", _walk_admin),
            ("member", _walk_member),
            ("viewer", _walk_viewer),
        ):
            # One browser profile per person: cookies never carry over.
            context = await browser.new_context(accept_downloads=True)
            context.set_default_timeout(TIMEOUT_MS)
            if role == "owner":
                await context.grant_permissions(
                    ["clipboard-read", "clipboard-write"], origin=warden
                )
                await walk(context, warden, tenant, evil)
            else:
                await walk(context, warden, tenant)
            await context.close()
