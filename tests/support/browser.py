"""Debian's Chromium for the browser tests (driven by Playwright, never `playwright install`):
where it is and how it is started on this closed network."""

from __future__ import annotations

import contextlib
import os
import shutil
from typing import Any

import pytest

CHROMIUM = shutil.which("chromium")
# Without the background-networking flags Chromium keeps dialling Google's hosts, which this
# machine's closed network refuses many at a time.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def require_chromium() -> str:
    """Chromium's path. Without it a developer's machine skips the browser test; CI fails it
    (nothing skips there, and .ci/run installs it)."""
    if CHROMIUM is None:
        if os.environ.get("CI"):
            pytest.fail("CI must have chromium (.ci/run installs it)")
        pytest.skip("needs Debian's chromium (.ci/run installs it; CI never skips)")
    return CHROMIUM


async def launch_chromium(stack: contextlib.AsyncExitStack) -> Any:
    """Playwright driving Debian's Chromium, headless; closed with `stack`."""
    from playwright.async_api import async_playwright

    pw = await stack.enter_async_context(async_playwright())
    browser = await pw.chromium.launch(
        executable_path=require_chromium(), args=CHROMIUM_ARGS, timeout=30_000
    )
    stack.push_async_callback(browser.close)
    return browser
