"""Screenshots of the console (see scripts/console-screenshots)."""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import secrets
import shutil
import socket
import tempfile
import threading
import time
from pathlib import Path

PASSWORD = secrets.token_urlsafe(18)  # a throw-away server: a new password each run
TENANT = "acme"
OWNER = "ops@acme.example"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _configure(directory: str, base: str) -> None:
    """A hermetic configuration for the throw-away server (no `.env` is read)."""
    for name in list(os.environ):
        if name.startswith(("WARDEN_", "DATABASE_", "REDIS_")):
            del os.environ[name]
    os.environ.update(
        {
            "WARDEN_ENV_FILE": "",
            "DATABASE_URL": f"sqlite:///{directory}/warden.db",
            "WARDEN_MASTER_KEY": base64.urlsafe_b64encode(secrets.token_bytes(32))
            .decode()
            .rstrip("="),
            "ALLOW_SIGNUP": "true",
            "SESSION_COOKIE_SECURE": "false",
            "PUBLIC_URL": base,
            "LOG_LEVEL": "warning",
            "UPSTREAM_ALLOWED_HOSTS": "127.0.0.1",
        }
    )


async def _seed(base: str) -> None:
    """A tenant with people, two endpoints, policies, a key and some decisions."""
    import httpx

    async with httpx.AsyncClient(base_url=base, timeout=30) as c:
        r = await c.post(
            "/api/v1/auth/register",
            json={"tenant": TENANT, "tenant_name": "Acme", "email": OWNER, "password": PASSWORD},
        )
        r.raise_for_status()

        async def token(email: str) -> dict[str, str]:
            r = await c.post(
                "/api/v1/auth/login",
                json={"email": email, "password": PASSWORD, "tenant": TENANT},
            )
            r.raise_for_status()
            return {"Authorization": f"Bearer {r.json()['access_token']}"}

        owner = await token(OWNER)
        people = {"ann@acme.example": "admin", "bob@partner.example": "member"}
        people["eve@contractor.example"] = "member"
        people["vic@acme.example"] = "viewer"
        for email, role in people.items():
            body = {"email": email, "password": PASSWORD, "role": role}
            (await c.post("/api/v1/users", json=body, headers=owner)).raise_for_status()
        endpoints = [
            {
                "name": "Orders API",
                "slug": "orders",
                "description": "Order management",
                "host": "orders.acme.example",
                "path_prefix": "/v1/",
            },
            {"name": "Reports", "slug": "reports", "description": "Nightly reports"},
        ]
        for endpoint in endpoints:
            (await c.post("/api/v1/endpoints", json=endpoint, headers=owner)).raise_for_status()
        policies = [
            {
                "policy_type": "access",
                "configuration": {
                    "mode": "allow",
                    "patterns": ["*@acme.example", "bob@partner.example"],
                },
                "priority": 10,
            },
            {
                "policy_type": "rate_limit",
                "configuration": {
                    "requests_per_period": 100,
                    "period_seconds": 60,
                    "scope": "per_user",
                },
            },
            {
                "policy_type": "rule",
                "configuration": {
                    "rule": "not",
                    "clause": {
                        "rule": "match",
                        "eval": "==",
                        "f1": "args.request.method",
                        "f2": "DELETE",
                    },
                },
            },
        ]
        for policy in policies:
            r = await c.post("/api/v1/endpoints/orders/policies", json=policy, headers=owner)
            r.raise_for_status()
        credential = {"header": "X-Api-Key", "value": "sk_live_" + secrets.token_hex(16)}
        r = await c.put("/api/v1/endpoints/orders/credential", json=credential, headers=owner)
        r.raise_for_status()
        key = {"name": "billing-batch", "scopes": ["endpoints:query"]}
        (await c.post("/api/v1/api-keys", json=key, headers=owner)).raise_for_status()
        for email, count in (("bob@partner.example", 6), ("eve@contractor.example", 3)):
            headers = await token(email)
            for _ in range(count):
                await c.post("/api/v1/endpoints/orders/query", json={}, headers=headers)
        for _ in range(4):
            await c.post("/api/v1/endpoints/reports/query", json={}, headers=owner)
    await asyncio.sleep(0.5)  # the batched audit writer flushes


async def _shoot(base: str, out: Path, chromium: str) -> list[Path]:
    from playwright.async_api import async_playwright

    taken: list[Path] = []
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(
            executable_path=chromium, args=["--headless", "--no-sandbox", "--disable-gpu"]
        )
        context = await browser.new_context(viewport={"width": 1280, "height": 860})
        page = await context.new_page()

        async def shot(name: str, full: bool = True) -> None:
            path = out / f"{name}.png"
            await page.screenshot(path=str(path), full_page=full)
            taken.append(path)

        await page.goto(f"{base}/console/sign-in?tenant={TENANT}")
        await shot("sign-in", full=False)
        await page.fill("#f-tenant", TENANT)
        await page.fill("#f-email", OWNER)
        await page.fill("#f-password", PASSWORD)
        async with page.expect_navigation():
            await page.click("button:text('Sign in')")
        await shot("overview")
        await page.goto(f"{base}/console/endpoints")
        await shot("endpoints", full=False)
        await page.goto(f"{base}/console/endpoints/orders")
        await shot("endpoint")
        await page.goto(f"{base}/console/endpoints/orders/new-policy?type=access")
        await page.fill("#f-patterns", "*@acme.example\nbob@partner.example")
        await page.fill(
            "#f-test_emails", "ann@acme.example\nbob@partner.example\neve@contractor.example"
        )
        await page.wait_for_selector(".matches li.miss")
        await shot("access-policy")
        await page.goto(f"{base}/console/endpoints/orders/new-policy?type=rule")
        await page.wait_for_selector("[data-rule-editor]:not([hidden])")
        await shot("rule-policy")
        await page.goto(f"{base}/console/audit?outcome=denied")
        await shot("audit", full=False)
        async with page.expect_navigation():
            await page.click("tbody >> text=Why?")
        async with page.expect_navigation():
            await page.click("button:text('Explain')")
        await shot("why")
        await page.goto(f"{base}/console/api-keys")
        await page.fill("#f-name", "deploy-bot")
        async with page.expect_navigation():
            await page.click("button:text('Create key')")
        await shot("api-key-created", full=False)
        await page.goto(f"{base}/console/identity-providers")
        await shot("identity-providers")
        await page.goto(f"{base}/console/audit")
        async with page.expect_navigation():
            await page.click("button:text('Verify chain')")
        await shot("verify", full=False)
        await page.set_viewport_size({"width": 390, "height": 844})
        await page.goto(f"{base}/console/me")
        await shot("my-account-phone")
        await browser.close()
    return taken


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default="docs/console", help="Directory for the PNG files.")
    args = parser.parse_args()
    chromium = shutil.which("chromium")
    if chromium is None:
        raise SystemExit("console-screenshots: needs Debian's chromium (apt-get install chromium)")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory(prefix="warden-shots-") as directory:
        _configure(directory, base)
        import uvicorn

        from app.cli import run_migrations
        from app.main import create_app

        run_migrations(os.environ["DATABASE_URL"])
        server = uvicorn.Server(
            uvicorn.Config(create_app(), host="127.0.0.1", port=port, log_config=None)
        )
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        deadline = time.monotonic() + 30
        while not server.started:
            if time.monotonic() > deadline or not thread.is_alive():
                raise SystemExit("console-screenshots: warden did not start")
            time.sleep(0.05)
        try:
            asyncio.run(_seed(base))
            taken = asyncio.run(_shoot(base, out, chromium))
        finally:
            server.should_exit = True
            thread.join(20)
    for path in taken:
        print(path)


if __name__ == "__main__":
    main()
